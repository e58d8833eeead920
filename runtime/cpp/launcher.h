// Turns a payload kernel record plus the delegate's arguments into one
// cuLaunchKernel call, after checking every assumption baked into the cubin.
//
// The evaluation (checks, parameter values, grid) is pure host logic over
// ArgDesc records and never touches the driver, so the C API can run it
// without a GPU (cuda_gqa_evaluate_launch) and the Python evaluator
// (runtime/launch_plan.py) can be tested against it.
#pragma once

#include <executorch/runtime/core/error.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda_driver.h"
#include "payload.h"

namespace cuda_gqa {

// One delegate argument as the launch sees it: element type, shape, strides
// (in elements) and the device address the kernel reads or writes.
struct ArgDesc {
  int dtype = -1;                     // a DType value; -1: a type no payload names
  const char* dtype_label = nullptr;  // names a dtype of -1 in messages
  int foreign_dtype_code = 0;         // ... or this code when there is no label
  size_t rank = 0;                    // may exceed kMaxRank; only kMaxRank dims kept
  int64_t sizes[kMaxRank] = {};
  int64_t strides[kMaxRank] = {};
  uint64_t address = 0;
};

// What cuLaunchKernel gets besides the parameters.
struct LaunchConfig {
  uint32_t grid[3] = {0, 0, 0};
  uint32_t block = 0;  // 32 * num_warps threads in x
  uint32_t shared_mem_bytes = 0;
  uint64_t ctas() const { return uint64_t{grid[0]} * grid[1] * grid[2]; }
};

// Grid extents. Each dim is its multiplier times the product over its
// factors of ceil_div(size_of(arg, dim), divisor). False (with *error) if an
// extent is outside the hardware limits. size_of must return sizes >= 0.
template <typename SizeOf>
bool compute_grid(const KernelDesc& kernel, SizeOf size_of, uint32_t grid[3],
                  std::string* error);

// Number of CTAs the grid of `kernel` launches at the specs' max sizes: the
// most any call launches (grids grow with sizes); scratch is sized from it.
bool bounded_grid_ctas(const PayloadDesc& payload, const KernelDesc& kernel,
                       uint64_t* ctas, std::string* error);

// Checks argument `index` of `args` against its spec: dtype, rank, sizes
// (>= 0, equal to the static ones, at most the max ones, equal to their
// size_from source), last-dim stride 1. The sources (inputs) must have been
// described already. False with a message naming the argument ("input 1 has ...").
bool check_arg(const TensorSpecDesc& spec, const ArgDesc* args, size_t index,
               size_t num_inputs, std::string* error);

// Checks that argument `index` (already checked with check_arg) stays inside
// its own buffer of numel elements, an ExecuTorch tensor's nbytes(): no
// negative stride and a largest reachable offset below numel. A `host`
// argument, which execute copies linearly to and from its staging buffer,
// must moreover have the dense row-major strides (dims of size 1 aside).
// False with a message naming the argument and the offending stride.
bool check_layout(const ArgDesc* args, size_t index, size_t num_inputs, bool host, std::string* error);

// Payload.position_bounds against the inputs in host memory: host_data[i] is
// input i's data, or null when it is on the device, whose values are not read
// (that would take a synchronisation; the kernels write no row outside the
// cache either way). False with *error naming the first input holding a
// position outside its cache. args[i] describes input i (dense when on the host).
bool check_positions(const PayloadDesc& payload, const ArgDesc* args, const void* const* host_data,
                     std::string* error);

// The sizes of an output for the described inputs: the spec's, dynamic dims
// from their size_from sources. sizes has spec.sizes.size() entries.
void output_sizes(const TensorSpecDesc& spec, const ArgDesc* inputs, size_t num_inputs,
                  int64_t* sizes);

// The plan of payload.plans (already kept for the device) that runs these
// checked args: the first whose ranges hold and whose cubins' divisibility
// assumptions they meet. False with *error naming the assumption (when a
// plan's ranges held) or the size no plan takes.
bool select_plan(const PayloadDesc& payload, const ArgDesc* args, size_t num_args, size_t* plan,
                 std::string* error);

// Device buffers init allocates that one kernel's launch reads: its scratch
// buffers and the number of CTAs they have room for, the delegate's
// workspace (shared by all kernels, Payload.workspace_bytes at
// kWorkspaceAlign; 0 when the payload has none), and the device address of
// each payload constant (Payload.constants, in order; fixed after init, so
// launch graphs keep them; null for an empty constant). The table must
// outlive the launchers given it.
struct ScratchDesc {
  CUdeviceptr global = 0;
  CUdeviceptr profile = 0;
  uint64_t ctas = 0;
  CUdeviceptr workspace = 0;
  const CUdeviceptr* constants = nullptr;
  size_t num_constants = 0;
};

// True if a param of `kernel` is a Workspace pointer.
bool uses_workspace(const KernelDesc& kernel);

// Init-time check that `scratch` covers what `kernel` asks for (scratch
// buffers, the workspace if a param reads it, and each constant a param
// reads, at an address meeting the param's divisibility).
bool check_scratch(const KernelDesc& kernel, const ScratchDesc& scratch, std::string* error);

// Evaluates one launch of `kernel` over `args` (inputs then outputs, already
// checked with check_arg): fills values[0 .. params) with the 8-byte slot of
// each entry-point parameter (ints and floats in the low bytes, zero above),
// checks alignment and divisibility, and computes the grid. A grid of 0 CTAs
// (empty tensors) is valid: nothing is to be launched. On failure returns
// InvalidArgument or InvalidProgram with the reason in *error (no prefix).
executorch::runtime::Error evaluate_launch(const KernelDesc& kernel, const ArgDesc* args,
                                           size_t num_args, const ScratchDesc& scratch,
                                           uint64_t* values, LaunchConfig* config,
                                           std::string* error);

// Compute capability from which kernel images can wait for the previous
// kernel themselves (griddepcontrol, Kernel.waits_for_previous).
constexpr uint32_t kProgrammaticLaunchArch = 90;

// Init's decision whether kernel `position` of its plan is launched as a
// programmatic dependent of the kernel before it (CUDA's programmatic
// dependent launch: its CTAs may start while that kernel drains): only when
// the payload says its sm_90+ images wait for that kernel, the device and
// the image loaded, `image_arch` (a cubin's arch, or the PTX's ptx_arch: a
// PTX written for sm_80 has no griddepcontrol however new the device that
// JIT-compiles it), are sm_90 or later, the option "programmatic_launch" is
// on and the driver has cuLaunchKernelEx, and, for a plan launched as a CUDA
// graph (`launch_graphs`), cuGraphAddDependencies_v2 for the programmatic
// edge. Otherwise launched normally, which is just as correct.
bool launches_programmatically(const KernelDesc& kernel, size_t position, int device_cc,
                               uint32_t image_arch, bool option_on, bool launch_graphs,
                               const CudaDriver& driver);

// Launch state of one kernel, prepared at init so that a launch fills fixed
// slots and allocates nothing. Execute evaluates every kernel of the plan
// first, then launches them directly (launch_evaluated) or through the
// plan's graph (launch_graph.h), which reads the same slots.
class KernelLauncher {
 public:
  // `kernel` must outlive this launcher. `programmatic`: what
  // launches_programmatically decided for it.
  bool prepare(const KernelDesc* kernel, CUfunction function, const ScratchDesc& scratch,
               bool programmatic, std::string* error);

  // evaluate_launch into this launcher's slots (values(), config()). Logs
  // the reason of any failure.
  executorch::runtime::Error evaluate(const ArgDesc* args, size_t num_args);

  // Enqueues the evaluated launch on `stream` with cuLaunchKernel, or with
  // cuLaunchKernelEx as a programmatic dependent of the launch before it
  // when programmatic(), unless the grid is empty. Logs the reason of any
  // failure.
  executorch::runtime::Error launch_evaluated(const CudaDriver& driver, CUstream stream);

  // The last evaluation: one 8-byte slot per entry-point parameter, the
  // pointers to them (cuLaunchKernel's kernelParams), grid and block.
  const std::vector<uint64_t>& values() const { return values_; }
  void** param_pointers() { return pointers_.data(); }
  const LaunchConfig& config() const { return config_; }
  CUfunction function() const { return function_; }
  const KernelDesc& kernel() const { return *kernel_; }
  // Launched as a programmatic dependent of the plan's previous kernel (a
  // graph joins their nodes with a programmatic edge).
  bool programmatic() const { return programmatic_; }

 private:
  const KernelDesc* kernel_ = nullptr;
  CUfunction function_ = nullptr;
  bool programmatic_ = false;
  ScratchDesc scratch_;
  std::vector<uint64_t> values_;  // one 8-byte slot per parameter
  std::vector<void*> pointers_;   // kernelParams: &values_[i]
  LaunchConfig config_;
  std::string error_;             // reused, so a refusal allocates rarely
};

// ---------------------------------------------------------------------------

template <typename SizeOf>
bool compute_grid(const KernelDesc& kernel, SizeOf size_of, uint32_t grid[3],
                  std::string* error) {
  static constexpr uint64_t kLimit[3] = {0x7fffffffu, 65535u, 65535u};
  for (int g = 0; g < 3; ++g) {
    uint64_t extent = kernel.grid_multiplier[g];
    if (extent > kLimit[g]) {
      *error = "grid dim " + std::to_string(g) + " exceeds the hardware limit";
      return false;
    }
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
