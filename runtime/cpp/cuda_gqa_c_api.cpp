#include "cuda_gqa_c_api.h"

#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/platform/log.h>

#include <atomic>
#include <cstring>
#include <new>
#include <string_view>
#include <string>
#include <vector>

#include "cuda_driver.h"
#include "dtype_map.h"
#include "kernel_module.h"
#include "launcher.h"
#include "state_registry.h"
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
    const bool ok = cuda_gqa::cuda_device_at(0, &driver, &device, &cc, &text);
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
    std::string error;
    if (!cuda_gqa::keep_plans_for_arch(&payload, device_cc, &error)) {
      write_message(error, message, message_size);
      return 1;
    }
    std::string choices;
    for (const cuda_gqa::LaunchPlanDesc& plan : payload.plans) {
      for (const cuda_gqa::KernelDesc& k : plan.kernels) {
        cuda_gqa::ImageChoice choice;
        if (!cuda_gqa::select_image(k, device_cc, &choice, &error)) {
          write_message("kernel " + k.name + ": " + error, message, message_size);
          return 1;
        }
        const std::string text = k.name + ": " +
                                 (choice.is_ptx ? std::string("PTX")
                                                : "sm_" + std::to_string(choice.image->arch) + " cubin");
        // Plans share kernels: name each choice once.
        if (("; " + choices + "; ").find("; " + text + "; ") != std::string::npos) continue;
        if (!choices.empty()) choices += "; ";
        choices += text;
      }
    }
    write_message(choices, message, message_size);
    return 0;
  } catch (...) {
    write_message("unexpected exception", message, message_size);
  }
  return 2;
}

namespace {

// The checks execute runs on `num_args` described args (inputs, outputs,
// then states), then the plan it picks: CUDA_GQA_EVAL_OK with *plan (an index
// into payload->plans, kept for device_cc), or a code with the reason in
// `message`.
int describe_and_select(cuda_gqa::PayloadDesc* payload, int device_cc, size_t num_args,
                        const int32_t* dtypes, const char* const* dtype_labels,
                        const uint32_t* ranks, const int64_t* sizes, const int64_t* strides,
                        const uint64_t* addresses, std::vector<cuda_gqa::ArgDesc>* args,
                        size_t* plan, char* message, size_t message_size) {
  std::string error;
  if (!cuda_gqa::keep_plans_for_arch(payload, device_cc, &error)) {
    write_message(error, message, message_size);
    return CUDA_GQA_EVAL_BAD_PAYLOAD;
  }
  // The evaluator takes every launch argument: the payload's states too.
  if (num_args != payload->num_launch_args()) {
    write_message(std::to_string(num_args) + " delegate args, the payload expects " +
                      std::to_string(payload->num_launch_args()),
                  message, message_size);
    return CUDA_GQA_EVAL_REFUSED;
  }
  args->assign(num_args, cuda_gqa::ArgDesc());
  for (size_t i = 0; i < num_args; ++i) {
    cuda_gqa::ArgDesc& a = (*args)[i];
    a.dtype = dtypes[i] >= 0 && dtypes[i] <= static_cast<int>(cuda_gqa::kLastDType) ? dtypes[i] : -1;
    a.dtype_label = dtype_labels != nullptr ? dtype_labels[i] : nullptr;
    a.foreign_dtype_code = dtypes[i];
    a.rank = ranks[i];
    for (size_t d = 0; d < a.rank && d < cuda_gqa::kMaxRank; ++d) {
      a.sizes[d] = sizes[i * CUDA_GQA_MAX_RANK + d];
      a.strides[d] = strides[i * CUDA_GQA_MAX_RANK + d];
    }
    a.address = addresses[i];
  }
  for (size_t i = 0; i < num_args; ++i) {
    if (!cuda_gqa::check_arg(payload->arg_spec(i), args->data(), i, payload->inputs.size(), &error)) {
      write_message(error, message, message_size);
      return CUDA_GQA_EVAL_REFUSED;
    }
  }
  if (!cuda_gqa::select_plan(*payload, args->data(), num_args, plan, &error)) {
    write_message(error, message, message_size);
    return CUDA_GQA_EVAL_REFUSED;
  }
  return CUDA_GQA_EVAL_OK;
}

bool null_args(size_t num_args, const int32_t* dtypes, const uint32_t* ranks, const int64_t* sizes,
               const int64_t* strides, const uint64_t* addresses) {
  return num_args > 0 && (dtypes == nullptr || ranks == nullptr || sizes == nullptr ||
                          strides == nullptr || addresses == nullptr);
}

}  // namespace

int cuda_gqa_select_plan(const void* data, size_t size, int device_cc, size_t num_args,
                         const int32_t* dtypes, const char* const* dtype_labels,
                         const uint32_t* ranks, const int64_t* sizes, const int64_t* strides,
                         const uint64_t* addresses, size_t* plan_index, size_t* num_kernels,
                         char* message, size_t message_size) {
  try {
    if (plan_index == nullptr || num_kernels == nullptr ||
        null_args(num_args, dtypes, ranks, sizes, strides, addresses)) {
      write_message("null buffer", message, message_size);
      return CUDA_GQA_EVAL_INTERNAL;
    }
    std::vector<uint64_t> storage;
    cuda_gqa::PayloadDesc payload;
    if (!parse_or_report(data, size, &storage, &payload, message, message_size)) {
      return CUDA_GQA_EVAL_BAD_PAYLOAD;
    }
    std::vector<cuda_gqa::ArgDesc> args;
    size_t plan = 0;
    const int rc = describe_and_select(&payload, device_cc, num_args, dtypes, dtype_labels, ranks,
                                       sizes, strides, addresses, &args, &plan, message, message_size);
    if (rc != CUDA_GQA_EVAL_OK) return rc;
    *plan_index = payload.plans[plan].payload_index;
    *num_kernels = payload.plans[plan].kernels.size();
    write_message("ok", message, message_size);
    return CUDA_GQA_EVAL_OK;
  } catch (const std::bad_alloc&) {
    write_message("out of host memory", message, message_size);
  } catch (...) {
    write_message("unexpected exception", message, message_size);
  }
  return CUDA_GQA_EVAL_INTERNAL;
}

int cuda_gqa_evaluate_launch(const void* data, size_t size, int device_cc, size_t kernel_index,
                             size_t num_args,
                             const int32_t* dtypes, const char* const* dtype_labels,
                             const uint32_t* ranks, const int64_t* sizes, const int64_t* strides,
                             const uint64_t* addresses, uint64_t global_scratch,
                             uint64_t profile_scratch, uint64_t workspace, const uint64_t* constants,
                             size_t num_constants, uint32_t* launch,
                             uint64_t* param_values,
                             size_t max_params, size_t* num_params, char* message,
                             size_t message_size) {
  static_assert(CUDA_GQA_MAX_RANK == cuda_gqa::kMaxRank, "CUDA_GQA_MAX_RANK");
  try {
    if (launch == nullptr || num_params == nullptr || (num_constants > 0 && constants == nullptr) ||
        null_args(num_args, dtypes, ranks, sizes, strides, addresses)) {
      write_message("null buffer", message, message_size);
      return CUDA_GQA_EVAL_INTERNAL;
    }
    std::vector<uint64_t> storage;
    cuda_gqa::PayloadDesc payload;
    if (!parse_or_report(data, size, &storage, &payload, message, message_size)) {
      return CUDA_GQA_EVAL_BAD_PAYLOAD;
    }
    std::vector<cuda_gqa::ArgDesc> args;
    size_t plan = 0;
    const int rc = describe_and_select(&payload, device_cc, num_args, dtypes, dtype_labels, ranks,
                                       sizes, strides, addresses, &args, &plan, message, message_size);
    if (rc != CUDA_GQA_EVAL_OK) return rc;
    const std::vector<cuda_gqa::KernelDesc>& kernels = payload.plans[plan].kernels;
    if (kernel_index >= kernels.size()) {
      write_message("kernel " + std::to_string(kernel_index) + " out of range (" +
                        std::to_string(kernels.size()) + " kernels)",
                    message, message_size);
      return CUDA_GQA_EVAL_BAD_PAYLOAD;
    }
    const cuda_gqa::KernelDesc& k = kernels[kernel_index];
    // What init decides: scratch room.
    std::string error;
    cuda_gqa::ScratchDesc scratch;
    if (k.global_scratch_bytes > 0 || k.profile_scratch_bytes > 0) {
      if (!cuda_gqa::bounded_grid_ctas(payload, k, &scratch.ctas, &error)) {
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
    static_assert(sizeof(CUdeviceptr) == sizeof(uint64_t), "constant addresses are passed as uint64");
    scratch.constants = reinterpret_cast<const CUdeviceptr*>(constants);
    scratch.num_constants = num_constants;
    if (!cuda_gqa::check_scratch(k, scratch, &error)) {
      write_message(error, message, message_size);
      return CUDA_GQA_EVAL_BAD_PAYLOAD;
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

namespace {

// A BackendOption whose key is `key`, or false if it does not fit.
bool make_option(const char* key, executorch::runtime::BackendOption* out) {
  if (key == nullptr) return false;
  const size_t n = std::strlen(key);
  if (n >= executorch::runtime::kMaxOptionKeyLength) return false;
  std::memcpy(out->key, key, n + 1);
  return true;
}

}  // namespace

int cuda_gqa_set_option(const char* key, int kind, int int_value, const char* string_value) {
  using executorch::runtime::Error;
  executorch::runtime::BackendOption option;
  if (!make_option(key, &option)) return static_cast<int>(Error::InvalidArgument);
  if (kind == CUDA_GQA_OPTION_BOOL) {
    option.value = int_value != 0;
  } else if (kind == CUDA_GQA_OPTION_INT) {
    option.value = int_value;
  } else if (kind == CUDA_GQA_OPTION_STRING && string_value != nullptr) {
    std::array<char, executorch::runtime::kMaxOptionValueLength> text{};
    std::strncpy(text.data(), string_value, text.size() - 1);
    option.value = text;
  } else {
    return static_cast<int>(Error::InvalidArgument);
  }
  return static_cast<int>(executorch::runtime::set_option(
      "CudaGqaBackend", executorch::runtime::Span<executorch::runtime::BackendOption>(&option, 1)));
}

int cuda_gqa_get_option(const char* key, int kind, int* int_value, char* string_value,
                        size_t string_size) {
  using executorch::runtime::Error;
  executorch::runtime::BackendOption option;
  if (!make_option(key, &option)) return static_cast<int>(Error::InvalidArgument);
  const Error err = executorch::runtime::get_option(
      "CudaGqaBackend", executorch::runtime::Span<executorch::runtime::BackendOption>(&option, 1));
  if (err != Error::Ok) return static_cast<int>(err);
  if (kind == CUDA_GQA_OPTION_BOOL || kind == CUDA_GQA_OPTION_INT) {
    const bool* b = std::get_if<bool>(&option.value);
    const int* i = std::get_if<int>(&option.value);
    if (int_value == nullptr || (kind == CUDA_GQA_OPTION_BOOL ? b == nullptr : i == nullptr)) {
      return static_cast<int>(Error::InvalidArgument);
    }
    *int_value = kind == CUDA_GQA_OPTION_BOOL ? static_cast<int>(*b) : *i;
    return static_cast<int>(Error::Ok);
  }
  const auto* text =
      std::get_if<std::array<char, executorch::runtime::kMaxOptionValueLength>>(&option.value);
  if (kind != CUDA_GQA_OPTION_STRING || text == nullptr) return static_cast<int>(Error::InvalidArgument);
  write_message(text->data(), string_value, string_size);
  return static_cast<int>(Error::Ok);
}

size_t cuda_gqa_loaded_module_count(void) { return cuda_gqa::cached_module_count(); }

size_t cuda_gqa_live_state_count(void) { return cuda_gqa::live_state_count(); }

size_t cuda_gqa_live_constant_count(void) { return cuda_gqa::live_constant_count(); }

int cuda_gqa_zero_states(char* message, size_t message_size) {
  std::string error;
  if (cuda_gqa::zero_all_states(&error)) return 0;
  write_message(error, message, message_size);
  return 1;
}

}  // extern "C"

struct CudaGqaDelegate {
  executorch::runtime::BackendInterface* backend = nullptr;
  executorch::runtime::DelegateHandle* handle = nullptr;
};

namespace {

using executorch::runtime::Error;

// The named data of a CudaGqaProgram: a copy of the caller's entries, handed
// to the backend as ExecuTorch hands a program's. Counts the buffers
// get_data hands out and those not yet freed, so tests see init free them.
class CopiedNamedData final : public executorch::runtime::NamedDataMap {
 public:
  bool assign(const CudaGqaNamedData* entries, size_t n, std::string* why) {
    entries_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const CudaGqaNamedData& e = entries[i];
      if (e.key == nullptr || e.key[0] == '\0' || (e.size > 0 && e.data == nullptr)) {
        *why = "named data entry " + std::to_string(i) + " has no key or no data";
        return false;
      }
      if (find(e.key) != nullptr) {
        *why = std::string("named data key '") + e.key + "' repeats";
        return false;
      }
      entries_[i].key = e.key;
      const auto* bytes = static_cast<const uint8_t*>(e.data);
      entries_[i].data.assign(bytes, bytes + e.size);
    }
    return true;
  }

  executorch::runtime::Result<const executorch::runtime::TensorLayout> get_tensor_layout(
      std::string_view) const override {
    return Error::NotImplemented;
  }

  executorch::runtime::Result<executorch::runtime::FreeableBuffer> get_data(std::string_view key) const override {
    const Entry* e = find(key);
    if (e == nullptr) return Error::NotFound;
    taken_.fetch_add(1);
    held_.fetch_add(1);
    // A non-null pointer for empty entries too, so that Free calls back.
    static const uint8_t kEmpty = 0;
    return executorch::runtime::FreeableBuffer(e->data.empty() ? &kEmpty : e->data.data(), e->data.size(),
                                               &CopiedNamedData::release, const_cast<CopiedNamedData*>(this));
  }

  Error load_data_into(std::string_view key, void* buffer, size_t size) const override {
    const Entry* e = find(key);
    if (e == nullptr) return Error::NotFound;
    if (size > e->data.size()) return Error::InvalidArgument;
    std::memcpy(buffer, e->data.data(), size);
    return Error::Ok;
  }

  executorch::runtime::Result<uint32_t> get_num_keys() const override {
    return static_cast<uint32_t>(entries_.size());
  }

  executorch::runtime::Result<const char*> get_key(uint32_t index) const override {
    if (index >= entries_.size()) return Error::InvalidArgument;
    return entries_[index].key.c_str();  // stable: entries_ never changes after assign
  }

  size_t taken() const { return taken_.load(); }
  size_t held() const { return held_.load(); }

 private:
  struct Entry {
    std::string key;
    std::vector<uint8_t> data;
  };

  const Entry* find(std::string_view key) const {
    for (const Entry& e : entries_) {
      if (e.key == key) return &e;
    }
    return nullptr;
  }

  static void release(void* self, void*, size_t) { static_cast<CopiedNamedData*>(self)->held_.fetch_sub(1); }

  std::vector<Entry> entries_;
  mutable std::atomic<size_t> taken_{0};
  mutable std::atomic<size_t> held_{0};
};

}  // namespace

struct CudaGqaProgram {
  CopiedNamedData named_data;
};

namespace {

using executorch::runtime::Error;

executorch::runtime::BackendInterface* cuda_gqa_backend() {
  return executorch::runtime::get_backend_class("CudaGqaBackend");
}

// An ExecuTorch tensor over a CudaGqaTensor; false (with a log line) if it
// cannot be described.
struct TensorView {
  executorch::aten::SizesType sizes[CUDA_GQA_MAX_RANK];
  executorch::aten::StridesType strides[CUDA_GQA_MAX_RANK];
  executorch::aten::DimOrderType dim_order[CUDA_GQA_MAX_RANK];
};

}  // namespace

namespace {

int init_delegate(const executorch::runtime::NamedDataMap* named_data, const void* payload, size_t size,
                  CudaGqaDelegate** out) {
  if (out == nullptr) return static_cast<int>(Error::InvalidArgument);
  *out = nullptr;
  auto* delegate = new (std::nothrow) CudaGqaDelegate();
  if (delegate == nullptr) return static_cast<int>(Error::MemoryAllocationFailed);
  delegate->backend = cuda_gqa_backend();
  if (delegate->backend == nullptr) {
    delete delegate;
    return static_cast<int>(Error::NotFound);
  }
  // No free function: init reads the caller's bytes during the call only.
  executorch::runtime::FreeableBuffer processed(payload, size, nullptr);
  executorch::runtime::BackendInitContext context(/*runtime_allocator=*/nullptr, /*event_tracer=*/nullptr,
                                                  /*method_name=*/nullptr, named_data);
  auto handle = delegate->backend->init(context, &processed, {});
  if (!handle.ok()) {
    delete delegate;
    return static_cast<int>(handle.error());
  }
  delegate->handle = *handle;
  *out = delegate;
  return static_cast<int>(Error::Ok);
}

}  // namespace

extern "C" {

int cuda_gqa_delegate_init(const void* payload, size_t size, CudaGqaDelegate** out) {
  return init_delegate(nullptr, payload, size, out);
}

int cuda_gqa_delegate_init_in_program(CudaGqaProgram* program, const void* payload, size_t size,
                                      CudaGqaDelegate** out) {
  if (program == nullptr) return static_cast<int>(Error::InvalidArgument);
  return init_delegate(&program->named_data, payload, size, out);
}

CudaGqaProgram* cuda_gqa_program_create(const CudaGqaNamedData* entries, size_t num_entries) {
  if (num_entries > 0 && entries == nullptr) return nullptr;
  auto* program = new (std::nothrow) CudaGqaProgram();
  if (program == nullptr) return nullptr;
  try {
    std::string why;
    if (!program->named_data.assign(entries, num_entries, &why)) {
      ET_LOG(Error, "CudaGqaBackend: cuda_gqa_program_create: %s", why.c_str());
      delete program;
      return nullptr;
    }
  } catch (const std::bad_alloc&) {
    delete program;
    return nullptr;
  }
  return program;
}

void cuda_gqa_program_buffer_counts(const CudaGqaProgram* program, size_t* taken, size_t* held) {
  if (taken != nullptr) *taken = program != nullptr ? program->named_data.taken() : 0;
  if (held != nullptr) *held = program != nullptr ? program->named_data.held() : 0;
}

void cuda_gqa_program_destroy(CudaGqaProgram* program) { delete program; }

int cuda_gqa_delegate_execute(CudaGqaDelegate* delegate, const CudaGqaTensor* args,
                              size_t num_args) {
  if (delegate == nullptr || (num_args > 0 && args == nullptr)) {
    return static_cast<int>(Error::InvalidArgument);
  }
  if (num_args > CUDA_GQA_MAX_DELEGATE_ARGS) {
    ET_LOG(Error, "CudaGqaBackend: %zu delegate args, at most %d through the C API", num_args,
           CUDA_GQA_MAX_DELEGATE_ARGS);
    return static_cast<int>(Error::InvalidArgument);
  }
  // Fixed storage: no allocation around the backend's execute.
  TensorView views[CUDA_GQA_MAX_DELEGATE_ARGS];
  alignas(executorch::aten::TensorImpl) unsigned char
      impl_storage[CUDA_GQA_MAX_DELEGATE_ARGS][sizeof(executorch::aten::TensorImpl)];
  alignas(executorch::runtime::EValue) unsigned char
      value_storage[CUDA_GQA_MAX_DELEGATE_ARGS][sizeof(executorch::runtime::EValue)];
  executorch::runtime::EValue* values[CUDA_GQA_MAX_DELEGATE_ARGS];
  for (size_t i = 0; i < num_args; ++i) {
    const CudaGqaTensor& a = args[i];
    executorch::aten::ScalarType type;
    if (!cuda_gqa::scalar_type_of(a.dtype, &type) || a.rank > CUDA_GQA_MAX_RANK || a.device > INT8_MAX) {
      ET_LOG(Error, "CudaGqaBackend: delegate arg %zu: dtype %d, rank %u or device %d not describable",
             i, static_cast<int>(a.dtype), a.rank, static_cast<int>(a.device));
      return static_cast<int>(Error::InvalidArgument);
    }
    for (uint32_t d = 0; d < a.rank; ++d) {
      if (a.sizes[d] < 0 || a.sizes[d] > INT32_MAX || a.strides[d] < INT32_MIN ||
          a.strides[d] > INT32_MAX) {
        ET_LOG(Error, "CudaGqaBackend: delegate arg %zu dim %u: size or stride outside int32", i, d);
        return static_cast<int>(Error::InvalidArgument);
      }
      views[i].sizes[d] = static_cast<executorch::aten::SizesType>(a.sizes[d]);
      views[i].strides[d] = static_cast<executorch::aten::StridesType>(a.strides[d]);
      views[i].dim_order[d] = static_cast<executorch::aten::DimOrderType>(d);
    }
    auto* impl = new (impl_storage[i]) executorch::aten::TensorImpl(
        type, static_cast<ssize_t>(a.rank), views[i].sizes, a.data, views[i].dim_order,
        views[i].strides, executorch::aten::TensorShapeDynamism::STATIC,
        a.device >= 0 ? executorch::runtime::etensor::DeviceType::CUDA
                      : executorch::runtime::etensor::DeviceType::CPU,
        static_cast<executorch::runtime::etensor::DeviceIndex>(a.device >= 0 ? a.device : 0));
    values[i] = new (value_storage[i]) executorch::runtime::EValue(executorch::aten::Tensor(impl));
  }
  executorch::runtime::BackendExecutionContext context;
  const Error err = delegate->backend->execute(
      context, delegate->handle, executorch::runtime::Span<executorch::runtime::EValue*>(values, num_args));
  // TensorImpl and EValue over borrowed memory: nothing to release.
  return static_cast<int>(err);
}

void cuda_gqa_delegate_destroy(CudaGqaDelegate* delegate) {
  if (delegate == nullptr) return;
  delegate->backend->destroy(delegate->handle);
  delete delegate;
}

}  // extern "C"
