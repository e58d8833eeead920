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
// plans init keeps for compute capability `device_cc` (major*10+minor; the
// plans listing it, else those listing no arch) has an image, with the
// distinct choices in `message` ("<kernel>: sm_80 cubin; ..."); else nonzero
// with the reason (the same message init would log).
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
// execute picks for these arguments among those init keeps for compute
// capability `device_cc` (0: the plans listing no arch), and reports what
// cuLaunchKernel would get. Delegate argument i (inputs,
// then outputs; `num_args` of them) has element type dtypes[i] (a DType of
// payload.fbs; -1: any other type, named dtype_labels[i] in messages when
// dtype_labels is not null), ranks[i] dimensions, sizes and strides (in
// elements) at sizes[i*CUDA_GQA_MAX_RANK + d] / strides[...], and device
// address addresses[i]. `global_scratch` / `profile_scratch` stand for the
// scratch buffers init would allocate (0: none), sized from the grid at the
// specs' max sizes as init does; `workspace` for the workspace init would
// allocate when the payload's workspace_bytes > 0 (ignored otherwise);
// constants[0 .. num_constants) for the device copies of the payload's
// constants, in order (what Constant params receive; may be null when
// num_constants is 0).
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
    uint64_t profile_scratch, uint64_t workspace, const uint64_t* constants, size_t num_constants,
    uint32_t* launch, uint64_t* param_values, size_t max_params,
    size_t* num_params, char* message, size_t message_size);

// The dispatch of cuda_gqa_evaluate_launch alone: the checks execute runs on
// these arguments (same layout), then the plan it picks. CUDA_GQA_EVAL_OK
// with *plan_index = the plan's position in the payload's plans and
// *num_kernels = its kernel count; otherwise a CUDA_GQA_EVAL_* code with the
// reason in `message` (for sizes no plan takes, naming the arg, dim and range).
CUDA_GQA_EXPORT int cuda_gqa_select_plan(const void* data, size_t size, int device_cc, size_t num_args,
                                         const int32_t* dtypes, const char* const* dtype_labels,
                                         const uint32_t* ranks, const int64_t* sizes,
                                         const int64_t* strides, const uint64_t* addresses,
                                         size_t* plan_index, size_t* num_kernels, char* message,
                                         size_t message_size);

// Value kinds of the backend options (ExecuTorch's BackendOption variant).
#define CUDA_GQA_OPTION_BOOL 0
#define CUDA_GQA_OPTION_INT 1
#define CUDA_GQA_OPTION_STRING 2

// Sets one process-wide CudaGqaBackend option through ExecuTorch's
// executorch::runtime::set_option (see backend_options.h for the keys:
// device, stream, synchronize, profile, launch_graphs, programmatic_launch):
// a bool or int from int_value, a string from string_value. Returns the
// ExecuTorch Error code (0: Ok; InvalidArgument with a log line naming the
// cause for an unknown key, a wrong type or a bad value).
CUDA_GQA_EXPORT int cuda_gqa_set_option(const char* key, int kind, int int_value,
                                        const char* string_value);

// Reads one option through executorch::runtime::get_option as `kind`:
// bools and ints into *int_value, strings into string_value (NUL-terminated
// within string_size). Returns the ExecuTorch Error code.
CUDA_GQA_EXPORT int cuda_gqa_get_option(const char* key, int kind, int* int_value,
                                        char* string_value, size_t string_size);

// Nanoseconds of kernel time of every execute run with the "profile" option,
// summed since the library was loaded (CUDA events around each execute's
// kernels, enqueued back to back).
CUDA_GQA_EXPORT uint64_t cuda_gqa_profiled_kernel_time_ns(void);

// Wall time (nanoseconds) and number of CudaGqaBackend execute calls, summed
// over every delegate since the library was loaded: from entry to return,
// so with the staging copies between host and device, the launches and the
// wait for the kernels (what a caller's step spends in the backend).
CUDA_GQA_EXPORT uint64_t cuda_gqa_execute_time_ns(void);
CUDA_GQA_EXPORT uint64_t cuda_gqa_execute_count(void);

// Modules the process-wide module cache holds now: delegates loading the
// same image for the same entry point in the same context share one.
CUDA_GQA_EXPORT size_t cuda_gqa_loaded_module_count(void);

// Delegate-owned state buffers (Payload.states, e.g. KV caches) alive in the
// process, and a synchronous zeroing of all of them (0: done; else 1 with the
// cause in message). Starting a sequence at position 0 needs no zeroing:
// rows past the filled length are never read.
CUDA_GQA_EXPORT size_t cuda_gqa_live_state_count(void);
CUDA_GQA_EXPORT int cuda_gqa_zero_states(char* message, size_t message_size);

// Payload constants (a model's weights) with a device copy in the process:
// one per (program, device, name), however many delegates name it.
CUDA_GQA_EXPORT size_t cuda_gqa_live_constant_count(void);

// --- a delegate without an ExecuTorch program ----------------------------------
// CudaGqaBackend's own init/execute/destroy (the BackendInterface ExecuTorch
// calls), for PyTorch users, tests and the concurrency checks: the same
// checks, launches, options (process-wide, set_option) and thread safety.

// One delegate argument. Sizes and strides (in elements) must fit int32, as
// in ExecuTorch's tensors.
typedef struct {
  int32_t dtype;  // a DType of payload.fbs
  uint32_t rank;
  int64_t sizes[CUDA_GQA_MAX_RANK];
  int64_t strides[CUDA_GQA_MAX_RANK];
  void* data;
  int32_t device;  // -1: host memory; else memory of this CUDA device (the delegate's)
} CudaGqaTensor;

typedef struct CudaGqaDelegate CudaGqaDelegate;

// Most arguments cuda_gqa_delegate_execute takes.
#define CUDA_GQA_MAX_DELEGATE_ARGS 16

// Initialises a delegate from a payload (read during the call only). Returns
// the ExecuTorch Error code init returns (0: Ok, *out set), the cause logged.
CUDA_GQA_EXPORT int cuda_gqa_delegate_init(const void* payload, size_t size, CudaGqaDelegate** out);

// Runs the delegate on `args` (inputs, then outputs). Returns the ExecuTorch
// Error code execute returns. Executes of one delegate are serialised;
// different delegates run concurrently.
CUDA_GQA_EXPORT int cuda_gqa_delegate_execute(CudaGqaDelegate* delegate, const CudaGqaTensor* args,
                                              size_t num_args);

// Frees the delegate (null: nothing). Must not race an execute of it.
CUDA_GQA_EXPORT void cuda_gqa_delegate_destroy(CudaGqaDelegate* delegate);

// --- named data: a program for delegates without an ExecuTorch program ---------
// What an ExecuTorch program gives its delegates besides their payloads: its
// named data (NamedDataMap, key -> bytes), where payload constants (and
// kernel images stored by key) are. Delegates initialised in one
// CudaGqaProgram share the states and constants they name, as the methods of
// one ExecuTorch program do; those of different programs do not.

// One named data entry: `size` bytes at `data` under the NUL-terminated `key`.
typedef struct {
  const char* key;
  const void* data;
  size_t size;
} CudaGqaNamedData;

typedef struct CudaGqaProgram CudaGqaProgram;

// A program holding a copy of `entries` (keys must be distinct and
// non-empty). Null on bad input (logged) or when out of memory.
CUDA_GQA_EXPORT CudaGqaProgram* cuda_gqa_program_create(const CudaGqaNamedData* entries, size_t num_entries);

// cuda_gqa_delegate_init, with the program's named data: the payload's
// constants are uploaded from it (once per program) and its images read
// from it. Returns the ExecuTorch Error code init returns (0: Ok, *out set).
CUDA_GQA_EXPORT int cuda_gqa_delegate_init_in_program(CudaGqaProgram* program, const void* payload, size_t size,
                                                      CudaGqaDelegate** out);

// How many buffers the backend has taken from the program's named data
// (NamedDataMap::get_data) since it was created, and how many of them it
// still holds (not yet freed: init frees each right after its use).
CUDA_GQA_EXPORT void cuda_gqa_program_buffer_counts(const CudaGqaProgram* program, size_t* taken,
                                                    size_t* held);

// Frees the program (null: nothing). Destroy its delegates first: the
// states and constants they share are keyed by the program's identity.
CUDA_GQA_EXPORT void cuda_gqa_program_destroy(CudaGqaProgram* program);

#ifdef __cplusplus
}
#endif
