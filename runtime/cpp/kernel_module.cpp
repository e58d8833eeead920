#include "kernel_module.h"

#include <cstdint>
#include <cstring>
#include <vector>

namespace cuda_gqa {
namespace {

constexpr uint32_t kDefaultSharedMemLimit = 48 * 1024;

std::string sm(uint32_t arch) { return "sm_" + std::to_string(arch); }

}  // namespace

bool select_image(const KernelDesc& kernel, int device_cc, ImageChoice* out,
                  std::string* error) {
  const ImageView* best = nullptr;
  for (const ImageView& c : kernel.cubins) {
    if (static_cast<int>(c.arch) == device_cc) {
      best = &c;
      break;
    }
    // A cubin runs on later minors of its own major only.
    if (static_cast<int>(c.arch) / 10 == device_cc / 10 &&
        static_cast<int>(c.arch) % 10 <= device_cc % 10 &&
        (best == nullptr || c.arch > best->arch)) {
      best = &c;
    }
  }
  if (best != nullptr) {
    *out = {best, false};
    return true;
  }
  if (kernel.ptx.present() && device_cc >= static_cast<int>(kernel.ptx.arch)) {
    *out = {&kernel.ptx, true};
    return true;
  }
  std::string has;
  for (const ImageView& c : kernel.cubins) {
    has += (has.empty() ? "" : ", ") + sm(c.arch);
  }
  if (has.empty()) has = "no cubins";
  const std::string ptx = kernel.ptx.present()
                              ? "PTX needs >= " + sm(kernel.ptx.arch)
                              : std::string("no PTX");
  *error = "no cubin for " + sm(static_cast<uint32_t>(device_cc)) +
           " in this payload (has " + has + "; " + ptx + ")";
  return false;
}

bool load_kernel(const CudaDriver& driver, CUdevice device, int device_cc,
                 const KernelDesc& kernel, LoadedKernel* out, std::string* error) {
  *out = LoadedKernel();
  ImageChoice choice;
  if (!select_image(kernel, device_cc, &choice, error)) {
    *error = "kernel " + kernel.name + ": " + *error;
    return false;
  }
  if (choice.image->size == 0) {
    *error = "kernel " + kernel.name + ": image '" + choice.image->key +
             "' was not fetched from the program's named data";
    return false;
  }
  // The flatbuffer only guarantees 4-byte alignment of vector data, the ELF
  // loader wants 8, and PTX must be NUL-terminated: copy once, at init.
  std::vector<uint64_t> image((choice.image->size + 1 + 7) / 8, 0);
  std::memcpy(image.data(), choice.image->data, choice.image->size);

  char log[4096] = {0};
  CUjit_option options[] = {CU_JIT_ERROR_LOG_BUFFER,
                            CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void* values[] = {log, reinterpret_cast<void*>(static_cast<uintptr_t>(sizeof(log) - 1))};
  CUmodule module = nullptr;
  CUresult r = driver.ModuleLoadDataEx(&module, image.data(), 2, options, values);
  if (r != CUDA_SUCCESS) {
    *error = "kernel " + kernel.name + ": cuModuleLoadData(" +
             (choice.is_ptx ? "PTX" : sm(choice.image->arch) + " cubin") +
             ") failed: " + driver.error_string(r) + (log[0] ? std::string(": ") + log : "");
    return false;
  }
  CUfunction function = nullptr;
  r = driver.ModuleGetFunction(&function, module, kernel.name.c_str());
  if (r != CUDA_SUCCESS) {
    driver.ModuleUnload(module);
    *error = "kernel " + kernel.name + ": entry point not found in the " +
             sm(choice.image->arch) + " image: " + driver.error_string(r);
    return false;
  }
  int max_threads = 0;
  if (driver.FuncGetAttribute(&max_threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
                              function) == CUDA_SUCCESS &&
      max_threads < static_cast<int>(32 * kernel.num_warps)) {
    driver.ModuleUnload(module);
    *error = "kernel " + kernel.name + ": needs " + std::to_string(32 * kernel.num_warps) +
             " threads per block, the function allows " + std::to_string(max_threads);
    return false;
  }
  if (kernel.shared_mem_bytes > kDefaultSharedMemLimit) {
    int optin = 0;
    driver.DeviceGetAttribute(&optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                              device);
    int static_smem = 0;
    driver.FuncGetAttribute(&static_smem, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, function);
    if (static_cast<int64_t>(kernel.shared_mem_bytes) + static_smem > optin) {
      driver.ModuleUnload(module);
      *error = "kernel " + kernel.name + ": needs " +
               std::to_string(kernel.shared_mem_bytes) +
               " bytes of dynamic shared memory, this device allows " +
               std::to_string(optin - static_smem);
      return false;
    }
    r = driver.FuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                static_cast<int>(kernel.shared_mem_bytes));
    if (r != CUDA_SUCCESS) {
      driver.ModuleUnload(module);
      *error = "kernel " + kernel.name +
               ": cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES) failed: " +
               driver.error_string(r);
      return false;
    }
  }
  out->module = module;
  out->function = function;
  out->arch = choice.image->arch;
  out->from_ptx = choice.is_ptx;
  return true;
}

void unload_kernel(const CudaDriver& driver, LoadedKernel* kernel) {
  if (kernel->module != nullptr) driver.ModuleUnload(kernel->module);
  *kernel = LoadedKernel();
}

}  // namespace cuda_gqa
