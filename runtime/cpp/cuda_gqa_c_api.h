// Plain C entry points of libcuda_gqa_backend.so, for the Python shim
// (ctypes), tests and the runner. None of them throws or aborts.
#pragma once

#include <stddef.h>

#define CUDA_GQA_EXPORT __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

// Schema version of the payloads this runtime reads.
CUDA_GQA_EXPORT int cuda_gqa_payload_version(void);

// 0 if `data` verifies and converts as a payload; else nonzero with the
// reason in `message` (always NUL-terminated when message_size > 0).
CUDA_GQA_EXPORT int cuda_gqa_validate_payload(const void* data, size_t size, char* message,
                                              size_t message_size);

// 0 if the driver loads, cuInit succeeds and a device exists, with
// "<name>, sm_<cc>" in `message`; else nonzero with the cause.
CUDA_GQA_EXPORT int cuda_gqa_device_status(char* message, size_t message_size);

// For tests of arch selection without a GPU: 0 if every kernel of the payload
// has an image for compute capability `device_cc` (major*10+minor), with the
// choices in `message` ("<kernel>: sm_80 cubin; ..."); else nonzero with the
// reason (the same message init would log).
CUDA_GQA_EXPORT int cuda_gqa_select_images(const void* data, size_t size, int device_cc,
                                           char* message, size_t message_size);

#ifdef __cplusplus
}
#endif
