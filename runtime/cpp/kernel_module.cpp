#include "kernel_module.h"

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
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

struct ModuleCacheEntry {
  CUcontext context = nullptr;
  std::string name;
  uint32_t num_warps = 0;
  uint32_t shared_mem_bytes = 0;
  // The loaded image: aligned and NUL-terminated for the loader, kept to
  // recognise the same image in later payloads.
  std::vector<uint64_t> image;
  size_t image_size = 0;
  LoadedKernel loaded;
  size_t references = 0;

  bool matches(CUcontext ctx, const KernelDesc& k, const ImageView& view) const {
    return context == ctx && name == k.name && num_warps == k.num_warps &&
           shared_mem_bytes == k.shared_mem_bytes && image_size == view.size &&
           std::memcmp(image.data(), view.data, view.size) == 0;
  }
};

namespace {

// Never destroyed: delegates may be destroyed from static destructors.
std::mutex& cache_mutex() {
  static auto* m = new std::mutex();
  return *m;
}
std::vector<std::unique_ptr<ModuleCacheEntry>>& cache_entries() {
  static auto* entries = new std::vector<std::unique_ptr<ModuleCacheEntry>>();
  return *entries;
}

// Loads `choice` of `kernel` from the aligned copy `image`.
bool load_kernel(const CudaDriver& driver, CUdevice device, const KernelDesc& kernel,
                 const ImageChoice& choice, const std::vector<uint64_t>& image,
                 LoadedKernel* out, std::string* error) {
  char log[4096] = {0};
  CUjit_option options[] = {CU_JIT_ERROR_LOG_BUFFER,
                            CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void* values[] = {log, reinterpret_cast<void*>(static_cast<uintptr_t>(sizeof(log) - 1))};
  CUmodule module = nullptr;
  CUresult r = driver.ModuleLoadDataEx(&module, const_cast<uint64_t*>(image.data()), 2,
                                       options, values);
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
  r = driver.FuncGetAttribute(&max_threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, function);
  if (r != CUDA_SUCCESS) {
    driver.ModuleUnload(module);
    *error = "kernel " + kernel.name + ": cuFuncGetAttribute(MAX_THREADS_PER_BLOCK) failed: " +
             driver.error_string(r);
    return false;
  }
  if (max_threads < static_cast<int>(32 * kernel.num_warps)) {
    driver.ModuleUnload(module);
    *error = "kernel " + kernel.name + ": needs " + std::to_string(32 * kernel.num_warps) +
             " threads per block, the function allows " + std::to_string(max_threads);
    return false;
  }
  if (kernel.shared_mem_bytes > kDefaultSharedMemLimit) {
    int optin = 0;
    int static_smem = 0;
    r = driver.DeviceGetAttribute(&optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                                  device);
    const char* failed = r != CUDA_SUCCESS ? "cuDeviceGetAttribute(MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)"
                                           : nullptr;
    if (failed == nullptr) {
      r = driver.FuncGetAttribute(&static_smem, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, function);
      if (r != CUDA_SUCCESS) failed = "cuFuncGetAttribute(SHARED_SIZE_BYTES)";
    }
    if (failed != nullptr) {
      driver.ModuleUnload(module);
      *error = "kernel " + kernel.name + ": " + failed + " failed: " + driver.error_string(r);
      return false;
    }
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

}  // namespace

bool acquire_kernel(const CudaDriver& driver, CUcontext context, CUdevice device, int device_cc,
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
  std::lock_guard<std::mutex> lock(cache_mutex());
  auto& entries = cache_entries();
  for (const auto& e : entries) {
    if (e->matches(context, kernel, *choice.image)) {
      ++e->references;
      *out = e->loaded;
      return true;
    }
  }
  auto entry = std::make_unique<ModuleCacheEntry>();
  entry->context = context;
  entry->name = kernel.name;
  entry->num_warps = kernel.num_warps;
  entry->shared_mem_bytes = kernel.shared_mem_bytes;
  // The flatbuffer only guarantees 4-byte alignment of vector data, the ELF
  // loader wants 8, and PTX must be NUL-terminated: copy once, at init.
  entry->image.assign((choice.image->size + 1 + 7) / 8, 0);
  std::memcpy(entry->image.data(), choice.image->data, choice.image->size);
  entry->image_size = choice.image->size;
  if (!load_kernel(driver, device, kernel, choice, entry->image, &entry->loaded, error)) {
    return false;
  }
  entry->loaded.entry = entry.get();
  entry->references = 1;
  *out = entry->loaded;
  entries.push_back(std::move(entry));
  return true;
}

void release_kernel(const CudaDriver& driver, LoadedKernel* kernel) {
  ModuleCacheEntry* const target = kernel->entry;
  *kernel = LoadedKernel();
  if (target == nullptr) return;
  std::lock_guard<std::mutex> lock(cache_mutex());
  auto& entries = cache_entries();
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].get() != target) continue;
    if (--target->references == 0) {
      driver.ModuleUnload(target->loaded.module);
      entries.erase(entries.begin() + static_cast<std::ptrdiff_t>(i));
    }
    return;
  }
}

size_t cached_module_count() {
  std::lock_guard<std::mutex> lock(cache_mutex());
  return cache_entries().size();
}

}  // namespace cuda_gqa
