// The CUDA DeviceAllocator of ExecuTorch's device-aware memory planning,
// registered when the library is loaded: programs exported with a
// "target_device" compile spec (PropagateDevicePass) get their delegate
// inputs and outputs planned in GPU memory, allocated here, and filled and
// read by the et_copy kernels through the copies below. Everything goes
// through the driver API in the device's primary context, the one the
// delegates use. The copies first wait for all work in that context: a
// delegate running with "synchronize" false may still be writing an output
// (or reading an input) on its own stream, which the copies' stream does not
// wait for.
#include <executorch/runtime/core/device_allocator.h>
#include <executorch/runtime/platform/log.h>

#include <mutex>
#include <string>

#include "cuda_driver.h"

namespace cuda_gqa {
namespace {

using executorch::runtime::DeviceAllocator;
using executorch::runtime::Error;
using executorch::runtime::Result;
using executorch::runtime::etensor::DeviceIndex;
using executorch::runtime::etensor::DeviceType;

constexpr int kMaxDevices = 64;
// cuMemAlloc's alignment.
constexpr size_t kAllocAlignment = 256;

class CudaDeviceAllocator final : public DeviceAllocator {
 public:
  Result<void*> allocate(size_t nbytes, DeviceIndex index, size_t alignment) override {
    const CudaDriver* d = make_current(index);
    if (d == nullptr) return Error::NotSupported;
    if (alignment > kAllocAlignment || (alignment & (alignment - 1)) != 0) {
      ET_LOG(Error, "CudaGqaBackend: device allocator: alignment %zu (at most %zu, a power of two)",
             alignment, kAllocAlignment);
      return Error::InvalidArgument;
    }
    CUdeviceptr ptr = 0;
    const CUresult r = d->MemAlloc(&ptr, nbytes > 0 ? nbytes : 1);
    if (r != CUDA_SUCCESS) {
      ET_LOG(Error, "CudaGqaBackend: device allocator: cuMemAlloc(%zu bytes) on cuda:%d failed: %s",
             nbytes, static_cast<int>(index), d->error_string(r).c_str());
      return Error::MemoryAllocationFailed;
    }
    return reinterpret_cast<void*>(static_cast<uintptr_t>(ptr));
  }

  void deallocate(void* ptr, DeviceIndex index) override {
    const CudaDriver* d = ptr != nullptr ? make_current(index) : nullptr;
    if (d == nullptr) return;
    const CUresult r = d->MemFree(static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(ptr)));
    if (r != CUDA_SUCCESS) {
      ET_LOG(Error, "CudaGqaBackend: device allocator: cuMemFree on cuda:%d failed: %s",
             static_cast<int>(index), d->error_string(r).c_str());
    }
  }

  Error copy_host_to_device(void* dst, const void* src, size_t nbytes, DeviceIndex index) override {
    const CudaDriver* d = make_current(index);
    if (d == nullptr) return Error::NotSupported;
    if (!wait_for_context(*d)) return Error::Internal;
    const CUresult r = d->MemcpyHtoD(static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(dst)), src, nbytes);
    if (r != CUDA_SUCCESS) {
      ET_LOG(Error, "CudaGqaBackend: device allocator: cuMemcpyHtoD(%zu bytes) failed: %s", nbytes,
             d->error_string(r).c_str());
      return Error::Internal;
    }
    return Error::Ok;
  }

  Error copy_device_to_host(void* dst, const void* src, size_t nbytes, DeviceIndex index) override {
    const CudaDriver* d = make_current(index);
    if (d == nullptr) return Error::NotSupported;
    if (!wait_for_context(*d)) return Error::Internal;
    const CUresult r =
        d->MemcpyDtoH(dst, static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(src)), nbytes);
    if (r != CUDA_SUCCESS) {
      ET_LOG(Error, "CudaGqaBackend: device allocator: cuMemcpyDtoH(%zu bytes) failed: %s", nbytes,
             d->error_string(r).c_str());
      return Error::Internal;
    }
    return Error::Ok;
  }

  DeviceType device_type() const override { return DeviceType::CUDA; }

 private:
  static bool wait_for_context(const CudaDriver& d) {
    const CUresult r = d.CtxSynchronize();
    if (r != CUDA_SUCCESS) {
      ET_LOG(Error, "CudaGqaBackend: device allocator: cuCtxSynchronize failed: %s",
             d.error_string(r).c_str());
      return false;
    }
    return true;
  }

  // The driver with device `index`'s primary context current on this
  // thread (retained once per device, for the life of the process), or
  // nullptr after logging why not.
  const CudaDriver* make_current(DeviceIndex index) {
    std::string why;
    const CudaDriver* d = nullptr;
    CUdevice device = 0;
    int cc = 0;
    if (index < 0 || index >= kMaxDevices || !cuda_device_at(index, &d, &device, &cc, &why)) {
      ET_LOG(Error, "CudaGqaBackend: device allocator: cuda:%d: %s", static_cast<int>(index),
             why.empty() ? "device index out of range" : why.c_str());
      return nullptr;
    }
    CUcontext context = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (contexts_[index] == nullptr) {
        const CUresult r = d->DevicePrimaryCtxRetain(&contexts_[index], device);
        if (r != CUDA_SUCCESS) {
          contexts_[index] = nullptr;
          ET_LOG(Error, "CudaGqaBackend: device allocator: cuDevicePrimaryCtxRetain failed: %s",
                 d->error_string(r).c_str());
          return nullptr;
        }
      }
      context = contexts_[index];
    }
    const CUresult r = d->CtxSetCurrent(context);
    if (r != CUDA_SUCCESS) {
      ET_LOG(Error, "CudaGqaBackend: device allocator: cuCtxSetCurrent failed: %s",
             d->error_string(r).c_str());
      return nullptr;
    }
    return d;
  }

  std::mutex mutex_;
  CUcontext contexts_[kMaxDevices] = {};
};

CudaDeviceAllocator g_allocator;

// Registers unless another library already handles CUDA memory (a second
// registration would abort the process).
bool register_cuda_allocator() {
  auto& registry = executorch::runtime::DeviceAllocatorRegistry::instance();
  if (registry.get_allocator(DeviceType::CUDA) != nullptr) return false;
  registry.register_allocator(&g_allocator);
  return true;
}

const bool g_allocator_registered = register_cuda_allocator();

}  // namespace
}  // namespace cuda_gqa
