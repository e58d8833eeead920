#include "cuda_gqa_c_api.h"

#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "cuda_driver.h"
#include "kernel_module.h"
#include "payload.h"

namespace {

void write_message(const std::string& text, char* message, size_t message_size) {
  if (message == nullptr || message_size == 0) return;
  const size_t n = text.size() < message_size - 1 ? text.size() : message_size - 1;
  std::memcpy(message, text.data(), n);
  message[n] = '\0';
}

// Parses into *payload, copying to aligned storage held by *storage if needed.
bool parse(const void* data, size_t size, std::vector<uint64_t>* storage,
           cuda_gqa::PayloadDesc* payload, std::string* error) {
  if (data != nullptr && size > 0 && !cuda_gqa::payload_buffer_is_aligned(data)) {
    storage->resize((size + 7) / 8);
    std::memcpy(storage->data(), data, size);
    data = storage->data();
  }
  return cuda_gqa::parse_payload(data, size, payload, error);
}

}  // namespace

extern "C" {

int cuda_gqa_payload_version(void) { return static_cast<int>(cuda_gqa::kPayloadVersion); }

int cuda_gqa_validate_payload(const void* data, size_t size, char* message,
                              size_t message_size) {
  try {
    std::vector<uint64_t> storage;
    cuda_gqa::PayloadDesc payload;
    std::string error;
    if (!parse(data, size, &storage, &payload, &error)) {
      write_message(error, message, message_size);
      return 1;
    }
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
    std::string error;
    if (!parse(data, size, &storage, &payload, &error)) {
      write_message(error, message, message_size);
      return 1;
    }
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

}  // extern "C"
