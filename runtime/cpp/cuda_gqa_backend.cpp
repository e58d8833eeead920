// CudaGqaBackend: the ExecuTorch BackendInterface that runs a payload's
// kernels on device 0, registered from a static initializer when the library
// is loaded.
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/core/error.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/named_data_map.h>
#include <executorch/runtime/platform/log.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "cuda_driver.h"
#include "kernel_module.h"
#include "launcher.h"
#include "payload.h"

namespace cuda_gqa {
namespace {

using executorch::aten::Tensor;
using executorch::runtime::ArrayRef;
using executorch::runtime::BackendExecutionContext;
using executorch::runtime::BackendInitContext;
using executorch::runtime::BackendInterface;
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

// Everything one delegate instance owns. Built by init, released by the
// destructor whatever state init reached.
struct DelegateState {
  const CudaDriver* driver = nullptr;
  CUdevice device = 0;
  int compute_capability = 0;
  CUcontext context = nullptr;  // retained primary context
  CUstream stream = nullptr;
  PayloadDesc payload;  // image views cleared once modules are loaded
  std::vector<DeviceBuffer> staging;  // one per delegate arg
  std::vector<DeviceBuffer> scratch;
  DeviceBuffer workspace;  // Payload.workspace_bytes, shared by the kernels in order
  std::vector<LoadedKernel> modules;
  std::vector<KernelLauncher> launchers;
  std::vector<ArgDesc> arg_descs;  // reused by every execute
  std::string error;               // reused by execute's refusals

  ~DelegateState() {
    if (driver == nullptr || context == nullptr) return;
    driver->CtxSetCurrent(context);
    if (stream != nullptr) driver->StreamSynchronize(stream);
    for (DeviceBuffer& b : staging) {
      if (b.ptr != 0) driver->MemFree(b.ptr);
    }
    for (DeviceBuffer& b : scratch) {
      if (b.ptr != 0) driver->MemFree(b.ptr);
    }
    if (workspace.ptr != 0) driver->MemFree(workspace.ptr);
    for (LoadedKernel& m : modules) unload_kernel(*driver, &m);
    if (stream != nullptr) driver->StreamDestroy(stream);
    driver->DevicePrimaryCtxRelease(device);
  }
};

// The launch's view of an ExecuTorch tensor whose data the kernel reads or
// writes at `device` (its staging buffer).
void describe_tensor(const Tensor& t, CUdeviceptr device, ArgDesc* out) {
  switch (t.scalar_type()) {
    case executorch::aten::ScalarType::Float: out->dtype = static_cast<int>(DType::kFloat32); break;
    case executorch::aten::ScalarType::Half: out->dtype = static_cast<int>(DType::kFloat16); break;
    case executorch::aten::ScalarType::BFloat16:
      out->dtype = static_cast<int>(DType::kBFloat16);
      break;
    case executorch::aten::ScalarType::Bool: out->dtype = static_cast<int>(DType::kBool); break;
    case executorch::aten::ScalarType::Int: out->dtype = static_cast<int>(DType::kInt32); break;
    case executorch::aten::ScalarType::Long: out->dtype = static_cast<int>(DType::kInt64); break;
    default:
      out->dtype = -1;
      out->dtype_label = nullptr;
      out->foreign_dtype_code = static_cast<int>(t.scalar_type());
      break;
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

// Init after the payload is parsed: device, context, stream, modules,
// buffers. Returns the error and fills *why on failure.
Error set_up_device(DelegateState* s, const NamedDataMap* named_data, std::string* why) {
  for (const auto* specs : {&s->payload.inputs, &s->payload.outputs}) {
    for (const TensorSpecDesc& spec : *specs) {
      if (!spec.is_static()) {
        *why = "dynamic sizes are not supported by this runtime yet";
        return Error::NotSupported;
      }
    }
  }
  std::string message;
  if (!cuda_first_device(&s->driver, &s->device, &s->compute_capability, &message)) {
    s->driver = nullptr;
    *why = message;
    return Error::NotSupported;
  }
  // Tiles tuned for this arch, when the payload has them.
  use_arch_variant(&s->payload, s->compute_capability);
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
  // Non-blocking: delegate work does not serialize with other users of the
  // legacy default stream in the process.
  r = d.StreamCreate(&s->stream, CU_STREAM_NON_BLOCKING);
  if (r != CUDA_SUCCESS) {
    s->stream = nullptr;
    *why = "cuStreamCreate failed: " + d.error_string(r);
    return Error::Internal;
  }

  const size_t num_kernels = s->payload.kernels.size();
  s->modules.resize(num_kernels);
  std::vector<FreeableBuffer> named_images;  // freed once the modules are loaded
  named_images.reserve(num_kernels);
  for (size_t i = 0; i < num_kernels; ++i) {
    if (!fetch_named_image(named_data, s->compute_capability, &s->payload.kernels[i],
                           &named_images, why)) {
      return Error::InvalidProgram;
    }
    if (!load_kernel(d, s->device, s->compute_capability, s->payload.kernels[i],
                     &s->modules[i], why)) {
      return Error::NotSupported;
    }
  }

  const size_t num_args = s->payload.num_args();
  s->staging.resize(num_args);
  s->arg_descs.resize(num_args);
  for (size_t i = 0; i < num_args; ++i) {
    const TensorSpecDesc& spec = s->payload.arg_spec(i);
    const size_t bytes = static_cast<size_t>(spec.numel()) * dtype_size(spec.dtype);
    CUdeviceptr unused;
    if (!device_alloc(s, bytes, 0, &s->staging[i], &unused, why)) {
      *why = "staging buffer for delegate arg " + std::to_string(i) + ": " + *why;
      return Error::MemoryAllocationFailed;
    }
    s->staging[i].bytes = bytes;
  }

  // One workspace for the delegate, allocated here once and never per call:
  // the kernels run in order on one stream, so they share it.
  CUdeviceptr workspace = 0;
  if (!device_alloc(s, static_cast<size_t>(s->payload.workspace_bytes), kWorkspaceAlign,
                    &s->workspace, &workspace, why)) {
    *why = "workspace: " + *why;
    return Error::MemoryAllocationFailed;
  }

  s->launchers.resize(num_kernels);
  s->scratch.reserve(2 * num_kernels);
  for (size_t i = 0; i < num_kernels; ++i) {
    const KernelDesc& k = s->payload.kernels[i];
    ScratchDesc scratch;
    scratch.workspace = workspace;
    if (k.global_scratch_bytes > 0 || k.profile_scratch_bytes > 0) {
      uint64_t ctas = 0;
      if (!static_grid_ctas(s->payload, k, &ctas, why)) return Error::NotSupported;
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
    if (!s->launchers[i].prepare(&k, s->modules[i].function, scratch, why)) {
      return Error::InvalidProgram;
    }
  }
  // The images live in buffers init frees; nothing reads them after load.
  for (KernelDesc& k : s->payload.kernels) {
    k.cubins.clear();
    k.ptx = ImageView();
  }
  return Error::Ok;
}

class CudaGqaBackend final : public BackendInterface {
 public:
  // The real availability (driver, device, arch) is reported by init with
  // its cause; answering false here would only say "not available".
  bool is_available() const override { return true; }

  Result<DelegateHandle*> init(BackendInitContext& context, FreeableBuffer* processed,
                               ArrayRef<CompileSpec> compile_specs) const override {
    (void)compile_specs;
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
      std::vector<uint64_t> aligned_copy;  // read by set_up_device, below
      if (!parse_payload(processed->data(), processed->size(), &aligned_copy, &state->payload, &why)) {
        // A payload from another schema version is well-formed but foreign.
        err = state->payload.version != 0 && state->payload.version != kPayloadVersion
                  ? Error::DelegateInvalidCompatibility
                  : Error::InvalidProgram;
      } else {
        err = set_up_device(state, context.get_named_data_map(), &why);
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
    ET_LOG(Info, "CudaGqaBackend: %zu kernel(s) loaded for sm_%d", state->modules.size(),
           state->compute_capability);
    return static_cast<DelegateHandle*>(state);
  }

  Error execute(BackendExecutionContext& context, DelegateHandle* handle,
                Span<EValue*> args) const override {
    (void)context;
    ET_CHECK_OR_RETURN_ERROR(handle != nullptr, InvalidState, "CudaGqaBackend: null handle");
    auto* s = static_cast<DelegateState*>(handle);
    const CudaDriver& d = *s->driver;
    const size_t num_inputs = s->payload.inputs.size();
    const size_t num_args = s->payload.num_args();
    ET_CHECK_OR_RETURN_ERROR(args.size() == num_args, InvalidArgument,
                             "CudaGqaBackend: %zu delegate args, the payload expects %zu",
                             args.size(), num_args);
    for (size_t i = 0; i < num_args; ++i) {
      ET_CHECK_OR_RETURN_ERROR(args[i] != nullptr && args[i]->isTensor(), InvalidArgument,
                               "CudaGqaBackend: delegate arg %zu is not a tensor", i);
      const Tensor& t = args[i]->toTensor();
      ArgDesc& a = s->arg_descs[i];
      describe_tensor(t, s->staging[i].ptr, &a);
      if (!check_arg(s->payload.arg_spec(i), a, i, num_inputs, &s->error)) {
        ET_LOG(Error, "CudaGqaBackend: %s", s->error.c_str());
        return Error::InvalidArgument;
      }
      ET_CHECK_OR_RETURN_ERROR(t.nbytes() == s->staging[i].bytes, InvalidArgument,
                               "CudaGqaBackend: delegate arg %zu has %zu bytes, expected %zu", i,
                               t.nbytes(), s->staging[i].bytes);
      ET_CHECK_OR_RETURN_ERROR(t.nbytes() == 0 || t.const_data_ptr() != nullptr, InvalidArgument,
                               "CudaGqaBackend: delegate arg %zu has no data", i);
    }
    // Execute may run on another thread than init.
    CUresult r = d.CtxSetCurrent(s->context);
    if (r != CUDA_SUCCESS) {
      ET_LOG(Error, "CudaGqaBackend: cuCtxSetCurrent failed: %s", d.error_string(r).c_str());
      return Error::Internal;
    }
    Error err = Error::Ok;
    for (size_t i = 0; i < num_inputs && err == Error::Ok; ++i) {
      if (s->staging[i].bytes == 0) continue;
      r = d.MemcpyHtoDAsync(s->staging[i].ptr, args[i]->toTensor().const_data_ptr(),
                            s->staging[i].bytes, s->stream);
      if (r != CUDA_SUCCESS) {
        ET_LOG(Error, "CudaGqaBackend: copying input %zu to the device failed: %s", i,
               d.error_string(r).c_str());
        err = Error::Internal;
      }
    }
    for (size_t k = 0; k < s->launchers.size() && err == Error::Ok; ++k) {
      err = s->launchers[k].launch(d, s->stream, s->arg_descs.data(), num_args);
    }
    for (size_t i = num_inputs; i < num_args && err == Error::Ok; ++i) {
      if (s->staging[i].bytes == 0) continue;
      r = d.MemcpyDtoHAsync(args[i]->toTensor().mutable_data_ptr(), s->staging[i].ptr,
                            s->staging[i].bytes, s->stream);
      if (r != CUDA_SUCCESS) {
        ET_LOG(Error, "CudaGqaBackend: copying output %zu to the host failed: %s",
               i - num_inputs, d.error_string(r).c_str());
        err = Error::Internal;
      }
    }
    // Always wait: copies already enqueued read or write host memory the
    // caller owns, even when a later step failed.
    r = d.StreamSynchronize(s->stream);
    if (r != CUDA_SUCCESS) {
      ET_LOG(Error, "CudaGqaBackend: kernel execution failed: %s", d.error_string(r).c_str());
      if (err == Error::Ok) err = Error::Internal;
    }
    return err;
  }

  void destroy(DelegateHandle* handle) const override {
    delete static_cast<DelegateState*>(handle);
  }
};

CudaGqaBackend g_backend;
const executorch::runtime::Backend g_backend_entry{"CudaGqaBackend", &g_backend};
// Registration happens when the library is loaded; the result is kept only
// so the initializer cannot be discarded.
const Error g_registered = executorch::runtime::register_backend(g_backend_entry);

}  // namespace
}  // namespace cuda_gqa
