#include "state_registry.h"

#include <executorch/runtime/platform/log.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace cuda_gqa {
namespace {

struct StateKey {
  const void* owner;
  int device;
  std::string name;
  bool operator<(const StateKey& o) const {
    return std::tie(owner, device, name) < std::tie(o.owner, o.device, o.name);
  }
};

struct StateBuffer {
  const CudaDriver* driver = nullptr;
  CUcontext context = nullptr;
  CUdeviceptr address = 0;
  size_t bytes = 0;
  TensorSpecDesc spec;
  size_t references = 0;
};

std::mutex g_states_mutex;
std::map<StateKey, StateBuffer> g_states;

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

}  // namespace

bool acquire_state(const CudaDriver& driver, CUcontext context, const void* owner, int device,
                   const StateSpecDesc& spec, CUdeviceptr* address, bool* mismatch,
                   std::string* error) {
  *mismatch = false;
  std::lock_guard<std::mutex> lock(g_states_mutex);
  StateKey key{owner, device, spec.name};
  auto found = g_states.find(key);
  if (found != g_states.end()) {
    StateBuffer& b = found->second;
    if (b.spec.dtype != spec.spec.dtype || b.spec.sizes != spec.spec.sizes) {
      *error = "state '" + spec.name + "' is " + describe(spec.spec) + " here but " + describe(b.spec) +
               " in another delegate of this program";
      *mismatch = true;
      return false;
    }
    ++b.references;
    *address = b.address;
    return true;
  }
  StateBuffer b;
  b.driver = &driver;
  b.context = context;
  b.spec = spec.spec;
  b.bytes = static_cast<size_t>(spec.spec.max_numel()) * dtype_size(spec.spec.dtype);
  if (b.bytes > 0) {
    const CUresult r = driver.MemAlloc(&b.address, b.bytes);
    if (r != CUDA_SUCCESS) {
      *error = "state '" + spec.name + "' (" + std::to_string(b.bytes) + " bytes): cuMemAlloc failed: " +
               driver.error_string(r);
      return false;
    }
    if (!zero_device(driver, b.address, b.bytes, error)) {
      *error = "state '" + spec.name + "': " + *error;
      driver.MemFree(b.address);
      return false;
    }
  }
  b.references = 1;
  *address = b.address;
  g_states.emplace(std::move(key), b);
  return true;
}

void release_state(const CudaDriver& driver, const void* owner, int device, const std::string& name) {
  std::lock_guard<std::mutex> lock(g_states_mutex);
  auto found = g_states.find(StateKey{owner, device, name});
  if (found == g_states.end() || --found->second.references > 0) return;
  if (found->second.address != 0) {
    const CUresult r = driver.MemFree(found->second.address);
    if (r != CUDA_SUCCESS) {
      ET_LOG(Error, "CudaGqaBackend: destroy: cuMemFree of state '%s' failed: %s", name.c_str(),
             driver.error_string(r).c_str());
    }
  }
  g_states.erase(found);
}

bool zero_all_states(std::string* error) {
  std::lock_guard<std::mutex> lock(g_states_mutex);
  for (const auto& entry : g_states) {
    const StateBuffer& b = entry.second;
    if (b.bytes == 0) continue;
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

size_t live_state_count() {
  std::lock_guard<std::mutex> lock(g_states_mutex);
  return g_states.size();
}

}  // namespace cuda_gqa
