#include "state_registry.h"

#include <executorch/runtime/platform/log.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace cuda_gqa {
namespace {

// States and constants live in separate namespaces of one registry.
enum class BufferKind { kState, kConstant };

const char* kind_name(BufferKind kind) { return kind == BufferKind::kState ? "state" : "constant"; }

struct BufferKey {
  BufferKind kind;
  const void* owner;
  int device;
  std::string name;
  bool operator<(const BufferKey& o) const {
    return std::tie(kind, owner, device, name) < std::tie(o.kind, o.owner, o.device, o.name);
  }
};

struct SharedBuffer {
  const CudaDriver* driver = nullptr;
  CUcontext context = nullptr;
  CUdeviceptr address = 0;
  size_t bytes = 0;
  TensorSpecDesc spec;
  size_t references = 0;
};

std::mutex g_buffers_mutex;
std::map<BufferKey, SharedBuffer> g_buffers;

// Fills a new buffer of `bytes` at `address`; false with *error.
using Fill = std::function<bool(CUdeviceptr address, size_t bytes, std::string* error)>;

// Zero through synchronous host-to-device copies of a zero block (the driver
// table needs no memset entry point for this one-off at init).
bool zero_device(const CudaDriver& d, CUdeviceptr address, size_t bytes, std::string* error) {
  static const std::vector<uint8_t> zeros(size_t{1} << 20, 0);
  for (size_t done = 0; done < bytes;) {
    const size_t n = std::min(zeros.size(), bytes - done);
    const CUresult r = d.MemcpyHtoD(address + done, zeros.data(), n);
    if (r != CUDA_SUCCESS) {
      *error = "zeroing it failed: cuMemcpyHtoD: " + d.error_string(r);
      return false;
    }
    done += n;
  }
  return true;
}

std::string describe(const TensorSpecDesc& spec) {
  std::string s = std::string(dtype_name(spec.dtype)) + "[";
  for (size_t i = 0; i < spec.sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(spec.sizes[i]);
  return s + "]";
}

// A new buffer for `spec`, filled by `fill`; false with *error (nothing left allocated).
bool create_buffer(const CudaDriver& driver, CUcontext context, const BufferKey& key,
                   const TensorSpecDesc& spec, const Fill& fill, SharedBuffer* out, std::string* error) {
  const std::string what = std::string(kind_name(key.kind)) + " '" + key.name + "'";
  out->driver = &driver;
  out->context = context;
  out->spec = spec;
  out->bytes = static_cast<size_t>(spec.max_numel()) * dtype_size(spec.dtype);
  // An empty buffer has no address, but is still filled (a constant's named data is checked).
  const CUresult r = out->bytes > 0 ? driver.MemAlloc(&out->address, out->bytes) : CUDA_SUCCESS;
  if (r != CUDA_SUCCESS) {
    *error = what + " (" + std::to_string(out->bytes) + " bytes): cuMemAlloc failed: " + driver.error_string(r);
    return false;
  }
  if (!fill(out->address, out->bytes, error)) {
    *error = what + ": " + *error;
    if (out->address != 0) driver.MemFree(out->address);
    return false;
  }
  return true;
}

bool acquire_buffer(const CudaDriver& driver, CUcontext context, const BufferKey& key,
                    const TensorSpecDesc& spec, const Fill& fill, CUdeviceptr* address, bool* mismatch,
                    std::string* error) {
  *mismatch = false;
  std::lock_guard<std::mutex> lock(g_buffers_mutex);
  auto found = g_buffers.find(key);
  if (found != g_buffers.end()) {
    SharedBuffer& b = found->second;
    if (b.spec.dtype != spec.dtype || b.spec.sizes != spec.sizes) {
      *error = std::string(kind_name(key.kind)) + " '" + key.name + "' is " + describe(spec) + " here but " +
               describe(b.spec) + " in another delegate of this program";
      *mismatch = true;
      return false;
    }
    ++b.references;
    *address = b.address;
    return true;
  }
  SharedBuffer b;
  if (!create_buffer(driver, context, key, spec, fill, &b, error)) return false;
  b.references = 1;
  *address = b.address;
  g_buffers.emplace(key, b);
  return true;
}

void release_buffer(const CudaDriver& driver, const BufferKey& key) {
  std::lock_guard<std::mutex> lock(g_buffers_mutex);
  auto found = g_buffers.find(key);
  if (found == g_buffers.end() || --found->second.references > 0) return;
  if (found->second.address != 0) {
    const CUresult r = driver.MemFree(found->second.address);
    if (r != CUDA_SUCCESS) {
      ET_LOG(Error, "CudaGqaBackend: destroy: cuMemFree of %s '%s' failed: %s", kind_name(key.kind),
             key.name.c_str(), driver.error_string(r).c_str());
    }
  }
  g_buffers.erase(found);
}

size_t live_count(BufferKind kind) {
  std::lock_guard<std::mutex> lock(g_buffers_mutex);
  size_t n = 0;
  for (const auto& entry : g_buffers) n += entry.first.kind == kind;
  return n;
}

}  // namespace

bool acquire_state(const CudaDriver& driver, CUcontext context, const void* owner, int device,
                   const StateSpecDesc& spec, CUdeviceptr* address, bool* mismatch,
                   std::string* error) {
  const Fill zero = [&driver](CUdeviceptr a, size_t n, std::string* e) { return zero_device(driver, a, n, e); };
  return acquire_buffer(driver, context, BufferKey{BufferKind::kState, owner, device, spec.name}, spec.spec, zero,
                        address, mismatch, error);
}

void release_state(const CudaDriver& driver, const void* owner, int device, const std::string& name) {
  release_buffer(driver, BufferKey{BufferKind::kState, owner, device, name});
}

bool zero_all_states(std::string* error) {
  std::lock_guard<std::mutex> lock(g_buffers_mutex);
  for (const auto& entry : g_buffers) {
    const SharedBuffer& b = entry.second;
    if (entry.first.kind != BufferKind::kState || b.bytes == 0) continue;
    const CUresult r = b.driver->CtxSetCurrent(b.context);
    if (r != CUDA_SUCCESS) {
      *error = "state '" + entry.first.name + "': cuCtxSetCurrent failed: " + b.driver->error_string(r);
      return false;
    }
    if (!zero_device(*b.driver, b.address, b.bytes, error)) {
      *error = "state '" + entry.first.name + "': " + *error;
      return false;
    }
  }
  return true;
}

size_t live_state_count() { return live_count(BufferKind::kState); }

bool acquire_constant(const CudaDriver& driver, CUcontext context, const void* owner, int device,
                      const ConstantSpecDesc& spec, const ConstantUpload& upload, CUdeviceptr* address,
                      bool* mismatch, std::string* error) {
  return acquire_buffer(driver, context, BufferKey{BufferKind::kConstant, owner, device, spec.name}, spec.spec,
                        upload, address, mismatch, error);
}

void release_constant(const CudaDriver& driver, const void* owner, int device, const std::string& name) {
  release_buffer(driver, BufferKey{BufferKind::kConstant, owner, device, name});
}

size_t live_constant_count() { return live_count(BufferKind::kConstant); }

}  // namespace cuda_gqa
