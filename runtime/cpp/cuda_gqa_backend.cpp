// CudaGqaBackend: the ExecuTorch BackendInterface that runs a payload's
// kernels on a CUDA device, registered from a static initializer when the
// library is loaded.
//
// Threads: init, execute and destroy of different delegates (methods,
// programs) may run concurrently; the module cache they share and the
// process-wide options are guarded by mutexes. Executes of one delegate are
// serialised by its own mutex (its staging buffers, workspace and launch
// slots are single-use), so a second thread calling execute on the same
// method waits. destroy must not race an execute of the same delegate
// (ExecuTorch destroys a delegate with its Method). A delegate's launch
// graphs (launch_graph.h) are its own, used under the same mutex.
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/core/error.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/core/named_data_map.h>
#include <executorch/runtime/executor/merged_data_map.h>
#include <executorch/runtime/platform/log.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "backend_options.h"
#include "cuda_driver.h"
#include "cuda_gqa_c_api.h"
#include "dtype_map.h"
#include "kernel_module.h"
#include "launch_graph.h"
#include "launcher.h"
#include "payload.h"
#include "state_registry.h"

namespace cuda_gqa {
namespace {

using executorch::aten::Tensor;
using executorch::runtime::ArrayRef;
using executorch::runtime::BackendExecutionContext;
using executorch::runtime::BackendInitContext;
using executorch::runtime::BackendInterface;
using executorch::runtime::BackendOption;
using executorch::runtime::BackendOptionContext;
using executorch::runtime::CompileSpec;
using executorch::runtime::DelegateHandle;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::FreeableBuffer;
using executorch::runtime::NamedDataMap;
using executorch::runtime::Result;
using executorch::runtime::Span;

struct DeviceBuffer {
  CUdeviceptr ptr = 0;
  size_t bytes = 0;
};

// Process-wide option values (set_option); each delegate copies them at init.
std::mutex g_settings_mutex;
BackendSettings g_settings;

// Kernel time of every profiled execute, summed (cuda_gqa_profiled_kernel_time_ns).
std::atomic<uint64_t> g_profiled_kernel_ns{0};
// Wall time and number of every execute call, summed (cuda_gqa_execute_time_ns,
// cuda_gqa_execute_count): what a caller's step spends in this backend.
std::atomic<uint64_t> g_execute_ns{0};
std::atomic<uint64_t> g_execute_count{0};

struct ExecuteClock {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  ~ExecuteClock() {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start);
    g_execute_ns.fetch_add(static_cast<uint64_t>(ns.count()), std::memory_order_relaxed);
    g_execute_count.fetch_add(1, std::memory_order_relaxed);
  }
};

// What keys the states a program's delegates share: the Program, for which
// ExecuTorch hands a delegate no handle, but whose own named-data map (a
// PteDataMap, a member of the Program: one object per program load, even of
// the same bytes) every delegate reaches. Without external data, the map a
// delegate gets is that PteDataMap itself. With an external data map (a
// .ptd), each Method merges that with the Program's map into a MergedDataMap
// of its own, so prefill and decode see different maps: the Program's map is
// the merged map's second. (The address of a key string is no identity: a
// Program loaded from a caller's buffer keeps its keys there, so two loads of
// one buffer would share their states.) Any other map identifies itself.
struct MergedSecondTag {
  using type = const NamedDataMap* executorch::runtime::internal::MergedDataMap::*;
  friend type merged_second(MergedSecondTag);
};
// The merged map's `second_` is private and it has no accessor; an explicit
// instantiation may name a private member, which hands it to merged_second.
template <typename Tag, typename Tag::type Member>
struct ExposeMember {
  friend typename Tag::type merged_second(Tag) { return Member; }
};
template struct ExposeMember<MergedSecondTag, &executorch::runtime::internal::MergedDataMap::second_>;

const void* program_identity(const NamedDataMap* named_data) {
  using executorch::runtime::internal::MergedDataMap;
  if (const auto* merged = dynamic_cast<const MergedDataMap*>(named_data)) {
    const NamedDataMap* program_map = merged->*merged_second(MergedSecondTag{});
    if (program_map != nullptr) return program_map;
  }
  return named_data;
}

// A host function holding the stream until *gate (a std::atomic<bool>) opens:
// with the kernels enqueued behind it, the profile events time them back to
// back, without the host's launch latency in between.
void CUDA_CB hold_stream_until_open(void* gate) {
  auto* open = static_cast<std::atomic<bool>*>(gate);
  while (!open->load(std::memory_order_acquire)) std::this_thread::yield();
}

// Everything one delegate instance owns. Built by init, released by the
// destructor whatever state init reached.
struct DelegateState {
  const CudaDriver* driver = nullptr;
  BackendSettings settings;
  CUdevice device = 0;
  int compute_capability = 0;
  CUcontext context = nullptr;  // retained primary context
  CUstream stream = nullptr;
  bool owns_stream = false;
  PayloadDesc payload;  // image views cleared once modules are loaded
  // Per delegate arg: a staging buffer for host-resident tensors (none when
  // the program plans the delegate's tensors on the GPU), sized for the
  // spec's max sizes.
  std::vector<DeviceBuffer> staging;
  std::vector<DeviceBuffer> scratch;
  DeviceBuffer workspace;  // Payload.workspace_bytes, shared by the kernels in order
  // Per kept plan (payload.plans), per kernel.
  std::vector<std::vector<LoadedKernel>> modules;
  std::vector<std::vector<KernelLauncher>> launchers;
  // Per kept plan: its kernels as one CUDA graph, when launch_graphs is on
  // and the driver has the graph API; built by the plan's first execute.
  bool launch_graphs = false;
  std::vector<PlanGraph> graphs;
  CUevent profile_start = nullptr;  // profile: around the kernels of one execute
  CUevent profile_stop = nullptr;
  std::atomic<bool> profile_gate{true};
  std::mutex execute_mutex;        // one execute at a time (see the top of this file)
  std::vector<ArgDesc> arg_descs;  // reused by every execute
  std::vector<uint8_t> on_device;  // per arg: the tensor's data is device memory
  std::string error;               // reused by execute's refusals
  // Payload.states: the key owner (state_registry.h) and how many of the
  // payload's states were acquired (released in order by the destructor).
  const void* state_owner = nullptr;
  size_t states_acquired = 0;
  // Payload.constants: the device address of each (the launchers' table,
  // ScratchDesc::constants; sized once, before they are prepared) and how
  // many were acquired from the same registry, under the same owner.
  std::vector<CUdeviceptr> constant_addresses;
  size_t constants_acquired = 0;

  ~DelegateState() {
    if (driver == nullptr || context == nullptr) return;
    // destroy cannot fail: failures are logged by name and the teardown goes on.
    const CudaDriver& d = *driver;
    auto check = [&d](CUresult r, const char* call) {
      if (r != CUDA_SUCCESS) {
        ET_LOG(Error, "CudaGqaBackend: destroy: %s failed: %s", call, d.error_string(r).c_str());
      }
    };
    check(d.CtxSetCurrent(context), "cuCtxSetCurrent");
    if (stream != nullptr) check(d.StreamSynchronize(stream), "cuStreamSynchronize");
    // Before the modules their nodes launch are unloaded.
    for (PlanGraph& graph : graphs) graph.release(d);
    for (size_t i = 0; i < states_acquired; ++i) {
      release_state(d, state_owner, settings.device, payload.states[i].name);
    }
    for (size_t i = 0; i < constants_acquired; ++i) {
      release_constant(d, state_owner, settings.device, payload.constants[i].name);
    }
    for (const auto* buffers : {&staging, &scratch}) {
      for (const DeviceBuffer& b : *buffers) {
        if (b.ptr != 0) check(d.MemFree(b.ptr), "cuMemFree");
      }
    }
    if (workspace.ptr != 0) check(d.MemFree(workspace.ptr), "cuMemFree");
    for (std::vector<LoadedKernel>& plan : modules) {
      for (LoadedKernel& m : plan) release_kernel(d, &m);
    }
    if (profile_start != nullptr) check(d.EventDestroy(profile_start), "cuEventDestroy");
    if (profile_stop != nullptr) check(d.EventDestroy(profile_stop), "cuEventDestroy");
    if (stream != nullptr && owns_stream) check(d.StreamDestroy(stream), "cuStreamDestroy");
    check(d.DevicePrimaryCtxRelease(device), "cuDevicePrimaryCtxRelease");
  }
};

// The launch's view of an ExecuTorch tensor whose data the kernel reads or
// writes at `device` (the tensor's own data or its staging buffer).
void describe_tensor(const Tensor& t, CUdeviceptr device, ArgDesc* out) {
  DType dtype;
  if (dtype_of(t.scalar_type(), &dtype)) {
    out->dtype = static_cast<int>(dtype);
  } else {
    out->dtype = -1;
    out->dtype_label = nullptr;
    out->foreign_dtype_code = static_cast<int>(t.scalar_type());
  }
  out->rank = static_cast<size_t>(t.dim());
  for (size_t d = 0; d < out->rank && d < kMaxRank; ++d) {
    out->sizes[d] = t.size(static_cast<ssize_t>(d));
    out->strides[d] = t.strides()[d];
  }
  out->address = static_cast<uint64_t>(device);
}

// Allocates `bytes` (none for 0) aligned to `align` within the allocation;
// cuMemAlloc guarantees 256 bytes, larger alignments over-allocate.
bool device_alloc(DelegateState* s, size_t bytes, size_t align, DeviceBuffer* out,
                  CUdeviceptr* aligned, std::string* error) {
  *out = DeviceBuffer();
  *aligned = 0;
  if (bytes == 0) return true;
  const size_t extra = align > 256 ? align - 1 : 0;
  CUresult r = s->driver->MemAlloc(&out->ptr, bytes + extra);
  if (r != CUDA_SUCCESS) {
    out->ptr = 0;
    *error = "cuMemAlloc(" + std::to_string(bytes + extra) + " bytes) failed: " +
             s->driver->error_string(r);
    return false;
  }
  out->bytes = bytes;
  *aligned = align > 256 ? (out->ptr + align - 1) & ~static_cast<CUdeviceptr>(align - 1)
                         : out->ptr;
  return true;
}

// When kernel `k` stores the image init loads on `device_cc` in the
// program's named data, fetches it into *held (kept until the module is
// loaded) and points the image's view at it. False with *why when the key
// cannot be resolved.
bool fetch_named_image(const NamedDataMap* named_data, int device_cc, KernelDesc* k,
                       std::vector<FreeableBuffer>* held, std::string* why) {
  ImageChoice choice;
  if (!select_image(*k, device_cc, &choice, why)) {
    *why = "kernel " + k->name + ": " + *why;
    return false;
  }
  ImageView* image = choice.is_ptx ? &k->ptx : &k->cubins[choice.image - k->cubins.data()];
  if (image->key.empty()) return true;
  const std::string what = "kernel " + k->name + ": its " +
                           (choice.is_ptx ? std::string("PTX") : "sm_" + std::to_string(image->arch) + " cubin") +
                           ", named data '" + image->key + "',";
  if (named_data == nullptr) {
    *why = what + " cannot be read: the program has no named data";
    return false;
  }
  Result<FreeableBuffer> data = named_data->get_data(image->key);
  if (!data.ok()) {
    char code[16];
    std::snprintf(code, sizeof(code), "0x%x", static_cast<unsigned>(data.error()));
    *why = what + " is missing from the program (executorch error " + code + ")";
    return false;
  }
  if (data->size() == 0 || data->data() == nullptr) {
    *why = what + " is empty";
    return false;
  }
  held->push_back(std::move(data.get()));
  image->data = static_cast<const uint8_t*>(held->back().data());
  image->size = held->back().size();
  return true;
}

std::string executorch_error(Error error) {
  char code[16];
  std::snprintf(code, sizeof(code), "0x%x", static_cast<unsigned>(error));
  return std::string("executorch error ") + code;
}

// Copies constant `spec`'s bytes (exactly `bytes`) from the program's named
// data to `address` with a synchronous copy, then frees the host buffer:
// no host copy outlives the upload. False with *why.
bool upload_constant(const CudaDriver& d, const NamedDataMap* named_data, const ConstantSpecDesc& spec,
                     CUdeviceptr address, size_t bytes, std::string* why) {
  if (named_data == nullptr) {
    *why = "its bytes cannot be read: the program has no named data";
    return false;
  }
  Result<FreeableBuffer> data = named_data->get_data(spec.name);
  if (!data.ok()) {
    *why = "missing from the program's named data (" + executorch_error(data.error()) + ")";
    return false;
  }
  FreeableBuffer buffer = std::move(data.get());
  if (buffer.size() != bytes || (bytes > 0 && buffer.data() == nullptr)) {
    *why = "its named data holds " + std::to_string(buffer.size()) + " bytes, " + dtype_name(spec.spec.dtype) +
           " of its sizes needs " + std::to_string(bytes);
    return false;  // buffer's destructor frees it
  }
  const CUresult r = bytes > 0 ? d.MemcpyHtoD(address, buffer.data(), bytes) : CUDA_SUCCESS;
  buffer.Free();
  if (r != CUDA_SUCCESS) {
    *why = "cuMemcpyHtoD of " + std::to_string(bytes) + " bytes failed: " + d.error_string(r);
    return false;
  }
  return true;
}

// The device copy of every payload constant, uploaded by the first delegate
// of the program that names it and shared with the others (state_registry.h).
Error acquire_constants(DelegateState* s, const NamedDataMap* named_data, std::string* why) {
  s->constant_addresses.assign(s->payload.constants.size(), 0);
  for (const ConstantSpecDesc& constant : s->payload.constants) {
    bool mismatch = false;
    bool uploaded = true;  // false: the upload, not the allocation, failed
    const ConstantUpload upload = [&](CUdeviceptr address, size_t bytes, std::string* error) {
      uploaded = upload_constant(*s->driver, named_data, constant, address, bytes, error);
      return uploaded;
    };
    if (!acquire_constant(*s->driver, s->context, s->state_owner, s->settings.device, constant, upload,
                          &s->constant_addresses[s->constants_acquired], &mismatch, why)) {
      return mismatch || !uploaded ? Error::InvalidProgram : Error::MemoryAllocationFailed;
    }
    ++s->constants_acquired;
  }
  // cuMemcpyHtoD from pageable memory may return before its DMA lands, and
  // the delegate's non-blocking stream does not wait for the legacy stream.
  if (!s->payload.constants.empty()) {
    const CUresult r = s->driver->CtxSynchronize();
    if (r != CUDA_SUCCESS) {
      *why = "constants: cuCtxSynchronize after their upload failed: " + s->driver->error_string(r);
      return Error::Internal;
    }
  }
  return Error::Ok;
}

// Init after the payload is parsed: device, context, stream, modules,
// buffers. Returns the error and fills *why on failure.
Error set_up_device(DelegateState* s, const NamedDataMap* named_data, bool device_planned,
                    std::string* why) {
  // Delegates of one Program share the states and constants they name
  // (state_registry.h), keyed by the Program's identity (program_identity).
  // Without named data, the states are this delegate's own (and constants
  // cannot be read: init fails naming the first).
  s->state_owner = named_data != nullptr ? program_identity(named_data) : s;
  if (named_data == nullptr && !s->payload.states.empty()) {
    ET_LOG(Info, "CudaGqaBackend: the program has no named data: this delegate's states are not shared");
  }
  std::string message;
  if (!cuda_device_at(s->settings.device, &s->driver, &s->device, &s->compute_capability,
                      &message)) {
    s->driver = nullptr;
    *why = message;
    return Error::NotSupported;
  }
  // The plans for this arch (tiles tuned for it, when the payload has them).
  if (!keep_plans_for_arch(&s->payload, s->compute_capability, why)) return Error::NotSupported;
  const CudaDriver& d = *s->driver;
  CUresult r = d.DevicePrimaryCtxRetain(&s->context, s->device);
  if (r != CUDA_SUCCESS) {
    s->context = nullptr;
    *why = "cuDevicePrimaryCtxRetain failed: " + d.error_string(r);
    return Error::Internal;
  }
  r = d.CtxSetCurrent(s->context);
  if (r != CUDA_SUCCESS) {
    *why = "cuCtxSetCurrent failed: " + d.error_string(r);
    return Error::Internal;
  }
  if (s->settings.stream != 0) {
    // The caller's stream must belong to the context the kernels load into.
    s->stream = reinterpret_cast<CUstream>(static_cast<uintptr_t>(s->settings.stream));
    CUcontext stream_context = nullptr;
    r = d.StreamGetCtx(s->stream, &stream_context);
    if (r != CUDA_SUCCESS) {
      s->stream = nullptr;
      *why = "option 'stream': cuStreamGetCtx failed: " + d.error_string(r);
      return Error::InvalidArgument;
    }
    if (stream_context != s->context) {
      s->stream = nullptr;
      *why = "option 'stream': the stream belongs to another CUDA context than device " +
             std::to_string(s->settings.device) + "'s primary context";
      return Error::InvalidArgument;
    }
  } else {
    // Non-blocking: delegate work does not serialize with other users of the
    // legacy default stream in the process.
    r = d.StreamCreate(&s->stream, CU_STREAM_NON_BLOCKING);
    if (r != CUDA_SUCCESS) {
      s->stream = nullptr;
      *why = "cuStreamCreate failed: " + d.error_string(r);
      return Error::Internal;
    }
    s->owns_stream = true;
  }
  if (s->settings.profile) {
    for (CUevent* event : {&s->profile_start, &s->profile_stop}) {
      r = d.EventCreate(event, CU_EVENT_DEFAULT);
      if (r != CUDA_SUCCESS) {
        *event = nullptr;
        *why = "cuEventCreate failed: " + d.error_string(r);
        return Error::Internal;
      }
    }
  }

  const size_t num_plans = s->payload.plans.size();
  s->modules.resize(num_plans);
  std::vector<FreeableBuffer> named_images;  // freed once the modules are loaded
  for (size_t p = 0; p < num_plans; ++p) {
    std::vector<KernelDesc>& kernels = s->payload.plans[p].kernels;
    s->modules[p].resize(kernels.size());
    for (size_t i = 0; i < kernels.size(); ++i) {
      if (!fetch_named_image(named_data, s->compute_capability, &kernels[i], &named_images, why)) {
        return Error::InvalidProgram;
      }
      // The module cache loads each image once, however many plans share it.
      if (!acquire_kernel(d, s->context, s->device, s->compute_capability, kernels[i],
                          &s->modules[p][i], why)) {
        return Error::NotSupported;
      }
    }
  }

  const size_t num_args = s->payload.num_args();
  s->staging.resize(num_args);
  s->arg_descs.resize(s->payload.num_launch_args());
  s->on_device.resize(num_args);
  for (size_t i = 0; i < num_args; ++i) {
    const TensorSpecDesc& spec = s->payload.arg_spec(i);
    const size_t bytes = static_cast<size_t>(spec.max_numel()) * dtype_size(spec.dtype);
    if (device_planned) continue;  // its tensors live on the GPU: nothing to stage
    CUdeviceptr unused;
    if (!device_alloc(s, bytes, 0, &s->staging[i], &unused, why)) {
      *why = "staging buffer for delegate arg " + std::to_string(i) + ": " + *why;
      return Error::MemoryAllocationFailed;
    }
    s->staging[i].bytes = bytes;
  }

  // The states, after the caller's arguments: device buffers that stay put,
  // so their launch descriptions are filled once, here.
  for (const StateSpecDesc& state : s->payload.states) {
    CUdeviceptr address = 0;
    bool mismatch = false;
    if (!acquire_state(d, s->context, s->state_owner, s->settings.device, state, &address, &mismatch,
                       why)) {
      return mismatch ? Error::InvalidProgram : Error::MemoryAllocationFailed;
    }
    ++s->states_acquired;
    ArgDesc& a = s->arg_descs[num_args + s->states_acquired - 1];
    a.dtype = static_cast<int>(state.spec.dtype);
    a.rank = state.spec.sizes.size();
    int64_t stride = 1;
    for (size_t dim = a.rank; dim-- > 0;) {
      a.sizes[dim] = state.spec.sizes[dim];
      a.strides[dim] = stride;
      stride *= state.spec.sizes[dim];
    }
    a.address = static_cast<uint64_t>(address);
  }

  const Error constants = acquire_constants(s, named_data, why);
  if (constants != Error::Ok) return constants;

  // One workspace for the delegate, allocated here once and never per call:
  // the kernels run in order on one stream, so they share it.
  CUdeviceptr workspace = 0;
  if (!device_alloc(s, static_cast<size_t>(s->payload.workspace_bytes), kWorkspaceAlign,
                    &s->workspace, &workspace, why)) {
    *why = "workspace: " + *why;
    return Error::MemoryAllocationFailed;
  }
  // Zeroed once: fused split-KV kernels keep arrival counters there that
  // must start at 0 and that each launch leaves at 0 (payload.fbs, Workspace).
  if (workspace != 0) {
    // cuMemsetD8 is ordered on the legacy stream, which the delegate's
    // non-blocking stream does not wait for: finish it here.
    CUresult r = s->driver->MemsetD8(workspace, 0, static_cast<size_t>(s->payload.workspace_bytes));
    if (r == CUDA_SUCCESS) r = s->driver->CtxSynchronize();
    if (r != CUDA_SUCCESS) {
      *why = "workspace: zeroing failed: " + s->driver->error_string(r);
      return Error::Internal;
    }
  }

  s->launch_graphs = s->settings.launch_graphs && d.has_graphs();
  s->launchers.resize(num_plans);
  for (size_t p = 0; p < num_plans; ++p) {
    const std::vector<KernelDesc>& kernels = s->payload.plans[p].kernels;
    s->launchers[p].resize(kernels.size());
    for (size_t i = 0; i < kernels.size(); ++i) {
      const KernelDesc& k = kernels[i];
      ScratchDesc scratch;
      scratch.workspace = workspace;
      scratch.constants = s->constant_addresses.data();
      scratch.num_constants = s->constant_addresses.size();
      if (k.global_scratch_bytes > 0 || k.profile_scratch_bytes > 0) {
        uint64_t ctas = 0;
        if (!bounded_grid_ctas(s->payload, k, &ctas, why)) return Error::InvalidProgram;
        scratch.ctas = ctas;
        const struct {
          uint32_t bytes, align;
          CUdeviceptr* out;
        } wants[] = {{k.global_scratch_bytes, k.global_scratch_align, &scratch.global},
                     {k.profile_scratch_bytes, k.profile_scratch_align, &scratch.profile}};
        for (const auto& w : wants) {
          if (w.bytes == 0 || ctas == 0) continue;
          if (ctas > (uint64_t{1} << 40) / w.bytes) {
            *why = "kernel " + k.name + ": scratch too large";
            return Error::MemoryAllocationFailed;
          }
          s->scratch.emplace_back();
          if (!device_alloc(s, static_cast<size_t>(ctas * w.bytes), w.align, &s->scratch.back(),
                            w.out, why)) {
            *why = "scratch for kernel " + k.name + ": " + *why;
            return Error::MemoryAllocationFailed;
          }
        }
      }
      const bool programmatic = launches_programmatically(k, i, s->compute_capability, s->modules[p][i].arch,
                                                          s->settings.programmatic_launch, s->launch_graphs, d);
      if (!s->launchers[p][i].prepare(&k, s->modules[p][i].function, scratch, programmatic, why)) {
        return Error::InvalidProgram;
      }
    }
  }
  if (s->launch_graphs) {
    s->graphs.resize(num_plans);
    for (size_t p = 0; p < num_plans; ++p) s->graphs[p].reserve(s->launchers[p]);
  }
  // The images live in buffers init frees; nothing reads them after load.
  for (LaunchPlanDesc& plan : s->payload.plans) {
    for (KernelDesc& k : plan.kernels) {
      k.cubins.clear();
      k.ptx = ImageView();
    }
  }
  return Error::Ok;
}

// Opens the profile gate when it goes out of scope, so that no return path
// leaves the stream held.
struct OpenGateOnExit {
  std::atomic<bool>* gate;
  ~OpenGateOnExit() {
    if (gate != nullptr) gate->store(true, std::memory_order_release);
  }
};

class CudaGqaBackend final : public BackendInterface {
 public:
  // The real availability (driver, device, arch) is reported by init with
  // its cause; answering false here would only say "not available".
  bool is_available() const override { return true; }

  Result<DelegateHandle*> init(BackendInitContext& context, FreeableBuffer* processed,
                               ArrayRef<CompileSpec> compile_specs) const override {
    // ExecuTorch's device-aware memory planning puts the delegate's tensors
    // on the GPU when the program was lowered with a target_device.
    bool device_planned = false;
    for (const CompileSpec& spec : compile_specs) {
      device_planned |= spec.key != nullptr && std::strcmp(spec.key, "target_device") == 0;
    }
    if (processed == nullptr || processed->data() == nullptr) {
      ET_LOG(Error, "CudaGqaBackend: no payload");
      return Error::InvalidProgram;
    }
    auto* state = new (std::nothrow) DelegateState();
    if (state == nullptr) {
      processed->Free();
      ET_LOG(Error, "CudaGqaBackend: out of host memory");
      return Error::MemoryAllocationFailed;
    }
    Error err = Error::Ok;
    std::string why;
    try {
      {
        std::lock_guard<std::mutex> lock(g_settings_mutex);
        state->settings = g_settings;
      }
      // Options given for this load override the process-wide ones.
      err = apply_backend_options(context.runtime_specs(), &state->settings, &why);
      std::vector<uint64_t> aligned_copy;  // read by set_up_device, below
      if (err != Error::Ok) {
        why = "runtime spec " + why;
      } else if (!parse_payload(processed->data(), processed->size(), &aligned_copy,
                                &state->payload, &why)) {
        // A payload from another schema version is well-formed but foreign.
        err = state->payload.version != 0 && (state->payload.version < kOldestPayloadVersion ||
                                              state->payload.version > kPayloadVersion)
                  ? Error::DelegateInvalidCompatibility
                  : Error::InvalidProgram;
      } else {
        err = set_up_device(state, context.get_named_data_map(), device_planned, &why);
      }
    } catch (const std::bad_alloc&) {
      err = Error::MemoryAllocationFailed;
      why = "out of host memory";
    } catch (...) {
      err = Error::Internal;
      why = "unexpected exception";
    }
    processed->Free();
    if (err != Error::Ok) {
      ET_LOG(Error, "CudaGqaBackend: %s", why.c_str());
      delete state;
      return err;
    }
    size_t programmatic = 0;
    for (const std::vector<KernelLauncher>& plan : state->launchers) {
      for (const KernelLauncher& l : plan) programmatic += l.programmatic();
    }
    ET_LOG(Info, "CudaGqaBackend: %zu launch plan(s) loaded for sm_%d on device %d, %s, %zu kernel(s) as "
                 "programmatic dependents",
           state->modules.size(), state->compute_capability, state->settings.device,
           state->launch_graphs            ? "launched as CUDA graphs"
           : state->settings.launch_graphs ? "launched kernel by kernel (the driver has no graph API)"
                                           : "launched kernel by kernel (launch_graphs off)",
           programmatic);
    return static_cast<DelegateHandle*>(state);
  }

  Error execute(BackendExecutionContext& context, DelegateHandle* handle,
                Span<EValue*> args) const override {
    (void)context;
    const ExecuteClock clock;
    ET_CHECK_OR_RETURN_ERROR(handle != nullptr, InvalidState, "CudaGqaBackend: null handle");
    auto* s = static_cast<DelegateState*>(handle);
    std::lock_guard<std::mutex> lock(s->execute_mutex);
    const CudaDriver& d = *s->driver;
    const size_t num_inputs = s->payload.inputs.size();
    const size_t num_args = s->payload.num_args();
    ET_CHECK_OR_RETURN_ERROR(args.size() == num_args, InvalidArgument,
                             "CudaGqaBackend: %zu delegate args, the payload expects %zu",
                             args.size(), num_args);
    bool host_resident = false;
    // Inputs first: the outputs' dynamic sizes come from them.
    for (size_t i = 0; i < num_args; ++i) {
      ET_CHECK_OR_RETURN_ERROR(args[i] != nullptr && args[i]->isTensor(), InvalidArgument,
                               "CudaGqaBackend: delegate arg %zu is not a tensor", i);
      const Tensor& t = args[i]->toTensor();
      if (i >= num_inputs) {
        const TensorSpecDesc& spec = s->payload.arg_spec(i);
        if (!spec.size_from.empty() && static_cast<size_t>(t.dim()) == spec.sizes.size()) {
          int64_t sizes[kMaxRank];
          output_sizes(spec, s->arg_descs.data(), num_inputs, sizes);
          executorch::aten::SizesType new_sizes[kMaxRank];
          for (size_t d = 0; d < spec.sizes.size(); ++d) {
            new_sizes[d] = static_cast<executorch::aten::SizesType>(sizes[d]);
          }
          const Error resized = executorch::runtime::resize_tensor(
              t, executorch::aten::ArrayRef<executorch::aten::SizesType>(new_sizes, spec.sizes.size()));
          ET_CHECK_OR_RETURN_ERROR(resized == Error::Ok, InvalidArgument,
                                   "CudaGqaBackend: output %zu cannot be resized to its inputs' sizes "
                                   "(executorch error 0x%x)",
                                   i - num_inputs, static_cast<unsigned>(resized));
        }
      }
      // Tensors planned on the GPU are read and written in place; the others
      // go through the staging buffer allocated at init.
      const bool on_device = t.unsafeGetTensorImpl()->device_type() ==
                             executorch::runtime::etensor::DeviceType::CUDA;
      ET_CHECK_OR_RETURN_ERROR(
          !on_device || t.unsafeGetTensorImpl()->device_index() == s->settings.device,
          InvalidArgument, "CudaGqaBackend: delegate arg %zu is on cuda:%d, the delegate runs on cuda:%d",
          i, static_cast<int>(t.unsafeGetTensorImpl()->device_index()), s->settings.device);
      s->on_device[i] = on_device;
      host_resident |= !on_device;
      ArgDesc& a = s->arg_descs[i];
      describe_tensor(t,
                      on_device ? static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(t.const_data_ptr()))
                                : s->staging[i].ptr,
                      &a);
      if (i + 1 != num_inputs && i + 1 != num_args) continue;
      // All inputs (or all args) described: check them.
      for (size_t j = i + 1 == num_inputs ? 0 : num_inputs; j <= i; ++j) {
        const Tensor& checked = args[j]->toTensor();
        if (!check_arg(s->payload.arg_spec(j), s->arg_descs.data(), j, num_inputs, &s->error) ||
            !check_layout(s->arg_descs.data(), j, num_inputs, !s->on_device[j], &s->error)) {
          ET_LOG(Error, "CudaGqaBackend: %s", s->error.c_str());
          return Error::InvalidArgument;
        }
        ET_CHECK_OR_RETURN_ERROR(
            s->on_device[j] || s->staging[j].ptr != 0 || checked.nbytes() == 0, InvalidArgument,
            "CudaGqaBackend: delegate arg %zu is in host memory, but the program plans the delegate's "
            "tensors on the GPU (target_device)", j);
        ET_CHECK_OR_RETURN_ERROR(s->on_device[j] || checked.nbytes() <= s->staging[j].bytes,
                                 InvalidArgument,
                                 "CudaGqaBackend: delegate arg %zu has %zu bytes, its staging buffer %zu",
                                 j, checked.nbytes(), s->staging[j].bytes);
        ET_CHECK_OR_RETURN_ERROR(checked.nbytes() == 0 || checked.const_data_ptr() != nullptr,
                                 InvalidArgument, "CudaGqaBackend: delegate arg %zu has no data", j);
      }
    }
    if (!s->payload.position_bounds.empty()) {
      const void* host_data[256] = {};  // parse_payload caps the arguments at 256
      for (size_t i = 0; i < num_inputs; ++i) {
        if (!s->on_device[i]) host_data[i] = args[i]->toTensor().const_data_ptr();
      }
      if (!check_positions(s->payload, s->arg_descs.data(), host_data, &s->error)) {
        ET_LOG(Error, "CudaGqaBackend: %s", s->error.c_str());
        return Error::InvalidArgument;
      }
    }
    size_t plan = 0;
    if (!select_plan(s->payload, s->arg_descs.data(), s->payload.num_launch_args(), &plan, &s->error)) {
      ET_LOG(Error, "CudaGqaBackend: %s", s->error.c_str());
      return Error::InvalidArgument;
    }
    // Evaluated before anything is enqueued, so a refusal enqueues nothing.
    std::vector<KernelLauncher>& launchers = s->launchers[plan];
    for (KernelLauncher& launcher : launchers) {
      const Error refused = launcher.evaluate(s->arg_descs.data(), s->payload.num_launch_args());
      if (refused != Error::Ok) return refused;
    }
    // Execute may run on another thread than init.
    CUresult r = d.CtxSetCurrent(s->context);
    if (r != CUDA_SUCCESS) {
      ET_LOG(Error, "CudaGqaBackend: cuCtxSetCurrent failed: %s", d.error_string(r).c_str());
      return Error::Internal;
    }
    Error err = Error::Ok;
    for (size_t i = 0; i < num_inputs && err == Error::Ok; ++i) {
      const size_t bytes = args[i]->toTensor().nbytes();
      if (s->on_device[i] || bytes == 0) continue;
      r = d.MemcpyHtoDAsync(s->staging[i].ptr, args[i]->toTensor().const_data_ptr(), bytes, s->stream);
      if (r != CUDA_SUCCESS) {
        ET_LOG(Error, "CudaGqaBackend: cuMemcpyHtoDAsync of input %zu failed: %s", i,
               d.error_string(r).c_str());
        err = Error::Internal;
      }
    }
    const bool profile = s->settings.profile && err == Error::Ok;
    OpenGateOnExit gate{nullptr};
    if (profile) {
      s->profile_gate.store(false, std::memory_order_release);
      r = d.LaunchHostFunc(s->stream, hold_stream_until_open, &s->profile_gate);
      if (r == CUDA_SUCCESS) {
        gate.gate = &s->profile_gate;
        r = d.EventRecord(s->profile_start, s->stream);
      } else {
        s->profile_gate.store(true, std::memory_order_release);
      }
      if (r != CUDA_SUCCESS) {
        ET_LOG(Error, "CudaGqaBackend: profile: %s failed: %s",
               gate.gate == nullptr ? "cuLaunchHostFunc" : "cuEventRecord", d.error_string(r).c_str());
        err = Error::Internal;
      }
    }
    if (err == Error::Ok && s->launch_graphs) {
      err = s->graphs[plan].launch(d, s->stream, launchers);
    } else {
      for (size_t k = 0; k < launchers.size() && err == Error::Ok; ++k) {
        err = launchers[k].launch_evaluated(d, s->stream);
      }
    }
    if (profile && err == Error::Ok) {
      r = d.EventRecord(s->profile_stop, s->stream);
      if (r != CUDA_SUCCESS) {
        ET_LOG(Error, "CudaGqaBackend: profile: cuEventRecord failed: %s", d.error_string(r).c_str());
        err = Error::Internal;
      }
    }
    if (gate.gate != nullptr) {
      gate.gate->store(true, std::memory_order_release);
      gate.gate = nullptr;
    }
    for (size_t i = num_inputs; i < num_args && err == Error::Ok; ++i) {
      const size_t bytes = args[i]->toTensor().nbytes();
      if (s->on_device[i] || bytes == 0) continue;
      r = d.MemcpyDtoHAsync(args[i]->toTensor().mutable_data_ptr(), s->staging[i].ptr, bytes,
                            s->stream);
      if (r != CUDA_SUCCESS) {
        ET_LOG(Error, "CudaGqaBackend: cuMemcpyDtoHAsync of output %zu failed: %s",
               i - num_inputs, d.error_string(r).c_str());
        err = Error::Internal;
      }
    }
    // Wait when asked to, when host memory the caller owns is read or
    // written by copies already enqueued (even if a later step failed), and
    // when profiling (the events are read next).
    if (s->settings.synchronize || host_resident || profile || err != Error::Ok) {
      r = d.StreamSynchronize(s->stream);
      if (r != CUDA_SUCCESS) {
        ET_LOG(Error, "CudaGqaBackend: cuStreamSynchronize failed (kernel execution error?): %s",
               d.error_string(r).c_str());
        if (err == Error::Ok) err = Error::Internal;
      }
    }
    if (profile && err == Error::Ok) {
      float ms = 0.0f;
      r = d.EventElapsedTime(&ms, s->profile_start, s->profile_stop);
      if (r != CUDA_SUCCESS) {
        ET_LOG(Error, "CudaGqaBackend: profile: cuEventElapsedTime failed: %s", d.error_string(r).c_str());
        return Error::Internal;
      }
      g_profiled_kernel_ns.fetch_add(static_cast<uint64_t>(static_cast<double>(ms) * 1e6 + 0.5),
                                     std::memory_order_relaxed);
    }
    return err;
  }

  void destroy(DelegateHandle* handle) const override {
    delete static_cast<DelegateState*>(handle);
  }

  // Process-wide values for delegates initialised from now on.
  Error set_option(BackendOptionContext& context,
                   const Span<BackendOption>& backend_options) override {
    (void)context;
    std::string why;
    std::lock_guard<std::mutex> lock(g_settings_mutex);
    const Error err = apply_backend_options(
        Span<const BackendOption>(backend_options.data(), backend_options.size()), &g_settings, &why);
    if (err != Error::Ok) ET_LOG(Error, "CudaGqaBackend: set_option: %s", why.c_str());
    return err;
  }

  Error get_option(BackendOptionContext& context, Span<BackendOption>& backend_options) override {
    (void)context;
    std::string why;
    std::lock_guard<std::mutex> lock(g_settings_mutex);
    const Error err = read_backend_options(g_settings, backend_options, &why);
    if (err != Error::Ok) ET_LOG(Error, "CudaGqaBackend: get_option: %s", why.c_str());
    return err;
  }
};

CudaGqaBackend g_backend;
const executorch::runtime::Backend g_backend_entry{"CudaGqaBackend", &g_backend};
// Registration happens when the library is loaded; the result is kept only
// so the initializer cannot be discarded.
const Error g_registered = executorch::runtime::register_backend(g_backend_entry);

}  // namespace
}  // namespace cuda_gqa

// Part of the C API (cuda_gqa_c_api.h); defined here, beside the counters.
extern "C" uint64_t cuda_gqa_profiled_kernel_time_ns(void) {
  return cuda_gqa::g_profiled_kernel_ns.load(std::memory_order_relaxed);
}

extern "C" uint64_t cuda_gqa_execute_time_ns(void) {
  return cuda_gqa::g_execute_ns.load(std::memory_order_relaxed);
}

extern "C" uint64_t cuda_gqa_execute_count(void) {
  return cuda_gqa::g_execute_count.load(std::memory_order_relaxed);
}
