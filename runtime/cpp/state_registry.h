// Device buffers delegates own (Payload.states, e.g. a layer's KV cache) and
// the device copies of payload constants (Payload.constants, a model's
// weights), each shared by every delegate of one program that names it.
//
// A program's prefill and decode methods are separate delegates that must
// write and read one cache. ExecuTorch hands a delegate no program handle, so
// the backend derives the Program's identity from the named-data map of
// BackendInitContext (program_identity in cuda_gqa_backend.cpp: the
// Program's own PteDataMap object, reached directly or through the Method's
// merged map when there is a .ptd), the same for all its methods and different for
// each Program loaded, even from the same file or the same buffer. States are keyed by (that
// owner, device, name) and reference-counted: allocated and zeroed by the
// first delegate that acquires them, freed with the last one. Constants are
// keyed alike, in a namespace of their own (a state and a constant may share
// a name), and filled once from the program's named data by the first
// delegate that acquires them.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "cuda_driver.h"
#include "payload.h"

namespace cuda_gqa {

// The device buffer of state `spec` of `owner` on `device`: the existing one
// (whose dtype and sizes must match spec's) or a new zeroed one in `context`
// (current on this thread). On failure *error says why and *mismatch
// whether another delegate declared the state differently (else the
// allocation failed).
bool acquire_state(const CudaDriver& driver, CUcontext context, const void* owner, int device,
                   const StateSpecDesc& spec, CUdeviceptr* address, bool* mismatch,
                   std::string* error);

// Drops one reference taken by acquire_state; the last frees the buffer
// (the owner's context must be current). Logs failures.
void release_state(const CudaDriver& driver, const void* owner, int device, const std::string& name);

// Zeroes every state buffer alive in the process (synchronous; makes each
// state's context current on the calling thread). Call it with no execute
// in flight: the copies do not wait for the delegates' non-blocking streams. False with *error
// if a copy failed. A new sequence never needs it (rows past the filled
// length are never read); it is there to wipe a cache's contents.
bool zero_all_states(std::string* error);

// Number of state buffers alive in the process (tests).
size_t live_state_count();

// Writes a new constant's bytes to `address` (`bytes` of device memory in
// the current context); false with *error.
using ConstantUpload = std::function<bool(CUdeviceptr address, size_t bytes, std::string* error)>;

// The device copy of constant `spec` of `owner` on `device`: the existing one
// (whose dtype and sizes must match spec's) or a new one in `context`
// (current on this thread; cuMemAlloc's 256-byte alignment), filled by
// `upload` (called only then, under the registry's lock). On failure *error
// says why and *mismatch whether another delegate declared the constant
// differently (else the allocation or the upload failed).
bool acquire_constant(const CudaDriver& driver, CUcontext context, const void* owner, int device,
                      const ConstantSpecDesc& spec, const ConstantUpload& upload, CUdeviceptr* address,
                      bool* mismatch, std::string* error);

// Drops one reference taken by acquire_constant; the last frees the copy
// (the owner's context must be current). Logs failures.
void release_constant(const CudaDriver& driver, const void* owner, int device, const std::string& name);

// Number of constants with a device copy in the process (tests).
size_t live_constant_count();

}  // namespace cuda_gqa
