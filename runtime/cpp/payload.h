// Reads the delegate payload (backends/serialization/payload.fbs) into plain
// structs after checking it: flatbuffers verification first, then the
// meaning of every field the runtime will act on, so a corrupt-but-verifiable
// buffer is refused with a message instead of steering a launch.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace cuda_gqa {

// Must match PAYLOAD_VERSION in backends/serialization/payload_serializer.py.
constexpr uint32_t kPayloadVersion = 4;
// The oldest version still read (OLDEST_PAYLOAD_VERSION): version 3 payloads
// are version 4 ones without constants.
constexpr uint32_t kOldestPayloadVersion = 3;
constexpr char kPayloadIdentifier[] = "CGQA";
// Upper bounds on what the runtime accepts; far above anything preprocess
// emits, low enough that products and indices cannot overflow.
constexpr size_t kMaxRank = 8;
constexpr size_t kMaxParams = 256;
constexpr size_t kMaxGridFactors = 8;
constexpr uint32_t kMaxNumWarps = 32;  // 1024 threads per CTA
constexpr uint32_t kMaxSharedMemBytes = 1u << 20;
constexpr uint64_t kMaxWorkspaceBytes = uint64_t{1} << 40;
// Alignment of the workspace base (cuMemAlloc gives 256 bytes).
constexpr uint64_t kWorkspaceAlign = 256;
// Alignment of every constant's device copy (cuMemAlloc's).
constexpr uint64_t kConstantAlign = 256;

// Same numbering as the schema's enums.
enum class DType : uint8_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kBool = 3, kInt32 = 4, kInt64 = 5 };
constexpr DType kLastDType = DType::kInt64;
enum class ParamKind : uint8_t {
  kTensorPointer = 0,
  kTensorStride = 1,
  kTensorSize = 2,
  kFloat32Constant = 3,
  kGlobalScratch = 4,
  kProfileScratch = 5,
  kWorkspace = 6,
  kInt32Constant = 7,
  kConstant = 8,
};
constexpr ParamKind kLastParamKind = ParamKind::kConstant;
enum class ParamType : uint8_t { kPointer = 0, kInt32 = 1, kInt64 = 2, kFloat32 = 3 };

const char* dtype_name(DType dtype);
size_t dtype_size(DType dtype);

// Output (or input) dimension `dim` has the size of input `arg`'s `arg_dim`.
struct DimSourceDesc {
  uint8_t dim = 0;
  uint8_t arg = 0;
  uint8_t arg_dim = 0;
};

struct TensorSpecDesc {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> sizes;      // -1: dynamic, up to max_sizes[d]
  std::vector<int64_t> max_sizes;  // per dim; equal to sizes where static
  std::vector<DimSourceDesc> size_from;
  bool is_static() const;
  // Element count at the max sizes: what staging buffers hold.
  int64_t max_numel() const;
};

struct ParamDesc {
  ParamKind kind = ParamKind::kTensorPointer;
  ParamType type = ParamType::kPointer;
  uint8_t arg = 0;
  uint8_t dim = 0;
  float f32_value = 0.0f;
  uint32_t divisibility = 0;  // 0 or 1: no requirement
  uint64_t workspace_offset = 0;  // kWorkspace: bytes into the workspace
  uint64_t workspace_extent = 0;  // kWorkspace: bytes the kernel may touch from there
  int32_t i32_value = 0;          // kInt32Constant
  uint32_t constant = 0;          // kConstant: index into PayloadDesc::constants
};

struct GridFactorDesc {
  uint8_t arg = 0;
  uint8_t dim = 0;
  uint32_t divisor = 1;
};

// A view of one compiled image inside the payload buffer; valid only while
// that buffer is (the backend frees it at the end of init). An image stored
// in the program's named data has a key and no bytes until init resolves it
// (data/size then view the named data map's buffer).
struct ImageView {
  uint32_t arch = 0;  // major*10+minor
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::string key;  // named data key; empty: the bytes are inline
  bool present() const { return size > 0 || !key.empty(); }
};

struct KernelDesc {
  std::string name;
  std::vector<ImageView> cubins;
  ImageView ptx;  // !present(): no PTX; arch: the lowest CC the PTX runs on
  uint32_t num_warps = 0;
  uint32_t shared_mem_bytes = 0;
  uint32_t global_scratch_bytes = 0;
  uint32_t global_scratch_align = 0;
  uint32_t profile_scratch_bytes = 0;
  uint32_t profile_scratch_align = 0;
  std::vector<ParamDesc> params;
  std::array<std::vector<GridFactorDesc>, 3> grid;  // x, y, z
  std::array<uint32_t, 3> grid_multiplier = {1, 1, 1};
  // Its images for sm_90 and later wait for the plan's previous kernel
  // themselves (griddepcontrol.wait): they may be launched as its
  // programmatic dependents (payload.fbs). False in payloads that predate it.
  bool waits_for_previous = false;
};

// A device buffer the delegate owns (Payload.states): allocated and zeroed at
// init, shared by the delegates of one program that name it.
struct StateSpecDesc {
  std::string name;
  TensorSpecDesc spec;  // static sizes only
};

// A read-only tensor the kernels address through kConstant params
// (Payload.constants): its bytes are the program's named data entry `name`,
// uploaded to the device once at init and shared by the delegates of one
// program that name it.
struct ConstantSpecDesc {
  std::string name;
  TensorSpecDesc spec;  // static sizes only
  size_t bytes() const { return static_cast<size_t>(spec.max_numel()) * dtype_size(spec.dtype); }
};

struct SizeRangeDesc {
  uint8_t arg = 0;
  uint8_t dim = 0;
  int64_t min = 0;
  int64_t max = 0;
};

// Input `arg` holds KV cache positions that must lie in [0, bound)
// (Payload.position_bounds): every element, or when start_only its first
// element as the start of size(rows_arg, rows_dim) rows.
struct PositionBoundDesc {
  uint8_t arg = 0;
  bool start_only = false;
  uint8_t rows_arg = 0;
  uint8_t rows_dim = 0;
  int64_t bound = 0;
  bool token_ids = false;  // BoundedIndex::TokenId: the input indexes an embedding table, not a cache
};

// One row of the dispatch table (see payload.fbs).
struct LaunchPlanDesc {
  std::vector<uint32_t> archs;  // empty: any GPU
  std::vector<SizeRangeDesc> when;
  std::vector<KernelDesc> kernels;
  size_t payload_index = 0;  // position in the payload (keep_plans_for_arch drops others)
};

struct PayloadDesc {
  uint32_t version = 0;
  std::vector<TensorSpecDesc> inputs;
  std::vector<TensorSpecDesc> outputs;
  std::vector<LaunchPlanDesc> plans;
  uint64_t workspace_bytes = 0;  // one device buffer allocated at init; 0: none
  std::vector<StateSpecDesc> states;
  std::vector<ConstantSpecDesc> constants;  // none before version 4
  std::vector<PositionBoundDesc> position_bounds;  // none in payloads that predate them

  // Arguments the caller passes: inputs, then outputs.
  size_t num_args() const { return inputs.size() + outputs.size(); }
  // Arguments the kernels address: those, then the delegate's states.
  size_t num_launch_args() const { return num_args() + states.size(); }
  // Launch argument i: inputs first, then outputs, then states.
  const TensorSpecDesc& arg_spec(size_t i) const {
    if (i < inputs.size()) return inputs[i];
    if (i < num_args()) return outputs[i - inputs.size()];
    return states[i - num_args()].spec;
  }
};

// Verifies `data` and fills *out. On failure returns false with the reason in
// *error; never reads outside [data, data + size). Flatbuffers reads scalars
// in place, so a `data` that is not 8-byte aligned is first copied into
// *aligned_storage; the image views of *out then point there, and stay valid
// while both it and `data` live.
bool parse_payload(const void* data, size_t size, std::vector<uint64_t>* aligned_storage,
                   PayloadDesc* out, std::string* error);

// Keeps the plans init runs on compute capability device_cc: those listing
// it if any plan does, else those listing no arch. False (with *error) when
// none is left.
bool keep_plans_for_arch(PayloadDesc* payload, int device_cc, std::string* error);

}  // namespace cuda_gqa
