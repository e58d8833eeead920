// The CUDA driver API, opened with dlopen at run time.
//
// libcuda is never linked so that the backend library builds, loads and
// registers on machines without an NVIDIA driver; the absence of a GPU is
// reported by init() instead of making the whole library fail to load.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <string>

namespace cuda_gqa {

// Entry points the runtime uses. Each is resolved by its exact, versioned
// export name (cuMemAlloc_v2, ...) so the ABI matches the cuda.h types used
// here; cuda.h's own macros would otherwise pick names at compile time.
struct CudaDriver {
  decltype(&::cuGetErrorName) GetErrorName = nullptr;
  decltype(&::cuGetErrorString) GetErrorString = nullptr;
  decltype(&::cuInit) Init = nullptr;
  decltype(&::cuDriverGetVersion) DriverGetVersion = nullptr;
  decltype(&::cuDeviceGetCount) DeviceGetCount = nullptr;
  decltype(&::cuDeviceGet) DeviceGet = nullptr;
  decltype(&::cuDeviceGetName) DeviceGetName = nullptr;
  decltype(&::cuDeviceGetAttribute) DeviceGetAttribute = nullptr;
  decltype(&::cuDevicePrimaryCtxRetain) DevicePrimaryCtxRetain = nullptr;
  decltype(&::cuDevicePrimaryCtxRelease_v2) DevicePrimaryCtxRelease = nullptr;
  decltype(&::cuCtxSetCurrent) CtxSetCurrent = nullptr;
  decltype(&::cuCtxSynchronize) CtxSynchronize = nullptr;
  decltype(&::cuStreamCreate) StreamCreate = nullptr;
  decltype(&::cuStreamDestroy_v2) StreamDestroy = nullptr;
  decltype(&::cuStreamSynchronize) StreamSynchronize = nullptr;
  decltype(&::cuStreamGetCtx) StreamGetCtx = nullptr;
  decltype(&::cuEventCreate) EventCreate = nullptr;
  decltype(&::cuEventDestroy_v2) EventDestroy = nullptr;
  decltype(&::cuEventRecord) EventRecord = nullptr;
  // cuEventElapsedTime_v2 where the driver has it (12.8+), else the original
  // of the same signature.
  decltype(&::cuEventElapsedTime_v2) EventElapsedTime = nullptr;
  decltype(&::cuLaunchHostFunc) LaunchHostFunc = nullptr;
  decltype(&::cuMemAlloc_v2) MemAlloc = nullptr;
  decltype(&::cuMemFree_v2) MemFree = nullptr;
  decltype(&::cuMemsetD8_v2) MemsetD8 = nullptr;
  decltype(&::cuMemcpyHtoD_v2) MemcpyHtoD = nullptr;
  decltype(&::cuMemcpyDtoH_v2) MemcpyDtoH = nullptr;
  decltype(&::cuMemcpyHtoDAsync_v2) MemcpyHtoDAsync = nullptr;
  decltype(&::cuMemcpyDtoHAsync_v2) MemcpyDtoHAsync = nullptr;
  decltype(&::cuModuleLoadDataEx) ModuleLoadDataEx = nullptr;
  decltype(&::cuModuleUnload) ModuleUnload = nullptr;
  decltype(&::cuModuleGetFunction) ModuleGetFunction = nullptr;
  decltype(&::cuFuncSetAttribute) FuncSetAttribute = nullptr;
  decltype(&::cuFuncGetAttribute) FuncGetAttribute = nullptr;
  decltype(&::cuLaunchKernel) LaunchKernel = nullptr;

  // Optional: the graph API (launch_graph.h). Resolved by the names whose
  // ABI matches cuda.h's types: the _v2 kernel-node calls take
  // CUDA_KERNEL_NODE_PARAMS_v2 (CUDA 12.0+; the unversioned exports take the
  // shorter v1 struct), cuGraphInstantiateWithFlags (11.4+; the unversioned
  // cuGraphInstantiate had another signature before 12.0). All null unless
  // every one resolves: has_graphs() then says false and the kernels are
  // launched one by one.
  decltype(&::cuGraphCreate) GraphCreate = nullptr;
  decltype(&::cuGraphDestroy) GraphDestroy = nullptr;
  decltype(&::cuGraphAddKernelNode_v2) GraphAddKernelNode = nullptr;
  decltype(&::cuGraphInstantiateWithFlags) GraphInstantiateWithFlags = nullptr;
  decltype(&::cuGraphExecKernelNodeSetParams_v2) GraphExecKernelNodeSetParams = nullptr;
  decltype(&::cuGraphLaunch) GraphLaunch = nullptr;
  decltype(&::cuGraphExecDestroy) GraphExecDestroy = nullptr;
  bool has_graphs() const { return GraphLaunch != nullptr; }

  // Optional, each on its own: programmatic dependent launch (launcher.h).
  // cuLaunchKernelEx (CUDA 12.0+) launches a kernel with the programmatic
  // stream serialization attribute; cuGraphAddDependencies_v2 (12.3+; the
  // unversioned export takes no edge data) joins two kernel nodes with a
  // programmatic edge. Null: kernels are launched, and graph nodes joined,
  // the ordinary way.
  decltype(&::cuLaunchKernelEx) LaunchKernelEx = nullptr;
  decltype(&::cuGraphAddDependencies_v2) GraphAddDependencies = nullptr;

  // "CUDA_ERROR_X (description)", or the number if the driver does not know it.
  std::string error_string(CUresult result) const;
};

enum class DriverStatus {
  kOk,
  kLibraryMissing,   // libcuda.so.1 could not be opened
  kSymbolMissing,    // the driver is too old for an entry point we use
  kInitFailed,       // cuInit returned an error (CUDA_ERROR_NO_DEVICE, ...)
};

// Opens libcuda.so.1, resolves the entry points and calls cuInit, once per
// process (thread-safe). Returns the driver, or nullptr with *status and
// *message set to the cause. The driver stays loaded for the process lifetime.
const CudaDriver* cuda_driver(DriverStatus* status = nullptr,
                              std::string* message = nullptr);

// Device `index` and a description ("NVIDIA H100 80GB HBM3, sm_90"), or
// false with the reason (driver missing, cuInit failure, no such device).
bool cuda_device_at(int index, const CudaDriver** driver, CUdevice* device,
                    int* compute_capability, std::string* message);

// Compute capability of `device` as major*10+minor, or -1 on failure.
int cuda_compute_capability(const CudaDriver& driver, CUdevice device);

}  // namespace cuda_gqa
