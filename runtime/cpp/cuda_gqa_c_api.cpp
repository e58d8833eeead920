#include "cuda_gqa_c_api.h"

#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "cuda_driver.h"
#include "kernel_module.h"
#include "launcher.h"
#include "payload.h"

namespace {

void write_message(const std::string& text, char* message, size_t message_size) {
  if (message == nullptr || message_size == 0) return;
  const size_t n = text.size() < message_size - 1 ? text.size() : message_size - 1;
  std::memcpy(message, text.data(), n);
  message[n] = '\0';
}

// Parses into *payload (aligned copy in *storage if needed); on failure writes
// the reason into `message`.
bool parse_or_report(const void* data, size_t size, std::vector<uint64_t>* storage,
                     cuda_gqa::PayloadDesc* payload, char* message, size_t message_size) {
  std::string error;
  if (cuda_gqa::parse_payload(data, size, storage, payload, &error)) return true;
  write_message(error, message, message_size);
  return false;
}

}  // namespace

extern "C" {

int cuda_gqa_payload_version(void) { return static_cast<int>(cuda_gqa::kPayloadVersion); }

int cuda_gqa_validate_payload(const void* data, size_t size, char* message,
                              size_t message_size) {
  try {
    std::vector<uint64_t> storage;
    cuda_gqa::PayloadDesc payload;
    if (!parse_or_report(data, size, &storage, &payload, message, message_size)) return 1;
    write_message("ok", message, message_size);
    return 0;
  } catch (const std::bad_alloc&) {
    write_message("out of host memory", message, message_size);
  } catch (...) {
    write_message("unexpected exception", message, message_size);
  }
  return 2;
}

int cuda_gqa_device_status(char* message, size_t message_size) {
  try {
    const cuda_gqa::CudaDriver* driver = nullptr;
    CUdevice device = 0;
    int cc = 0;
    std::string text;
    const bool ok = cuda_gqa::cuda_first_device(&driver, &device, &cc, &text);
    write_message(text, message, message_size);
    return ok ? 0 : 1;
  } catch (...) {
    write_message("unexpected exception", message, message_size);
  }
  return 2;
}

int cuda_gqa_select_images(const void* data, size_t size, int device_cc, char* message,
                           size_t message_size) {
  try {
    std::vector<uint64_t> storage;
    cuda_gqa::PayloadDesc payload;
    if (!parse_or_report(data, size, &storage, &payload, message, message_size)) return 1;
    cuda_gqa::use_arch_variant(&payload, device_cc);
    std::string error;
    std::string choices;
    for (const cuda_gqa::KernelDesc& k : payload.kernels) {
      cuda_gqa::ImageChoice choice;
      if (!cuda_gqa::select_image(k, device_cc, &choice, &error)) {
        write_message("kernel " + k.name + ": " + error, message, message_size);
        return 1;
      }
      if (!choices.empty()) choices += "; ";
      choices += k.name + ": " +
                 (choice.is_ptx ? std::string("PTX")
                                : "sm_" + std::to_string(choice.image->arch) + " cubin");
    }
    write_message(choices, message, message_size);
    return 0;
  } catch (...) {
    write_message("unexpected exception", message, message_size);
  }
  return 2;
}

int cuda_gqa_evaluate_launch(const void* data, size_t size, int device_cc, size_t kernel_index,
                             size_t num_args,
                             const int32_t* dtypes, const char* const* dtype_labels,
                             const uint32_t* ranks, const int64_t* sizes, const int64_t* strides,
                             const uint64_t* addresses, uint64_t global_scratch,
                             uint64_t profile_scratch, uint64_t workspace, uint32_t* launch,
                             uint64_t* param_values,
                             size_t max_params, size_t* num_params, char* message,
                             size_t message_size) {
  static_assert(CUDA_GQA_MAX_RANK == cuda_gqa::kMaxRank, "CUDA_GQA_MAX_RANK");
  try {
    if (launch == nullptr || num_params == nullptr ||
        (num_args > 0 && (dtypes == nullptr || ranks == nullptr || sizes == nullptr ||
                          strides == nullptr || addresses == nullptr))) {
      write_message("null buffer", message, message_size);
      return CUDA_GQA_EVAL_INTERNAL;
    }
    std::vector<uint64_t> storage;
    cuda_gqa::PayloadDesc payload;
    if (!parse_or_report(data, size, &storage, &payload, message, message_size)) {
      return CUDA_GQA_EVAL_BAD_PAYLOAD;
    }
    std::string error;
    cuda_gqa::use_arch_variant(&payload, device_cc);
    if (kernel_index >= payload.kernels.size()) {
      write_message("kernel " + std::to_string(kernel_index) + " out of range (" +
                        std::to_string(payload.kernels.size()) + " kernels)",
                    message, message_size);
      return CUDA_GQA_EVAL_BAD_PAYLOAD;
    }
    const cuda_gqa::KernelDesc& k = payload.kernels[kernel_index];
    // What init decides: scratch room.
    cuda_gqa::ScratchDesc scratch;
    if (k.global_scratch_bytes > 0 || k.profile_scratch_bytes > 0) {
      if (!cuda_gqa::static_grid_ctas(payload, k, &scratch.ctas, &error)) {
        write_message(error, message, message_size);
        return CUDA_GQA_EVAL_BAD_PAYLOAD;
      }
      if (scratch.ctas > 0) {
        if (k.global_scratch_bytes > 0) scratch.global = global_scratch;
        if (k.profile_scratch_bytes > 0) scratch.profile = profile_scratch;
      }
    }
    // The workspace exists only when the payload asks for one.
    if (payload.workspace_bytes > 0) scratch.workspace = workspace;
    if (!cuda_gqa::check_scratch(k, scratch, &error)) {
      write_message(error, message, message_size);
      return CUDA_GQA_EVAL_BAD_PAYLOAD;
    }
    // What execute checks, then the launch itself.
    if (num_args != payload.num_args()) {
      write_message(std::to_string(num_args) + " delegate args, the payload expects " +
                        std::to_string(payload.num_args()),
                    message, message_size);
      return CUDA_GQA_EVAL_REFUSED;
    }
    std::vector<cuda_gqa::ArgDesc> args(num_args);
    for (size_t i = 0; i < num_args; ++i) {
      cuda_gqa::ArgDesc& a = args[i];
      a.dtype = dtypes[i] >= 0 && dtypes[i] <= static_cast<int>(cuda_gqa::kLastDType)
                    ? dtypes[i]
                    : -1;
      a.dtype_label = dtype_labels != nullptr ? dtype_labels[i] : nullptr;
      a.foreign_dtype_code = dtypes[i];
      a.rank = ranks[i];
      for (size_t d = 0; d < a.rank && d < cuda_gqa::kMaxRank; ++d) {
        a.sizes[d] = sizes[i * CUDA_GQA_MAX_RANK + d];
        a.strides[d] = strides[i * CUDA_GQA_MAX_RANK + d];
      }
      a.address = addresses[i];
      if (!cuda_gqa::check_arg(payload.arg_spec(i), a, i, payload.inputs.size(), &error)) {
        write_message(error, message, message_size);
        return CUDA_GQA_EVAL_REFUSED;
      }
    }
    std::vector<uint64_t> values(k.params.size(), 0);
    cuda_gqa::LaunchConfig config;
    if (cuda_gqa::evaluate_launch(k, args.data(), num_args, scratch, values.data(), &config,
                                  &error) != executorch::runtime::Error::Ok) {
      write_message(error, message, message_size);
      return CUDA_GQA_EVAL_REFUSED;
    }
    for (int g = 0; g < 3; ++g) launch[g] = config.grid[g];
    launch[3] = config.block;
    launch[4] = config.shared_mem_bytes;
    *num_params = values.size();
    for (size_t i = 0; i < values.size() && i < max_params && param_values != nullptr; ++i) {
      param_values[i] = values[i];
    }
    write_message("ok", message, message_size);
    return CUDA_GQA_EVAL_OK;
  } catch (const std::bad_alloc&) {
    write_message("out of host memory", message, message_size);
  } catch (...) {
    write_message("unexpected exception", message, message_size);
  }
  return CUDA_GQA_EVAL_INTERNAL;
}

}  // extern "C"
