// Plain C entry points of libcuda_gqa_backend.so, for the Python shim
// (ctypes), tests and the runner. None of them throws or aborts.
#pragma once

#include <stddef.h>
#include <stdint.h>

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

// For tests of arch selection without a GPU: 0 if every kernel of the launch
// plan init would pick for compute capability `device_cc` (major*10+minor;
// the arch variant listing it, else the payload's own) has an image, with the
// choices in `message` ("<kernel>: sm_80 cubin; ..."); else nonzero with the
// reason (the same message init would log).
CUDA_GQA_EXPORT int cuda_gqa_select_images(const void* data, size_t size, int device_cc,
                                           char* message, size_t message_size);

// Most dimensions a delegate argument has (kMaxRank of the payload reader).
#define CUDA_GQA_MAX_RANK 8

// Return codes of cuda_gqa_evaluate_launch.
#define CUDA_GQA_EVAL_OK 0
#define CUDA_GQA_EVAL_BAD_PAYLOAD 1   // init would refuse the payload or kernel
#define CUDA_GQA_EVAL_REFUSED 2       // execute would refuse these arguments
#define CUDA_GQA_EVAL_INTERNAL 3      // exception or bad call (null buffers)

// For tests without a GPU: runs exactly the checks and the evaluation the
// backend's init and execute run for kernel `kernel_index` of the launch plan
// init picks for compute capability `device_cc` (0: the payload's own),
// and reports what cuLaunchKernel would get. Delegate argument i (inputs,
// then outputs; `num_args` of them) has element type dtypes[i] (a DType of
// payload.fbs; -1: any other type, named dtype_labels[i] in messages when
// dtype_labels is not null), ranks[i] dimensions, sizes and strides (in
// elements) at sizes[i*CUDA_GQA_MAX_RANK + d] / strides[...], and device
// address addresses[i]. `global_scratch` / `profile_scratch` stand for the
// scratch buffers init would allocate (0: none), sized from the payload's
// static grid as init does; `workspace` for the workspace init would
// allocate when the payload's workspace_bytes > 0 (ignored otherwise).
//
// On CUDA_GQA_EVAL_OK: launch[0..2] = grid x, y, z (all 0 if there is nothing
// to launch), launch[3] = block threads in x, launch[4] = dynamic shared
// memory bytes; *num_params = the entry point's parameter count and
// param_values[0 .. min(that, max_params)) = each parameter's 8-byte slot
// (pointers and int64 as they are, int32 and float32 in the low 4 bytes,
// zero above). Otherwise `message` holds the reason, the same text the
// backend logs after "CudaGqaBackend: ".
CUDA_GQA_EXPORT int cuda_gqa_evaluate_launch(
    const void* data, size_t size, int device_cc, size_t kernel_index, size_t num_args,
    const int32_t* dtypes,
    const char* const* dtype_labels, const uint32_t* ranks, const int64_t* sizes,
    const int64_t* strides, const uint64_t* addresses, uint64_t global_scratch,
    uint64_t profile_scratch, uint64_t workspace, uint32_t* launch, uint64_t* param_values, size_t max_params,
    size_t* num_params, char* message, size_t message_size);

#ifdef __cplusplus
}
#endif
