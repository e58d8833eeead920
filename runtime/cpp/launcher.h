// Turns a payload kernel record plus the delegate's tensors into one
// cuLaunchKernel call, after checking every assumption baked into the cubin.
#pragma once

#include <executorch/runtime/core/error.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda_driver.h"
#include "payload.h"

namespace cuda_gqa {

// One delegate argument at execute time: the ExecuTorch tensor (host memory;
// supplies sizes and strides) and the device staging buffer the kernel reads
// or writes in its place.
struct ArgView {
  const executorch::aten::Tensor* tensor = nullptr;
  CUdeviceptr device = 0;
};

// Grid extents. Each dim is the product over its factors of
// ceil_div(size_of(arg, dim), divisor). False (with *error) if an extent is
// outside the hardware limits. size_of must return sizes >= 0.
template <typename SizeOf>
bool compute_grid(const KernelDesc& kernel, SizeOf size_of, uint32_t grid[3],
                  std::string* error);

// Number of CTAs the grid of a fully static payload launches; scratch is sized
// from it. False if a spec the grid reads is dynamic.
bool static_grid_ctas(const PayloadDesc& payload, const KernelDesc& kernel,
                      uint64_t* ctas, std::string* error);

// Checks an argument against its spec: dtype, rank, static sizes, last-dim
// stride 1. Logs and returns an error naming the argument.
executorch::runtime::Error check_arg(const TensorSpecDesc& spec,
                                     const executorch::aten::Tensor& tensor,
                                     size_t index, size_t num_inputs);

// Launch state of one kernel, prepared at init so that a launch fills fixed
// slots and allocates nothing.
class KernelLauncher {
 public:
  // `kernel` must outlive this launcher.
  bool prepare(const KernelDesc* kernel, CUfunction function,
               CUdeviceptr global_scratch, CUdeviceptr profile_scratch,
               uint64_t scratch_ctas, std::string* error);

  // Fills the parameters from `args` (inputs then outputs), checks alignment
  // and divisibility, computes the grid and enqueues the kernel on `stream`.
  executorch::runtime::Error launch(const CudaDriver& driver, CUstream stream,
                                    const ArgView* args, size_t num_args);

 private:
  const KernelDesc* kernel_ = nullptr;
  CUfunction function_ = nullptr;
  CUdeviceptr global_scratch_ = 0;
  CUdeviceptr profile_scratch_ = 0;
  uint64_t scratch_ctas_ = 0;  // CTAs the scratch buffers have room for
  std::vector<uint64_t> values_;  // one 8-byte slot per parameter
  std::vector<void*> pointers_;   // kernelParams: &values_[i]
};

// ---------------------------------------------------------------------------

template <typename SizeOf>
bool compute_grid(const KernelDesc& kernel, SizeOf size_of, uint32_t grid[3],
                  std::string* error) {
  static constexpr uint64_t kLimit[3] = {0x7fffffffu, 65535u, 65535u};
  for (int g = 0; g < 3; ++g) {
    uint64_t extent = 1;
    for (const GridFactorDesc& f : kernel.grid[g]) {
      const int64_t size = size_of(f.arg, f.dim);
      const uint64_t n = (static_cast<uint64_t>(size) + f.divisor - 1) / f.divisor;
      if (n != 0 && extent > kLimit[g] / n) {
        *error = "grid dim " + std::to_string(g) + " exceeds the hardware limit";
        return false;
      }
      extent *= n;
    }
    if (extent > kLimit[g]) {
      *error = "grid dim " + std::to_string(g) + " exceeds the hardware limit";
      return false;
    }
    grid[g] = static_cast<uint32_t>(extent);
  }
  return true;
}

}  // namespace cuda_gqa
