#include "launcher.h"

#include <executorch/runtime/platform/log.h>

#include <cinttypes>
#include <cstring>

namespace cuda_gqa {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;

namespace {

ScalarType to_scalar_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return ScalarType::Half;
    case DType::kBFloat16: return ScalarType::BFloat16;
    case DType::kFloat32: break;
  }
  return ScalarType::Float;
}

const char* arg_role(size_t index, size_t num_inputs) {
  return index < num_inputs ? "input" : "output";
}

size_t arg_local_index(size_t index, size_t num_inputs) {
  return index < num_inputs ? index : index - num_inputs;
}

}  // namespace

bool static_grid_ctas(const PayloadDesc& payload, const KernelDesc& kernel,
                      uint64_t* ctas, std::string* error) {
  bool dynamic = false;
  uint32_t grid[3];
  const bool ok = compute_grid(
      kernel,
      [&](uint8_t arg, uint8_t dim) -> int64_t {
        const int64_t s = payload.arg_spec(arg).sizes[dim];
        if (s < 0) dynamic = true;
        return s < 0 ? 0 : s;
      },
      grid, error);
  if (!ok) return false;
  if (dynamic) {
    *error = "grid of kernel " + kernel.name + " depends on a dynamic size";
    return false;
  }
  *ctas = uint64_t{grid[0]} * grid[1] * grid[2];
  return true;
}

Error check_arg(const TensorSpecDesc& spec, const Tensor& tensor, size_t index,
                size_t num_inputs) {
  const char* role = arg_role(index, num_inputs);
  const size_t local = arg_local_index(index, num_inputs);
  if (tensor.scalar_type() != to_scalar_type(spec.dtype)) {
    ET_LOG(Error, "CudaGqaBackend: %s %zu has dtype %d, the kernels were compiled for %s",
           role, local, static_cast<int>(tensor.scalar_type()), dtype_name(spec.dtype));
    return Error::InvalidArgument;
  }
  if (static_cast<size_t>(tensor.dim()) != spec.sizes.size()) {
    ET_LOG(Error, "CudaGqaBackend: %s %zu has rank %zd, expected %zu", role, local,
           static_cast<ssize_t>(tensor.dim()), spec.sizes.size());
    return Error::InvalidArgument;
  }
  for (size_t d = 0; d < spec.sizes.size(); ++d) {
    const int64_t want = spec.sizes[d];
    const int64_t got = tensor.size(static_cast<ssize_t>(d));
    if (want >= 0 && got != want) {
      ET_LOG(Error, "CudaGqaBackend: %s %zu has size %" PRId64 " at dim %zu, expected %" PRId64,
             role, local, got, d, want);
      return Error::InvalidArgument;
    }
  }
  // Kernels index the last dimension with unit stride.
  if (tensor.dim() > 0 && tensor.size(tensor.dim() - 1) > 1 &&
      tensor.strides()[tensor.dim() - 1] != 1) {
    ET_LOG(Error, "CudaGqaBackend: %s %zu: last dimension has stride %d, expected 1", role,
           local, static_cast<int>(tensor.strides()[tensor.dim() - 1]));
    return Error::InvalidArgument;
  }
  return Error::Ok;
}

bool KernelLauncher::prepare(const KernelDesc* kernel, CUfunction function,
                             CUdeviceptr global_scratch, CUdeviceptr profile_scratch,
                             uint64_t scratch_ctas, std::string* error) {
  if ((kernel->global_scratch_bytes > 0 && global_scratch == 0) ||
      (kernel->profile_scratch_bytes > 0 && profile_scratch == 0)) {
    *error = "kernel " + kernel->name + ": scratch buffer missing";
    return false;
  }
  kernel_ = kernel;
  function_ = function;
  global_scratch_ = global_scratch;
  profile_scratch_ = profile_scratch;
  scratch_ctas_ = scratch_ctas;
  values_.assign(kernel->params.size(), 0);
  pointers_.resize(kernel->params.size());
  for (size_t i = 0; i < values_.size(); ++i) pointers_[i] = &values_[i];
  return true;
}

Error KernelLauncher::launch(const CudaDriver& driver, CUstream stream,
                             const ArgView* args, size_t num_args) {
  const KernelDesc& k = *kernel_;
  for (size_t i = 0; i < k.params.size(); ++i) {
    const ParamDesc& p = k.params[i];
    uint64_t* slot = &values_[i];
    int64_t value = 0;  // integer value of stride/size params
    switch (p.kind) {
      case ParamKind::kTensorPointer: {
        ET_CHECK_OR_RETURN_ERROR(p.arg < num_args, InvalidProgram,
                                 "CudaGqaBackend: kernel %s param %zu: arg %u out of range",
                                 k.name.c_str(), i, p.arg);
        const CUdeviceptr ptr = args[p.arg].device;
        if (p.divisibility > 1 && ptr % p.divisibility != 0) {
          ET_LOG(Error,
                 "CudaGqaBackend: kernel %s param %zu: address of arg %u is not a multiple "
                 "of %u bytes, which the cubin assumes",
                 k.name.c_str(), i, p.arg, p.divisibility);
          return Error::InvalidArgument;
        }
        *slot = static_cast<uint64_t>(ptr);
        continue;
      }
      case ParamKind::kTensorStride:
      case ParamKind::kTensorSize: {
        ET_CHECK_OR_RETURN_ERROR(p.arg < num_args, InvalidProgram,
                                 "CudaGqaBackend: kernel %s param %zu: arg %u out of range",
                                 k.name.c_str(), i, p.arg);
        const Tensor& t = *args[p.arg].tensor;
        ET_CHECK_OR_RETURN_ERROR(p.dim < t.dim(), InvalidArgument,
                                 "CudaGqaBackend: kernel %s param %zu: dim %u out of range "
                                 "for arg %u of rank %zd",
                                 k.name.c_str(), i, p.dim, p.arg, static_cast<ssize_t>(t.dim()));
        value = p.kind == ParamKind::kTensorStride ? t.strides()[p.dim] : t.size(p.dim);
        break;
      }
      case ParamKind::kFloat32Constant: {
        const float f = p.f32_value;
        *slot = 0;
        std::memcpy(slot, &f, sizeof(f));
        continue;
      }
      case ParamKind::kGlobalScratch:
        *slot = static_cast<uint64_t>(global_scratch_);
        continue;
      case ParamKind::kProfileScratch:
        *slot = static_cast<uint64_t>(profile_scratch_);
        continue;
    }
    // Integer parameter: a stride or a size.
    if (p.divisibility > 1 && value % static_cast<int64_t>(p.divisibility) != 0) {
      ET_LOG(Error,
             "CudaGqaBackend: kernel %s param %zu: %s %" PRId64 " of arg %u dim %u is not "
             "a multiple of %u, which the cubin assumes",
             k.name.c_str(), i, p.kind == ParamKind::kTensorStride ? "stride" : "size", value,
             p.arg, p.dim, p.divisibility);
      return Error::InvalidArgument;
    }
    if (p.type == ParamType::kInt32) {
      ET_CHECK_OR_RETURN_ERROR(value >= INT32_MIN && value <= INT32_MAX, InvalidArgument,
                               "CudaGqaBackend: kernel %s param %zu: %" PRId64
                               " does not fit in int32",
                               k.name.c_str(), i, value);
      const int32_t v = static_cast<int32_t>(value);
      *slot = 0;
      std::memcpy(slot, &v, sizeof(v));
    } else {
      std::memcpy(slot, &value, sizeof(value));
    }
  }

  uint32_t grid[3];
  std::string error;
  if (!compute_grid(
          k,
          [&](uint8_t arg, uint8_t dim) -> int64_t {
            if (arg >= num_args || dim >= args[arg].tensor->dim()) return 0;
            return args[arg].tensor->size(dim);
          },
          grid, &error)) {
    ET_LOG(Error, "CudaGqaBackend: kernel %s: %s", k.name.c_str(), error.c_str());
    return Error::InvalidArgument;
  }
  const uint64_t ctas = uint64_t{grid[0]} * grid[1] * grid[2];
  if (ctas == 0) return Error::Ok;  // empty tensors: nothing to compute
  if ((k.global_scratch_bytes > 0 || k.profile_scratch_bytes > 0) && ctas > scratch_ctas_) {
    ET_LOG(Error, "CudaGqaBackend: kernel %s: grid of %" PRIu64
                  " CTAs exceeds the scratch allocated for %" PRIu64,
           k.name.c_str(), ctas, scratch_ctas_);
    return Error::InvalidArgument;
  }
  const CUresult r = driver.LaunchKernel(function_, grid[0], grid[1], grid[2],
                                         32 * k.num_warps, 1, 1, k.shared_mem_bytes, stream,
                                         pointers_.data(), nullptr);
  if (r != CUDA_SUCCESS) {
    ET_LOG(Error, "CudaGqaBackend: kernel %s: cuLaunchKernel(grid %u,%u,%u block %u smem %u) "
                  "failed: %s",
           k.name.c_str(), grid[0], grid[1], grid[2], 32 * k.num_warps, k.shared_mem_bytes,
           driver.error_string(r).c_str());
    return Error::Internal;
  }
  return Error::Ok;
}

}  // namespace cuda_gqa
