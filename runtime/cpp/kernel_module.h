// Picks the compiled image of a kernel that fits the device and loads it.
#pragma once

#include <string>
#include <vector>

#include "cuda_driver.h"
#include "payload.h"

namespace cuda_gqa {

struct ImageChoice {
  const ImageView* image = nullptr;
  bool is_ptx = false;
};

// Exact cubin for `device_cc` (major*10+minor); else the highest cubin of the
// same major with minor <= the device's (binary compatible); else the PTX if
// device_cc >= ptx_arch; else false with a message listing what the payload
// has, e.g. "no cubin for sm_75 in this payload (has sm_80, sm_90; PTX needs
// >= sm_80)". Pure logic: no driver calls.
bool select_image(const KernelDesc& kernel, int device_cc, ImageChoice* out,
                  std::string* error);

struct ModuleCacheEntry;

struct LoadedKernel {
  CUmodule module = nullptr;
  CUfunction function = nullptr;
  uint32_t arch = 0;
  bool from_ptx = false;
  ModuleCacheEntry* entry = nullptr;  // the shared module this refers to
};

// Loads the chosen image (the driver JIT-compiles PTX), looks up the entry
// point and opts in to dynamic shared memory above 48 KiB, or shares the
// module an earlier call loaded in `context` from the same image for the
// same entry point, warps and shared memory. The process-wide cache is
// guarded by a mutex; delegates of several programs and threads share it.
// Requires `context` to be current. On failure nothing stays loaded.
bool acquire_kernel(const CudaDriver& driver, CUcontext context, CUdevice device, int device_cc,
                    const KernelDesc& kernel, LoadedKernel* out, std::string* error);

// Drops this reference; the last one unloads the module. `kernel`'s context
// must be current.
void release_kernel(const CudaDriver& driver, LoadedKernel* kernel);

// Modules loaded now (for tests of sharing).
size_t cached_module_count();

}  // namespace cuda_gqa
