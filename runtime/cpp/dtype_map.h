// The payload DType of each ExecuTorch ScalarType the kernels take: one
// table, read both ways (backends/serialization/dtypes.py is its Python side).
#pragma once

#include <executorch/runtime/core/exec_aten/exec_aten.h>

#include "payload.h"

namespace cuda_gqa {

struct DTypeOfScalarType {
  DType dtype;
  executorch::aten::ScalarType scalar_type;
};

inline constexpr DTypeOfScalarType kDTypeMap[] = {
    {DType::kFloat32, executorch::aten::ScalarType::Float},
    {DType::kFloat16, executorch::aten::ScalarType::Half},
    {DType::kBFloat16, executorch::aten::ScalarType::BFloat16},
    {DType::kBool, executorch::aten::ScalarType::Bool},
    {DType::kInt32, executorch::aten::ScalarType::Int},
    {DType::kInt64, executorch::aten::ScalarType::Long},
};

inline bool dtype_of(executorch::aten::ScalarType type, DType* out) {
  for (const auto& entry : kDTypeMap) {
    if (entry.scalar_type == type) {
      *out = entry.dtype;
      return true;
    }
  }
  return false;
}

inline bool scalar_type_of(int32_t dtype, executorch::aten::ScalarType* out) {
  for (const auto& entry : kDTypeMap) {
    if (static_cast<int32_t>(entry.dtype) == dtype) {
      *out = entry.scalar_type;
      return true;
    }
  }
  return false;
}

}  // namespace cuda_gqa
