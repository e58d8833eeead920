#include "cuda_driver.h"

#include <dlfcn.h>

#include <cstdio>

namespace cuda_gqa {
namespace {

struct LoadedDriver {
  CudaDriver api;
  DriverStatus status = DriverStatus::kOk;
  std::string message;
};

// Resolves `name` into `slot`; false (with the name in *missing) if absent.
template <typename Fn>
bool resolve(void* lib, const char* name, Fn* slot, std::string* missing) {
  void* sym = dlsym(lib, name);
  if (sym == nullptr) {
    if (!missing->empty()) missing->append(", ");
    missing->append(name);
    return false;
  }
  *slot = reinterpret_cast<Fn>(sym);
  return true;
}

LoadedDriver* load_driver() {
  auto* d = new LoadedDriver();
  // RTLD_LOCAL: our symbol lookups go through dlsym; nothing else in the
  // process should bind to libcuda through us.
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* err = dlerror();
    d->status = DriverStatus::kLibraryMissing;
    d->message = std::string("libcuda.so.1 not found: ") +
                 (err != nullptr ? err : "dlopen failed");
    return d;
  }
  CudaDriver& a = d->api;
  std::string missing;
  bool ok = true;
  ok &= resolve(lib, "cuGetErrorName", &a.GetErrorName, &missing);
  ok &= resolve(lib, "cuGetErrorString", &a.GetErrorString, &missing);
  ok &= resolve(lib, "cuInit", &a.Init, &missing);
  ok &= resolve(lib, "cuDriverGetVersion", &a.DriverGetVersion, &missing);
  ok &= resolve(lib, "cuDeviceGetCount", &a.DeviceGetCount, &missing);
  ok &= resolve(lib, "cuDeviceGet", &a.DeviceGet, &missing);
  ok &= resolve(lib, "cuDeviceGetName", &a.DeviceGetName, &missing);
  ok &= resolve(lib, "cuDeviceGetAttribute", &a.DeviceGetAttribute, &missing);
  ok &= resolve(lib, "cuDevicePrimaryCtxRetain", &a.DevicePrimaryCtxRetain, &missing);
  ok &= resolve(lib, "cuDevicePrimaryCtxRelease_v2", &a.DevicePrimaryCtxRelease, &missing);
  ok &= resolve(lib, "cuCtxSetCurrent", &a.CtxSetCurrent, &missing);
  ok &= resolve(lib, "cuCtxSynchronize", &a.CtxSynchronize, &missing);
  ok &= resolve(lib, "cuStreamCreate", &a.StreamCreate, &missing);
  ok &= resolve(lib, "cuStreamDestroy_v2", &a.StreamDestroy, &missing);
  ok &= resolve(lib, "cuStreamSynchronize", &a.StreamSynchronize, &missing);
  ok &= resolve(lib, "cuStreamGetCtx", &a.StreamGetCtx, &missing);
  ok &= resolve(lib, "cuEventCreate", &a.EventCreate, &missing);
  ok &= resolve(lib, "cuEventDestroy_v2", &a.EventDestroy, &missing);
  ok &= resolve(lib, "cuEventRecord", &a.EventRecord, &missing);
  ok &= resolve(lib, "cuLaunchHostFunc", &a.LaunchHostFunc, &missing);
  {
    std::string absent;  // either name will do
    if (!resolve(lib, "cuEventElapsedTime_v2", &a.EventElapsedTime, &absent)) {
      ok &= resolve(lib, "cuEventElapsedTime", &a.EventElapsedTime, &missing);
    }
  }
  ok &= resolve(lib, "cuMemAlloc_v2", &a.MemAlloc, &missing);
  ok &= resolve(lib, "cuMemFree_v2", &a.MemFree, &missing);
  ok &= resolve(lib, "cuMemsetD8_v2", &a.MemsetD8, &missing);
  ok &= resolve(lib, "cuMemcpyHtoD_v2", &a.MemcpyHtoD, &missing);
  ok &= resolve(lib, "cuMemcpyDtoH_v2", &a.MemcpyDtoH, &missing);
  ok &= resolve(lib, "cuMemcpyHtoDAsync_v2", &a.MemcpyHtoDAsync, &missing);
  ok &= resolve(lib, "cuMemcpyDtoHAsync_v2", &a.MemcpyDtoHAsync, &missing);
  ok &= resolve(lib, "cuModuleLoadDataEx", &a.ModuleLoadDataEx, &missing);
  ok &= resolve(lib, "cuModuleUnload", &a.ModuleUnload, &missing);
  ok &= resolve(lib, "cuModuleGetFunction", &a.ModuleGetFunction, &missing);
  ok &= resolve(lib, "cuFuncSetAttribute", &a.FuncSetAttribute, &missing);
  ok &= resolve(lib, "cuFuncGetAttribute", &a.FuncGetAttribute, &missing);
  ok &= resolve(lib, "cuLaunchKernel", &a.LaunchKernel, &missing);
  {
    // Optional, all or none: a driver without them launches kernels directly.
    std::string absent;
    bool graphs = true;
    graphs &= resolve(lib, "cuGraphCreate", &a.GraphCreate, &absent);
    graphs &= resolve(lib, "cuGraphDestroy", &a.GraphDestroy, &absent);
    graphs &= resolve(lib, "cuGraphAddKernelNode_v2", &a.GraphAddKernelNode, &absent);
    graphs &= resolve(lib, "cuGraphInstantiateWithFlags", &a.GraphInstantiateWithFlags, &absent);
    graphs &= resolve(lib, "cuGraphExecKernelNodeSetParams_v2", &a.GraphExecKernelNodeSetParams,
                      &absent);
    graphs &= resolve(lib, "cuGraphLaunch", &a.GraphLaunch, &absent);
    graphs &= resolve(lib, "cuGraphExecDestroy", &a.GraphExecDestroy, &absent);
    if (!graphs) {
      a.GraphCreate = nullptr;
      a.GraphDestroy = nullptr;
      a.GraphAddKernelNode = nullptr;
      a.GraphInstantiateWithFlags = nullptr;
      a.GraphExecKernelNodeSetParams = nullptr;
      a.GraphLaunch = nullptr;
      a.GraphExecDestroy = nullptr;
    }
  }
  {
    // Optional, each on its own: absent, that launch is not programmatic.
    std::string absent;
    resolve(lib, "cuLaunchKernelEx", &a.LaunchKernelEx, &absent);
    resolve(lib, "cuGraphAddDependencies_v2", &a.GraphAddDependencies, &absent);
  }
  if (!ok) {
    d->status = DriverStatus::kSymbolMissing;
    d->message = "libcuda.so.1 is too old: it lacks " + missing;
    return d;
  }
  CUresult r = a.Init(0);
  if (r != CUDA_SUCCESS) {
    d->status = DriverStatus::kInitFailed;
    d->message = "cuInit failed: " + a.error_string(r);
    return d;
  }
  return d;
}

}  // namespace

std::string CudaDriver::error_string(CUresult result) const {
  const char* name = nullptr;
  const char* text = nullptr;
  if (GetErrorName == nullptr || GetErrorName(result, &name) != CUDA_SUCCESS ||
      name == nullptr) {
    return "CUresult " + std::to_string(static_cast<int>(result));
  }
  std::string s(name);
  if (GetErrorString != nullptr && GetErrorString(result, &text) == CUDA_SUCCESS &&
      text != nullptr) {
    s.append(" (").append(text).append(")");
  }
  return s;
}

const CudaDriver* cuda_driver(DriverStatus* status, std::string* message) {
  // Magic static: one thread loads, the others wait. Never freed: kernels and
  // contexts may outlive any owner we could pick.
  static LoadedDriver* const driver = load_driver();
  if (status != nullptr) *status = driver->status;
  if (message != nullptr) *message = driver->message;
  return driver->status == DriverStatus::kOk ? &driver->api : nullptr;
}

int cuda_compute_capability(const CudaDriver& driver, CUdevice device) {
  int major = 0, minor = 0;
  if (driver.DeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                                device) != CUDA_SUCCESS ||
      driver.DeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                                device) != CUDA_SUCCESS) {
    return -1;
  }
  return major * 10 + minor;
}

bool cuda_device_at(int index, const CudaDriver** driver_out, CUdevice* device,
                    int* compute_capability, std::string* message) {
  std::string why;
  const CudaDriver* driver = cuda_driver(nullptr, &why);
  if (driver == nullptr) {
    *message = why;
    return false;
  }
  int count = 0;
  CUresult r = driver->DeviceGetCount(&count);
  if (r != CUDA_SUCCESS) {
    *message = "cuDeviceGetCount failed: " + driver->error_string(r);
    return false;
  }
  if (count < 1) {
    *message = "no CUDA device found";
    return false;
  }
  if (index < 0 || index >= count) {
    *message = "no CUDA device " + std::to_string(index) + " (this machine has " +
               std::to_string(count) + ")";
    return false;
  }
  CUdevice dev = 0;
  r = driver->DeviceGet(&dev, index);
  if (r != CUDA_SUCCESS) {
    *message = "cuDeviceGet(" + std::to_string(index) + ") failed: " + driver->error_string(r);
    return false;
  }
  const int cc = cuda_compute_capability(*driver, dev);
  if (cc < 0) {
    *message = "cannot read the compute capability of device " + std::to_string(index);
    return false;
  }
  char name[256] = {0};
  if (driver->DeviceGetName(name, sizeof(name) - 1, dev) != CUDA_SUCCESS) {
    std::snprintf(name, sizeof(name), "device %d", index);
  }
  *message = std::string(name) + ", sm_" + std::to_string(cc);
  *driver_out = driver;
  *device = dev;
  *compute_capability = cc;
  return true;
}

}  // namespace cuda_gqa
