#include "launcher.h"

#include <executorch/runtime/platform/log.h>

#include <cstdint>
#include <cstring>

namespace cuda_gqa {

using executorch::runtime::Error;

namespace {

std::string arg_name(size_t index, size_t num_inputs) {
  return index < num_inputs ? "input " + std::to_string(index)
                            : "output " + std::to_string(index - num_inputs);
}

std::string arg_dtype_name(const ArgDesc& arg) {
  if (arg.dtype >= 0 && arg.dtype <= static_cast<int>(kLastDType)) {
    return dtype_name(static_cast<DType>(arg.dtype));
  }
  if (arg.dtype_label != nullptr) return arg.dtype_label;
  return "code " + std::to_string(arg.foreign_dtype_code);
}

std::string param_where(const KernelDesc& k, size_t i) {
  return "kernel " + k.name + " param " + std::to_string(i) + ": ";
}

}  // namespace

bool bounded_grid_ctas(const PayloadDesc& payload, const KernelDesc& kernel,
                       uint64_t* ctas, std::string* error) {
  uint32_t grid[3];
  if (!compute_grid(
          kernel,
          [&](uint8_t arg, uint8_t dim) -> int64_t { return payload.arg_spec(arg).max_sizes[dim]; },
          grid, error)) {
    return false;
  }
  *ctas = uint64_t{grid[0]} * grid[1] * grid[2];
  return true;
}

bool check_arg(const TensorSpecDesc& spec, const ArgDesc* args, size_t index,
               size_t num_inputs, std::string* error) {
  // Called for every argument of every execute: the argument's name is only
  // built for a message, so a passing check allocates and formats nothing.
  const ArgDesc& arg = args[index];
  if (arg.dtype != static_cast<int>(spec.dtype)) {
    *error = arg_name(index, num_inputs) + " has dtype " + arg_dtype_name(arg) +
             ", the kernels were compiled for " + dtype_name(spec.dtype);
    return false;
  }
  if (arg.rank != spec.sizes.size()) {
    *error = arg_name(index, num_inputs) + " has rank " + std::to_string(arg.rank) + ", expected " +
             std::to_string(spec.sizes.size());
    return false;
  }
  for (size_t d = 0; d < spec.sizes.size(); ++d) {
    const int64_t want = spec.sizes[d];
    const int64_t got = arg.sizes[d];
    if (got < 0 || (want >= 0 && got != want)) {
      *error = arg_name(index, num_inputs) + " has size " + std::to_string(got) + " at dim " +
               std::to_string(d) + ", expected " +
               (want >= 0 ? std::to_string(want) : std::string("a size >= 0"));
      return false;
    }
    if (got > spec.max_sizes[d]) {
      *error = arg_name(index, num_inputs) + " has size " + std::to_string(got) + " at dim " +
               std::to_string(d) + ", above its bound " + std::to_string(spec.max_sizes[d]);
      return false;
    }
  }
  for (const DimSourceDesc& src : spec.size_from) {
    const ArgDesc& from = args[src.arg];
    const int64_t want = src.arg_dim < from.rank ? from.sizes[src.arg_dim] : -1;
    if (arg.sizes[src.dim] != want) {
      *error = arg_name(index, num_inputs) + " has size " + std::to_string(arg.sizes[src.dim]) + " at dim " +
               std::to_string(src.dim) + ", expected " + arg_name(src.arg, num_inputs) +
               "'s size " + std::to_string(want) + " at dim " + std::to_string(src.arg_dim);
      return false;
    }
  }
  // Kernels index the last dimension with unit stride.
  if (arg.rank > 0 && arg.sizes[arg.rank - 1] > 1 && arg.strides[arg.rank - 1] != 1) {
    *error = arg_name(index, num_inputs) + ": last dimension has stride " +
             std::to_string(arg.strides[arg.rank - 1]) + ", expected 1";
    return false;
  }
  return true;
}

bool check_layout(const ArgDesc* args, size_t index, size_t num_inputs, bool host, std::string* error) {
  const ArgDesc& a = args[index];
  const size_t rank = a.rank < kMaxRank ? a.rank : kMaxRank;
  // Sizes are at most their spec's bounds (check_arg); 128 bits hold any
  // product of them with an int64 stride.
  __int128 numel = 1, reach = 0, dense = 1;
  for (size_t d = rank; d-- > 0;) numel *= a.sizes[d];
  if (numel == 0) return true;  // nothing is read, written or copied
  for (size_t d = rank; d-- > 0;) {
    const int64_t size = a.sizes[d], stride = a.strides[d];
    if (size > 1) {
      if (stride < 0 || (host && stride != dense)) {
        *error = arg_name(index, num_inputs) + " has stride " + std::to_string(stride) + " at dim " +
                 std::to_string(d) + (host ? ", expected " + std::to_string(static_cast<int64_t>(dense)) +
                                                 ": a tensor in host memory must be dense and row-major"
                                           : ": strides must not be negative");
        return false;
      }
      reach += static_cast<__int128>(size - 1) * stride;
    }
    dense *= size;
  }
  if (reach >= numel) {
    const std::string where = reach > INT64_MAX ? "beyond 2^63" : std::to_string(static_cast<int64_t>(reach));
    *error = arg_name(index, num_inputs) + " reaches element " + where +
             " with its strides, past its " + std::to_string(static_cast<int64_t>(numel)) + " elements";
    return false;
  }
  return true;
}

void output_sizes(const TensorSpecDesc& spec, const ArgDesc* inputs, size_t num_inputs,
                  int64_t* sizes) {
  for (size_t d = 0; d < spec.sizes.size(); ++d) sizes[d] = spec.sizes[d];
  for (const DimSourceDesc& src : spec.size_from) {
    if (src.arg < num_inputs && src.arg_dim < inputs[src.arg].rank && src.arg_dim < kMaxRank) {
      sizes[src.dim] = inputs[src.arg].sizes[src.arg_dim];
    }
  }
}

namespace {

// Why param i of `k` cannot take these args (a divisibility its cubin
// assumes, or an arg/dim out of range), or Error::Ok. The message goes to
// *error only when error is not null: plan selection asks first without one,
// so trying a plan that refuses allocates nothing.
Error param_refusal(const KernelDesc& k, size_t i, const ArgDesc* args, size_t num_args,
                    std::string* error) {
  const ParamDesc& p = k.params[i];
  if (p.kind != ParamKind::kTensorPointer && p.kind != ParamKind::kTensorStride &&
      p.kind != ParamKind::kTensorSize) {
    return Error::Ok;
  }
  if (p.arg >= num_args) {
    if (error != nullptr) *error = param_where(k, i) + "arg " + std::to_string(p.arg) + " out of range";
    return Error::InvalidProgram;
  }
  const ArgDesc& a = args[p.arg];
  if (p.kind == ParamKind::kTensorPointer) {
    if (p.divisibility > 1 && a.address % p.divisibility != 0) {
      if (error != nullptr) *error = param_where(k, i) + "address of arg " + std::to_string(p.arg) +
               " is not a multiple of " + std::to_string(p.divisibility) +
               " bytes, which the cubin assumes";
      return Error::InvalidArgument;
    }
    return Error::Ok;
  }
  const size_t rank = a.rank < kMaxRank ? a.rank : kMaxRank;
  if (p.dim >= rank) {
    if (error != nullptr) *error = param_where(k, i) + "dim " + std::to_string(p.dim) + " out of range for arg " +
             std::to_string(p.arg) + " of rank " + std::to_string(a.rank);
    return Error::InvalidArgument;
  }
  const bool stride = p.kind == ParamKind::kTensorStride;
  const int64_t value = stride ? a.strides[p.dim] : a.sizes[p.dim];
  if (p.divisibility > 1 && value % static_cast<int64_t>(p.divisibility) != 0) {
    if (error != nullptr) *error = param_where(k, i) + (stride ? "stride " : "size ") + std::to_string(value) +
             " of arg " + std::to_string(p.arg) + " dim " + std::to_string(p.dim) +
             " is not a multiple of " + std::to_string(p.divisibility) +
             ", which the cubin assumes";
    return Error::InvalidArgument;
  }
  return Error::Ok;
}

}  // namespace

bool select_plan(const PayloadDesc& payload, const ArgDesc* args, size_t num_args, size_t* plan,
                 std::string* error) {
  // Refusals are built only when no plan is found, so a call that some plan
  // takes allocates nothing here.
  const SizeRangeDesc* miss = nullptr;
  size_t refused_plan = payload.plans.size();
  for (size_t p = 0; p < payload.plans.size(); ++p) {
    const LaunchPlanDesc& lp = payload.plans[p];
    const SizeRangeDesc* range_miss = nullptr;
    for (const SizeRangeDesc& r : lp.when) {
      const int64_t size = r.arg < num_args && r.dim < args[r.arg].rank && r.dim < kMaxRank
                               ? args[r.arg].sizes[r.dim]
                               : -1;
      if (size < r.min || size > r.max) {
        range_miss = &r;
        break;
      }
    }
    if (range_miss != nullptr) {
      if (miss == nullptr) miss = range_miss;
      continue;
    }
    bool holds = true;
    for (const KernelDesc& k : lp.kernels) {
      for (size_t i = 0; i < k.params.size() && holds; ++i) {
        holds = param_refusal(k, i, args, num_args, nullptr) == Error::Ok;
      }
      if (!holds) break;
    }
    if (holds) {
      *plan = p;
      return true;
    }
    if (refused_plan == payload.plans.size()) refused_plan = p;
  }
  if (refused_plan < payload.plans.size()) {
    // Rebuild the first refusal's message.
    for (const KernelDesc& k : payload.plans[refused_plan].kernels) {
      for (size_t i = 0; i < k.params.size(); ++i) {
        if (param_refusal(k, i, args, num_args, error) != Error::Ok) return false;
      }
    }
  }
  if (miss == nullptr) {
    *error = "no launch plan";  // parse_payload refuses payloads without plans
    return false;
  }
  const int64_t size = miss->dim < args[miss->arg].rank && miss->dim < kMaxRank
                           ? args[miss->arg].sizes[miss->dim]
                           : -1;
  *error = "no launch plan takes these sizes: " + arg_name(miss->arg, payload.inputs.size()) +
           " has size " + std::to_string(size) + " at dim " + std::to_string(miss->dim) +
           ", outside [" + std::to_string(miss->min) + ", " + std::to_string(miss->max) + "]";
  return false;
}

bool uses_workspace(const KernelDesc& kernel) {
  for (const ParamDesc& p : kernel.params) {
    if (p.kind == ParamKind::kWorkspace) return true;
  }
  return false;
}

namespace {

// Every Constant param of `kernel` has an address in scratch's table, a
// multiple of what its cubin assumes.
bool check_constants(const KernelDesc& kernel, const ScratchDesc& scratch, std::string* error) {
  for (size_t i = 0; i < kernel.params.size(); ++i) {
    const ParamDesc& p = kernel.params[i];
    if (p.kind != ParamKind::kConstant) continue;
    if (scratch.constants == nullptr || p.constant >= scratch.num_constants) {
      *error = param_where(kernel, i) + "constant " + std::to_string(p.constant) + " missing (" +
               std::to_string(scratch.num_constants) + " constants uploaded)";
      return false;
    }
    if (p.divisibility > 1 && scratch.constants[p.constant] % p.divisibility != 0) {
      *error = param_where(kernel, i) + "address of constant " + std::to_string(p.constant) +
               " is not a multiple of " + std::to_string(p.divisibility) + " bytes, which the cubin assumes";
      return false;
    }
  }
  return true;
}

}  // namespace

bool check_scratch(const KernelDesc& kernel, const ScratchDesc& scratch, std::string* error) {
  if ((kernel.global_scratch_bytes > 0 && scratch.global == 0) ||
      (kernel.profile_scratch_bytes > 0 && scratch.profile == 0)) {
    *error = "kernel " + kernel.name + ": scratch buffer missing";
    return false;
  }
  if (scratch.workspace == 0 && uses_workspace(kernel)) {
    *error = "kernel " + kernel.name + ": workspace missing";
    return false;
  }
  if (scratch.workspace % kWorkspaceAlign != 0) {
    *error = "kernel " + kernel.name + ": workspace is not " +
             std::to_string(kWorkspaceAlign) + "-byte aligned";
    return false;
  }
  return check_constants(kernel, scratch, error);
}

Error evaluate_launch(const KernelDesc& k, const ArgDesc* args, size_t num_args,
                      const ScratchDesc& scratch, uint64_t* values, LaunchConfig* config,
                      std::string* error) {
  *config = LaunchConfig();
  for (size_t i = 0; i < k.params.size(); ++i) {
    const ParamDesc& p = k.params[i];
    uint64_t* slot = &values[i];
    *slot = 0;
    int64_t value = 0;  // integer value of stride/size params
    const Error refused = param_refusal(k, i, args, num_args, error);
    if (refused != Error::Ok) return refused;
    switch (p.kind) {
      case ParamKind::kTensorPointer:
        *slot = args[p.arg].address;
        continue;
      case ParamKind::kTensorStride:
      case ParamKind::kTensorSize: {
        const ArgDesc& a = args[p.arg];
        value = p.kind == ParamKind::kTensorStride ? a.strides[p.dim] : a.sizes[p.dim];
        break;
      }
      case ParamKind::kFloat32Constant: {
        const float f = p.f32_value;
        std::memcpy(slot, &f, sizeof(f));
        continue;
      }
      case ParamKind::kGlobalScratch:
        *slot = static_cast<uint64_t>(scratch.global);
        continue;
      case ParamKind::kProfileScratch:
        *slot = static_cast<uint64_t>(scratch.profile);
        continue;
      case ParamKind::kWorkspace:
        // Offset and alignment were checked against workspace_bytes by
        // parse_payload, the base by check_scratch.
        *slot = static_cast<uint64_t>(scratch.workspace) + p.workspace_offset;
        continue;
      case ParamKind::kInt32Constant: {
        const int32_t v = p.i32_value;
        std::memcpy(slot, &v, sizeof(v));
        continue;
      }
      case ParamKind::kConstant:
        // Alignment was checked by check_scratch; the bound again, as it guards a read.
        if (scratch.constants == nullptr || p.constant >= scratch.num_constants) {
          *error = param_where(k, i) + "constant " + std::to_string(p.constant) + " missing";
          return Error::InvalidProgram;
        }
        *slot = static_cast<uint64_t>(scratch.constants[p.constant]);
        continue;
    }
    // Integer parameter: a stride or a size (divisibility checked above).
    if (p.type == ParamType::kInt32) {
      if (value < INT32_MIN || value > INT32_MAX) {
        *error = param_where(k, i) + std::to_string(value) + " does not fit in int32";
        return Error::InvalidArgument;
      }
      const int32_t v = static_cast<int32_t>(value);
      std::memcpy(slot, &v, sizeof(v));
    } else {
      std::memcpy(slot, &value, sizeof(value));
    }
  }

  LaunchConfig c;
  std::string why;
  if (!compute_grid(
          k,
          [&](uint8_t arg, uint8_t dim) -> int64_t {
            if (arg >= num_args || dim >= args[arg].rank || dim >= kMaxRank) return 0;
            return args[arg].sizes[dim];
          },
          c.grid, &why)) {
    *error = "kernel " + k.name + ": " + why;
    return Error::InvalidArgument;
  }
  const uint64_t ctas = c.ctas();
  if (ctas != 0 && (k.global_scratch_bytes > 0 || k.profile_scratch_bytes > 0) &&
      ctas > scratch.ctas) {
    *error = "kernel " + k.name + ": grid of " + std::to_string(ctas) +
             " CTAs exceeds the scratch allocated for " + std::to_string(scratch.ctas);
    return Error::InvalidArgument;
  }
  c.block = 32 * k.num_warps;
  c.shared_mem_bytes = k.shared_mem_bytes;
  *config = c;
  return Error::Ok;
}

bool launches_programmatically(const KernelDesc& kernel, size_t position, int device_cc,
                               uint32_t image_arch, bool option_on, bool launch_graphs, const CudaDriver& driver) {
  return kernel.waits_for_previous && position > 0 &&
         device_cc >= static_cast<int>(kProgrammaticLaunchArch) && image_arch >= kProgrammaticLaunchArch &&
         option_on && driver.LaunchKernelEx != nullptr && (!launch_graphs || driver.GraphAddDependencies != nullptr);
}

bool KernelLauncher::prepare(const KernelDesc* kernel, CUfunction function,
                             const ScratchDesc& scratch, bool programmatic, std::string* error) {
  if (!check_scratch(*kernel, scratch, error)) return false;
  kernel_ = kernel;
  function_ = function;
  programmatic_ = programmatic;
  scratch_ = scratch;
  values_.assign(kernel->params.size(), 0);
  pointers_.resize(kernel->params.size());
  for (size_t i = 0; i < values_.size(); ++i) pointers_[i] = &values_[i];
  return true;
}

Error KernelLauncher::evaluate(const ArgDesc* args, size_t num_args) {
  const Error err = evaluate_launch(*kernel_, args, num_args, scratch_, values_.data(), &config_,
                                    &error_);
  if (err != Error::Ok) ET_LOG(Error, "CudaGqaBackend: %s", error_.c_str());
  return err;
}

Error KernelLauncher::launch_evaluated(const CudaDriver& driver, CUstream stream) {
  const LaunchConfig& c = config_;
  if (c.ctas() == 0) return Error::Ok;  // empty tensors: nothing to compute
  CUresult r;
  if (programmatic_) {
    CUlaunchAttribute attribute;
    std::memset(&attribute, 0, sizeof(attribute));
    attribute.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attribute.value.programmaticStreamSerializationAllowed = 1;
    CUlaunchConfig launch;
    std::memset(&launch, 0, sizeof(launch));
    launch.gridDimX = c.grid[0];
    launch.gridDimY = c.grid[1];
    launch.gridDimZ = c.grid[2];
    launch.blockDimX = c.block;
    launch.blockDimY = 1;
    launch.blockDimZ = 1;
    launch.sharedMemBytes = c.shared_mem_bytes;
    launch.hStream = stream;
    launch.attrs = &attribute;
    launch.numAttrs = 1;
    r = driver.LaunchKernelEx(&launch, function_, pointers_.data(), nullptr);
  } else {
    r = driver.LaunchKernel(function_, c.grid[0], c.grid[1], c.grid[2], c.block, 1, 1, c.shared_mem_bytes,
                            stream, pointers_.data(), nullptr);
  }
  if (r != CUDA_SUCCESS) {
    ET_LOG(Error, "CudaGqaBackend: kernel %s: %s(grid %u,%u,%u block %u smem %u) failed: %s",
           kernel_->name.c_str(), programmatic_ ? "cuLaunchKernelEx" : "cuLaunchKernel", c.grid[0],
           c.grid[1], c.grid[2], c.block, c.shared_mem_bytes, driver.error_string(r).c_str());
    return Error::Internal;
  }
  return Error::Ok;
}

namespace {

int64_t position_at(const void* data, const ArgDesc& a, int64_t index) {
  if (a.dtype == static_cast<int>(DType::kInt64)) {
    int64_t value;  // memcpy: host tensors need not be aligned
    std::memcpy(&value, static_cast<const char*>(data) + index * sizeof(int64_t), sizeof(value));
    return value;
  }
  int32_t value;
  std::memcpy(&value, static_cast<const char*>(data) + index * sizeof(int32_t), sizeof(value));
  return value;
}

int64_t element_count(const ArgDesc& a) {
  int64_t numel = 1;
  for (size_t d = 0; d < a.rank && d < kMaxRank; ++d) numel *= a.sizes[d];
  return numel;
}

}  // namespace

bool check_positions(const PayloadDesc& payload, const ArgDesc* args, const void* const* host_data,
                     std::string* error) {
  for (const PositionBoundDesc& b : payload.position_bounds) {
    const void* data = host_data[b.arg];
    const ArgDesc& a = args[b.arg];
    const int64_t numel = element_count(a);
    if (data == nullptr || numel == 0) continue;
    const std::string range = " [0, " + std::to_string(b.bound) + ")";
    const std::string cache = " outside the cache" + range;
    if (b.start_only) {
      const int64_t start = position_at(data, a, 0);
      const int64_t rows = args[b.rows_arg].sizes[b.rows_dim];
      // Compared as start > bound - rows: start + rows could overflow.
      if (start < 0 || rows > b.bound || start > b.bound - rows) {
        *error = "input " + std::to_string(b.arg) + " holds start position " + std::to_string(start) + " of " +
                 std::to_string(rows) + " rows," + cache;
        return false;
      }
      continue;
    }
    for (int64_t i = 0; i < numel; ++i) {
      const int64_t p = position_at(data, a, i);
      if (p < 0 || p >= b.bound) {
        *error = "input " + std::to_string(b.arg) + (b.token_ids ? " holds token id " + std::to_string(p) +
                                                                        " outside the embedding table's rows" + range
                                                                  : " holds position " + std::to_string(p) + cache);
        return false;
      }
    }
  }
  return true;
}

}  // namespace cuda_gqa
