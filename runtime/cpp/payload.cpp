#include "payload.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "payload_generated.h"

namespace cuda_gqa {
namespace fb = ::cuda_gqa::payload;

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kBool: return "bool";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
  }
  return "unknown";
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kBool: return 1;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kFloat32:
    case DType::kInt32: return 4;
    case DType::kInt64: return 8;
  }
  return 0;
}

bool TensorSpecDesc::is_static() const {
  for (int64_t s : sizes) {
    if (s < 0) return false;
  }
  return true;
}

int64_t TensorSpecDesc::max_numel() const {
  int64_t n = 1;
  for (int64_t s : max_sizes) n *= s;  // bounded by parse_payload
  return n;
}

namespace {

// Builds "<where>: <what>" into *error and returns false.
bool fail(std::string* error, const std::string& where, const std::string& what) {
  *error = where.empty() ? what : where + ": " + what;
  return false;
}

// Bounds of a spec's dynamic dims; states have none (they are static).
const flatbuffers::Vector<int64_t>* max_sizes_of(const fb::TensorSpec* spec) { return spec->max_sizes(); }
const flatbuffers::Vector<int64_t>* max_sizes_of(const fb::StateSpec*) { return nullptr; }
const flatbuffers::Vector<int64_t>* max_sizes_of(const fb::ConstantSpec*) { return nullptr; }

template <typename Spec>  // fb::TensorSpec, fb::StateSpec or fb::ConstantSpec
bool read_spec(const Spec* spec, const std::string& where,
               TensorSpecDesc* out, std::string* error) {
  if (spec == nullptr) return fail(error, where, "missing tensor spec");
  const auto dtype = static_cast<int>(spec->dtype());
  if (dtype < 0 || dtype > static_cast<int>(kLastDType)) {
    return fail(error, where, "unknown dtype " + std::to_string(dtype));
  }
  out->dtype = static_cast<DType>(dtype);
  const auto* sizes = spec->sizes();
  if (sizes == nullptr) return fail(error, where, "missing sizes");
  if (sizes->size() > kMaxRank) {
    return fail(error, where,
                "rank " + std::to_string(sizes->size()) + " exceeds " +
                    std::to_string(kMaxRank));
  }
  const auto* max_sizes = max_sizes_of(spec);
  const bool has_max = max_sizes != nullptr && max_sizes->size() > 0;
  if (has_max && max_sizes->size() != sizes->size()) {
    return fail(error, where, std::to_string(max_sizes->size()) + " max_sizes for rank " +
                                  std::to_string(sizes->size()));
  }
  // Extents at their bounds must multiply (with the element size) without overflow.
  int64_t bytes = static_cast<int64_t>(dtype_size(out->dtype));
  out->sizes.clear();
  out->max_sizes.clear();
  for (uint32_t d = 0; d < sizes->size(); ++d) {
    // memcpy: the verifier checks 4-byte alignment of vectors only, so an
    // int64 element of a corrupt buffer may be misaligned. Flatbuffers are
    // little-endian, as are all CUDA hosts.
    int64_t s;
    std::memcpy(&s, sizes->Data() + d * sizeof(int64_t), sizeof(s));
    if (s < -1) {
      return fail(error, where,
                  "size " + std::to_string(s) + " at dim " + std::to_string(d));
    }
    if (s < 0 && !has_max) {
      return fail(error, where, "dynamic sizes need " + std::to_string(sizes->size()) +
                                    " max_sizes, got 0");
    }
    int64_t bound = s;
    if (has_max) std::memcpy(&bound, max_sizes->Data() + d * sizeof(int64_t), sizeof(bound));
    if (bound < 0 || (s >= 0 && bound != s)) {
      return fail(error, where, "max size " + std::to_string(bound) + " at dim " +
                                    std::to_string(d) + " of size " + std::to_string(s));
    }
    if (__builtin_mul_overflow(bytes, bound, &bytes)) {
      return fail(error, where, "tensor byte size overflows");
    }
    out->sizes.push_back(s);
    out->max_sizes.push_back(bound);
  }
  if (bytes > (int64_t{1} << 46)) {
    return fail(error, where, "tensor larger than 64 TiB");
  }
  return true;
}

// The size_from entries of delegate arg `index` (after every spec is read):
// dynamic dims only, from another input, within bounds; every dynamic dim
// of an output has one.
bool read_size_from(const fb::TensorSpec* spec, size_t index, const std::string& where,
                    PayloadDesc* pl, std::string* error) {
  TensorSpecDesc& out = index < pl->inputs.size() ? pl->inputs[index]
                                                  : pl->outputs[index - pl->inputs.size()];
  out.size_from.clear();
  if (const auto* sources = spec->size_from()) {
    for (uint32_t i = 0; i < sources->size(); ++i) {
      const fb::DimSource* src = sources->Get(i);
      const DimSourceDesc d{src->dim(), src->arg(), src->arg_dim()};
      const std::string dim = "size_from dim " + std::to_string(d.dim);
      if (d.dim >= out.sizes.size() || out.sizes[d.dim] >= 0) {
        return fail(error, where, "size_from names dim " + std::to_string(d.dim) +
                                      ", which is not dynamic");
      }
      for (const DimSourceDesc& seen : out.size_from) {
        if (seen.dim == d.dim) {
          return fail(error, where, "size_from names dim " + std::to_string(d.dim) + " twice");
        }
      }
      if (d.arg >= pl->inputs.size() || d.arg == index) {
        return fail(error, where, dim + ": arg " + std::to_string(d.arg) + " is not another input");
      }
      const TensorSpecDesc& from = pl->inputs[d.arg];
      if (d.arg_dim >= from.sizes.size()) {
        return fail(error, where, dim + ": dim " + std::to_string(d.arg_dim) +
                                      " out of range for arg " + std::to_string(d.arg));
      }
      if (from.max_sizes[d.arg_dim] > out.max_sizes[d.dim]) {
        return fail(error, where, dim + ": arg " + std::to_string(d.arg) + " dim " +
                                      std::to_string(d.arg_dim) + " may exceed its max size");
      }
      out.size_from.push_back(d);
    }
  }
  if (index >= pl->inputs.size()) {
    for (size_t d = 0; d < out.sizes.size(); ++d) {
      bool found = out.sizes[d] >= 0;
      for (const DimSourceDesc& src : out.size_from) found |= src.dim == d;
      if (!found) return fail(error, where, "dynamic dim " + std::to_string(d) + " has no size_from");
    }
  }
  return true;
}

// Checks of a decoded param, by kind.
bool check_tensor_param(const ParamDesc& p, const PayloadDesc& pl, const std::string& where,
                        std::string* error) {
  if (p.arg >= pl.num_launch_args()) {
    return fail(error, where,
                "arg " + std::to_string(p.arg) + " out of range (" +
                    std::to_string(pl.num_launch_args()) + " delegate args)");
  }
  if (p.kind == ParamKind::kTensorPointer) {
    if (p.type != ParamType::kPointer) return fail(error, where, "TensorPointer must be passed as Pointer");
    return true;
  }
  if (p.type != ParamType::kInt32 && p.type != ParamType::kInt64) {
    return fail(error, where, "TensorStride/TensorSize must be Int32 or Int64");
  }
  const size_t rank = pl.arg_spec(p.arg).sizes.size();
  if (p.dim >= rank) {
    return fail(error, where,
                "dim " + std::to_string(p.dim) + " out of range for arg " + std::to_string(p.arg) +
                    " of rank " + std::to_string(rank));
  }
  return true;
}

bool check_float32_constant_param(const ParamDesc& p, const std::string& where, std::string* error) {
  if (p.type != ParamType::kFloat32) return fail(error, where, "Float32Constant must be passed as Float32");
  if (!std::isfinite(p.f32_value)) return fail(error, where, "Float32Constant is not finite");
  if (p.divisibility > 1) return fail(error, where, "divisibility on a float constant");
  return true;
}

bool check_workspace_param(const ParamDesc& p, uint64_t workspace_bytes, const std::string& where,
                           std::string* error) {
  if (p.type != ParamType::kPointer) return fail(error, where, "Workspace must be passed as Pointer");
  if (p.workspace_offset >= workspace_bytes || p.workspace_extent == 0 ||
      p.workspace_extent > workspace_bytes - p.workspace_offset) {
    return fail(error, where,
                "workspace range [" + std::to_string(p.workspace_offset) + ", +" +
                    std::to_string(p.workspace_extent) + ") outside the " +
                    std::to_string(workspace_bytes) + "-byte workspace");
  }
  // The base is kWorkspaceAlign-aligned: the address is a multiple of the
  // divisibility iff the offset is.
  if (p.divisibility > 1 &&
      (p.divisibility > kWorkspaceAlign || p.workspace_offset % p.divisibility != 0)) {
    return fail(error, where,
                "workspace offset " + std::to_string(p.workspace_offset) + " is not a multiple of " +
                    std::to_string(p.divisibility) + ", which the cubin assumes");
  }
  return true;
}

bool check_int32_constant_param(const ParamDesc& p, const std::string& where, std::string* error) {
  if (p.type != ParamType::kInt32) return fail(error, where, "Int32Constant must be passed as Int32");
  if (p.divisibility > 1 && p.i32_value % static_cast<int64_t>(p.divisibility) != 0) {
    return fail(error, where,
                "Int32Constant " + std::to_string(p.i32_value) + " is not a multiple of " +
                    std::to_string(p.divisibility) + ", which the cubin assumes");
  }
  return true;
}

bool check_constant_param(const ParamDesc& p, const PayloadDesc& pl, const std::string& where,
                          std::string* error) {
  if (p.type != ParamType::kPointer) return fail(error, where, "Constant must be passed as Pointer");
  if (p.constant >= pl.constants.size()) {
    return fail(error, where,
                "constant " + std::to_string(p.constant) + " out of range (" +
                    std::to_string(pl.constants.size()) + " constants)");
  }
  // Device copies are kConstantAlign-aligned and nothing more is promised.
  if (p.divisibility > 1 && kConstantAlign % p.divisibility != 0) {
    return fail(error, where,
                "constant addresses are " + std::to_string(kConstantAlign) +
                    "-byte aligned, not a multiple of " + std::to_string(p.divisibility) +
                    ", which the cubin assumes");
  }
  return true;
}

// workspace_bytes: of the launch plan the param's kernel belongs to.
bool read_param(const fb::KernelParam* p, const PayloadDesc& pl, uint64_t workspace_bytes,
                const std::string& where, ParamDesc* out, std::string* error) {
  if (p == nullptr) return fail(error, where, "missing param");
  const int kind = static_cast<int>(p->kind());
  const int type = static_cast<int>(p->type());
  if (kind < 0 || kind > static_cast<int>(kLastParamKind)) {
    return fail(error, where, "unknown param kind " + std::to_string(kind));
  }
  if (type < 0 || type > static_cast<int>(ParamType::kFloat32)) {
    return fail(error, where, "unknown param type " + std::to_string(type));
  }
  out->kind = static_cast<ParamKind>(kind);
  out->type = static_cast<ParamType>(type);
  out->arg = p->arg();
  out->dim = p->dim();
  out->f32_value = p->f32_value();
  out->divisibility = p->divisibility();
  out->workspace_offset = p->workspace_offset();
  out->workspace_extent = p->workspace_extent();
  out->i32_value = p->i32_value();
  out->constant = p->constant();
  switch (out->kind) {
    case ParamKind::kTensorPointer:
    case ParamKind::kTensorStride:
    case ParamKind::kTensorSize: return check_tensor_param(*out, pl, where, error);
    case ParamKind::kFloat32Constant: return check_float32_constant_param(*out, where, error);
    case ParamKind::kGlobalScratch:
    case ParamKind::kProfileScratch:
      return out->type == ParamType::kPointer || fail(error, where, "scratch must be passed as Pointer");
    case ParamKind::kWorkspace: return check_workspace_param(*out, workspace_bytes, where, error);
    case ParamKind::kInt32Constant: return check_int32_constant_param(*out, where, error);
    case ParamKind::kConstant: return check_constant_param(*out, pl, where, error);
  }
  return true;
}

bool is_pow2_or_zero(uint32_t v) { return (v & (v - 1)) == 0; }

// An image is inline bytes or a key into the program's named data, not both.
bool read_image(const flatbuffers::Vector<uint8_t>* bytes, const flatbuffers::String* key,
                const std::string& where, ImageView* out, std::string* error) {
  const bool inline_bytes = bytes != nullptr && bytes->size() > 0;
  const bool named = key != nullptr && key->size() > 0;
  if (inline_bytes && named) return fail(error, where, "has both inline bytes and a named data key");
  if (inline_bytes) {
    out->data = bytes->data();
    out->size = bytes->size();
  } else if (named) {
    out->key.assign(key->c_str(), key->size());
    if (std::strlen(out->key.c_str()) != out->key.size()) {
      return fail(error, where, "named data key contains NUL");
    }
  }
  return true;
}

// A kernel's cubins and PTX: at least one image, at most one cubin per arch.
bool read_kernel_images(const fb::Kernel* k, const std::string& where, KernelDesc* out, std::string* error) {
  if (const auto* cubins = k->cubins()) {
    for (uint32_t i = 0; i < cubins->size(); ++i) {
      const std::string cw = where + " cubin " + std::to_string(i);
      const fb::Cubin* c = cubins->Get(i);
      if (c == nullptr) return fail(error, cw, "missing");
      if (c->arch() < 10 || c->arch() > 1000) {
        return fail(error, cw, "implausible arch " + std::to_string(c->arch()));
      }
      ImageView image;
      if (!read_image(c->image(), c->image_key(), cw, &image, error)) return false;
      if (!image.present()) {
        return fail(error, cw, "empty image for sm_" + std::to_string(c->arch()));
      }
      for (const ImageView& seen : out->cubins) {
        if (seen.arch == c->arch()) {
          return fail(error, cw, "duplicate arch sm_" + std::to_string(c->arch()));
        }
      }
      image.arch = c->arch();
      out->cubins.push_back(std::move(image));
    }
  }
  if (!read_image(k->ptx(), k->ptx_key(), where + " PTX", &out->ptx, error)) return false;
  if (out->ptx.present()) {
    if (k->ptx_arch() < 10 || k->ptx_arch() > 1000) {
      return fail(error, where, "PTX with implausible ptx_arch " +
                                    std::to_string(k->ptx_arch()));
    }
    out->ptx.arch = k->ptx_arch();
  }
  if (out->cubins.empty() && !out->ptx.present()) {
    return fail(error, where, "no cubin and no PTX");
  }
  return true;
}

// Warps, shared memory and Triton's scratch buffers.
bool read_kernel_resources(const fb::Kernel* k, const std::string& where, KernelDesc* out, std::string* error) {
  out->num_warps = k->num_warps();
  if (out->num_warps < 1 || out->num_warps > kMaxNumWarps) {
    return fail(error, where, "num_warps " + std::to_string(out->num_warps) +
                                  " outside 1.." + std::to_string(kMaxNumWarps));
  }
  out->shared_mem_bytes = k->shared_mem_bytes();
  if (out->shared_mem_bytes > kMaxSharedMemBytes) {
    return fail(error, where, "shared_mem_bytes " +
                                  std::to_string(out->shared_mem_bytes) + " too large");
  }
  out->global_scratch_bytes = k->global_scratch_bytes();
  out->global_scratch_align = k->global_scratch_align();
  out->profile_scratch_bytes = k->profile_scratch_bytes();
  out->profile_scratch_align = k->profile_scratch_align();
  if (!is_pow2_or_zero(out->global_scratch_align) ||
      !is_pow2_or_zero(out->profile_scratch_align)) {
    return fail(error, where, "scratch alignment is not a power of two");
  }
  return true;
}

bool read_kernel_params(const fb::Kernel* k, const PayloadDesc& pl, uint64_t workspace_bytes,
                        const std::string& where, KernelDesc* out, std::string* error) {
  const auto* params = k->params();
  if (params == nullptr || params->size() == 0) {
    return fail(error, where, "no params");
  }
  if (params->size() > kMaxParams) {
    return fail(error, where, std::to_string(params->size()) + " params (max " +
                                  std::to_string(kMaxParams) + ")");
  }
  out->params.resize(params->size());
  for (uint32_t i = 0; i < params->size(); ++i) {
    if (!read_param(params->Get(i), pl, workspace_bytes, where + " param " + std::to_string(i),
                    &out->params[i], error)) {
      return false;
    }
  }
  return true;
}

bool read_grid_dim(const fb::GridDim* gd, const PayloadDesc& pl, const std::string& where,
                   std::vector<GridFactorDesc>* factors_out, uint32_t* multiplier, std::string* error) {
  if (gd == nullptr) return fail(error, where, "missing");
  factors_out->clear();
  *multiplier = gd->multiplier();
  const auto* factors = gd->factors();
  if (factors != nullptr && factors->size() > kMaxGridFactors) {
    return fail(error, where, "too many factors");
  }
  for (uint32_t f = 0; factors != nullptr && f < factors->size(); ++f) {
    const fb::GridFactor* gf = factors->Get(f);
    GridFactorDesc d{gf->arg(), gf->dim(), gf->divisor()};
    if (d.arg >= pl.num_launch_args()) {
      return fail(error, where, "factor arg " + std::to_string(d.arg) + " out of range");
    }
    if (d.dim >= pl.arg_spec(d.arg).sizes.size()) {
      return fail(error, where, "factor dim " + std::to_string(d.dim) +
                                    " out of range for arg " + std::to_string(d.arg));
    }
    if (d.divisor == 0) return fail(error, where, "factor divisor is 0");
    factors_out->push_back(d);
  }
  if (*multiplier == 0) return fail(error, where, "multiplier is 0");
  return true;
}

bool read_kernel(const fb::Kernel* k, const PayloadDesc& pl, uint64_t workspace_bytes,
                 const std::string& where_in, KernelDesc* out,
                 std::string* error) {
  if (k == nullptr) return fail(error, where_in, "missing kernel");
  if (k->name() == nullptr || k->name()->size() == 0) {
    return fail(error, where_in, "missing entry-point name");
  }
  out->name.assign(k->name()->c_str(), k->name()->size());
  if (std::strlen(out->name.c_str()) != out->name.size()) {
    return fail(error, where_in, "entry-point name contains NUL");
  }
  const std::string where = where_in + " (" + out->name + ")";
  if (!read_kernel_images(k, where, out, error) || !read_kernel_resources(k, where, out, error) ||
      !read_kernel_params(k, pl, workspace_bytes, where, out, error)) {
    return false;
  }
  const auto* grid = k->grid();
  if (grid == nullptr || grid->size() != 3) {
    return fail(error, where,
                "grid has " + std::to_string(grid == nullptr ? 0 : grid->size()) +
                    " dims, expected 3");
  }
  for (uint32_t g = 0; g < 3; ++g) {
    if (!read_grid_dim(grid->Get(g), pl, where + " grid dim " + std::to_string(g), &out->grid[g],
                       &out->grid_multiplier[g], error)) {
      return false;
    }
  }
  out->waits_for_previous = k->waits_for_previous();
  return true;
}

bool read_workspace_bytes(uint64_t bytes, const std::string& where, uint64_t* out,
                          std::string* error) {
  if (bytes > kMaxWorkspaceBytes) {
    return fail(error, where, "workspace_bytes " + std::to_string(bytes) + " too large");
  }
  *out = bytes;
  return true;
}

template <typename Kernels>
bool read_kernels(const Kernels* kernels, const PayloadDesc& pl, uint64_t workspace_bytes,
                  const std::string& where, std::vector<KernelDesc>* out, std::string* error) {
  if (kernels == nullptr || kernels->size() == 0) {
    return fail(error, where, "no kernels");
  }
  out->resize(kernels->size());
  for (uint32_t i = 0; i < out->size(); ++i) {
    const std::string kw = (where.empty() ? "" : where + " ") + "kernel " + std::to_string(i);
    if (!read_kernel(kernels->Get(i), pl, workspace_bytes, kw, &(*out)[i], error)) return false;
  }
  return true;
}

bool read_plan(const fb::LaunchPlan* p, const PayloadDesc& pl, const std::string& where,
               LaunchPlanDesc* out, std::string* error) {
  if (p == nullptr) return fail(error, where, "missing");
  if (const auto* archs = p->archs()) {
    for (uint32_t arch : *archs) {
      if (arch < 10 || arch > 1000) {
        return fail(error, where, "implausible arch " + std::to_string(arch));
      }
      out->archs.push_back(arch);
    }
  }
  if (const auto* when = p->when()) {
    for (uint32_t i = 0; i < when->size(); ++i) {
      const fb::SizeRange* at = when->Get(i);
      if (at == nullptr) return fail(error, where, "missing range");
      // The Verifier does not check a struct vector's 8-byte alignment:
      // copy the struct out before its int64 fields are read.
      fb::SizeRange r;
      std::memcpy(&r, at, sizeof(r));
      const SizeRangeDesc d{r.arg(), r.dim(), r.min(), r.max()};
      if (d.arg >= pl.num_args()) {
        return fail(error, where, "range arg " + std::to_string(d.arg) + " out of range");
      }
      if (d.dim >= pl.arg_spec(d.arg).sizes.size()) {
        return fail(error, where, "range dim " + std::to_string(d.dim) + " out of range for arg " +
                                      std::to_string(d.arg));
      }
      if (d.min < 0 || d.min > d.max) {
        return fail(error, where, "range [" + std::to_string(d.min) + ", " + std::to_string(d.max) +
                                      "] of arg " + std::to_string(d.arg) + " dim " +
                                      std::to_string(d.dim) + " is empty");
      }
      out->when.push_back(d);
    }
  }
  if (!read_kernels(p->kernels(), pl, pl.workspace_bytes, where, &out->kernels, error)) {
    return false;
  }
  for (uint32_t arch : out->archs) {
    // A plan listing archs serves them from cubins only: no PTX or older-cubin fallback.
    for (const KernelDesc& k : out->kernels) {
      bool found = false;
      for (const ImageView& c : k.cubins) found |= c.arch == arch;
      if (!found) {
        return fail(error, where, "kernel " + k.name + " has no cubin for its arch sm_" +
                                      std::to_string(arch));
      }
    }
  }
  return true;
}

}  // namespace

bool keep_plans_for_arch(PayloadDesc* payload, int device_cc, std::string* error) {
  bool listed = false;
  std::vector<uint32_t> archs;  // every arch a plan lists, for the refusal
  for (const LaunchPlanDesc& p : payload->plans) {
    for (uint32_t arch : p.archs) {
      listed |= static_cast<int>(arch) == device_cc;
      if (std::find(archs.begin(), archs.end(), arch) == archs.end()) archs.push_back(arch);
    }
  }
  std::vector<LaunchPlanDesc> kept;
  for (LaunchPlanDesc& p : payload->plans) {
    const bool lists = std::find(p.archs.begin(), p.archs.end(), static_cast<uint32_t>(device_cc)) !=
                       p.archs.end();
    if (listed ? lists : p.archs.empty()) kept.push_back(std::move(p));
  }
  payload->plans = std::move(kept);
  if (payload->plans.empty()) {
    std::sort(archs.begin(), archs.end());
    std::string list;
    for (uint32_t a : archs) list += (list.empty() ? "" : ", ") + std::to_string(a);
    return fail(error, "", "no launch plan for sm_" + std::to_string(device_cc) +
                               " in this payload (its plans list archs [" + list + "])");
  }
  return true;
}

namespace {

// Identifier, verification and version; *root on success.
bool read_header(const void* data, size_t size, const fb::Payload** root, PayloadDesc* out,
                 std::string* error) {
  if (data == nullptr || size < 8) {
    return fail(error, "", "payload too short (" + std::to_string(size) + " bytes)");
  }
  if (!fb::PayloadBufferHasIdentifier(data)) {
    // Printable only: the bytes may be anything.
    std::string id;
    for (int i = 4; i < 8; ++i) {
      const unsigned char c = static_cast<const unsigned char*>(data)[i];
      id += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
    }
    return fail(error, "", "not a cuda_gqa payload: file identifier '" + id +
                               "', expected '" + kPayloadIdentifier + "'");
  }
  if (size > FLATBUFFERS_MAX_BUFFER_SIZE) {
    return fail(error, "", "payload larger than 2 GiB");
  }
  flatbuffers::Verifier verifier(static_cast<const uint8_t*>(data), size);
  if (!fb::VerifyPayloadBuffer(verifier)) {
    return fail(error, "", "corrupt payload: flatbuffers verification failed");
  }
  *root = fb::GetPayload(data);
  out->version = (*root)->version();
  if (out->version < kOldestPayloadVersion || out->version > kPayloadVersion) {
    return fail(error, "", "payload schema version " + std::to_string(out->version) +
                               ", this runtime reads versions " + std::to_string(kOldestPayloadVersion) +
                               " to " + std::to_string(kPayloadVersion));
  }
  return true;
}

bool read_arg_specs(const fb::Payload* p, PayloadDesc* out, std::string* error) {
  if (p->inputs() != nullptr) {
    out->inputs.resize(p->inputs()->size());
    for (uint32_t i = 0; i < out->inputs.size(); ++i) {
      if (!read_spec(p->inputs()->Get(i), "input " + std::to_string(i), &out->inputs[i], error)) return false;
    }
  }
  if (p->outputs() == nullptr || p->outputs()->size() == 0) {
    return fail(error, "", "payload has no outputs");
  }
  out->outputs.resize(p->outputs()->size());
  for (uint32_t i = 0; i < out->outputs.size(); ++i) {
    if (!read_spec(p->outputs()->Get(i), "output " + std::to_string(i), &out->outputs[i], error)) return false;
  }
  return true;
}

// A state or constant: static sizes, a name unique among the payload's
// buffers of its kind (*out holds those read before it).
template <typename Spec, typename Desc>  // fb::StateSpec/StateSpecDesc, fb::ConstantSpec/ConstantSpecDesc
bool read_named_buffer(const Spec* spec, const std::string& where, const std::vector<Desc>& before,
                       Desc* out, std::string* error) {
  if (spec != nullptr && spec->sizes() != nullptr) {
    for (uint32_t d = 0; d < spec->sizes()->size(); ++d) {
      int64_t size;  // memcpy: see read_spec
      std::memcpy(&size, spec->sizes()->Data() + d * sizeof(int64_t), sizeof(size));
      if (size == -1) return fail(error, where, "has dynamic sizes");
    }
  }
  if (!read_spec(spec, where, &out->spec, error)) return false;
  if (spec->name() == nullptr || spec->name()->size() == 0) return fail(error, where, "has no name");
  out->name.assign(spec->name()->c_str(), spec->name()->size());
  if (std::strlen(out->name.c_str()) != out->name.size()) return fail(error, where, "name contains NUL");
  for (const Desc& other : before) {
    if (other.name == out->name) return fail(error, where, "repeats the name '" + out->name + "'");
  }
  return true;
}

template <typename Specs, typename Desc>
bool read_named_buffers(const Specs* specs, const std::string& what, std::vector<Desc>* out,
                        std::string* error) {
  out->clear();
  if (specs == nullptr) return true;
  out->reserve(specs->size());
  for (uint32_t i = 0; i < specs->size(); ++i) {
    Desc desc;
    if (!read_named_buffer(specs->Get(i), what + " " + std::to_string(i), *out, &desc, error)) return false;
    out->push_back(std::move(desc));
  }
  return true;
}

bool read_all_size_from(const fb::Payload* p, PayloadDesc* out, std::string* error) {
  for (size_t i = 0; i < out->num_args(); ++i) {
    const bool input = i < out->inputs.size();
    const fb::TensorSpec* spec =
        input ? p->inputs()->Get(static_cast<uint32_t>(i))
              : p->outputs()->Get(static_cast<uint32_t>(i - out->inputs.size()));
    const std::string where = input ? "input " + std::to_string(i)
                                    : "output " + std::to_string(i - out->inputs.size());
    if (!read_size_from(spec, i, where, out, error)) return false;
  }
  return true;
}

bool read_plans(const fb::Payload* p, PayloadDesc* out, std::string* error) {
  if (p->plans() == nullptr || p->plans()->size() == 0) {
    return fail(error, "", "payload has no launch plans");
  }
  out->plans.resize(p->plans()->size());
  for (uint32_t i = 0; i < p->plans()->size(); ++i) {
    out->plans[i].payload_index = i;
    if (!read_plan(p->plans()->Get(i), *out, "plan " + std::to_string(i), &out->plans[i], error)) return false;
  }
  return true;
}

// Payload.position_bounds: each names an int32/int64 input, and for a start
// position an input dimension that counts its rows.
bool read_position_bounds(const fb::Payload* p, PayloadDesc* out, std::string* error) {
  if (p->position_bounds() == nullptr) return true;
  for (uint32_t i = 0; i < p->position_bounds()->size(); ++i) {
    const fb::PositionBound* b = p->position_bounds()->Get(i);
    const std::string where = "position bound " + std::to_string(i);
    if (b == nullptr) return fail(error, where, "is missing");
    PositionBoundDesc desc;
    desc.arg = b->arg();
    desc.start_only = b->start_only();
    desc.rows_arg = b->rows_arg();
    desc.rows_dim = b->rows_dim();
    desc.bound = b->bound();
    desc.token_ids = b->index() == fb::BoundedIndex::TokenId;
    if (b->index() != fb::BoundedIndex::CachePosition && !desc.token_ids) {
      return fail(error, where, "bounds indices of unknown kind " + std::to_string(static_cast<int>(b->index())));
    }
    if (desc.token_ids && desc.start_only) return fail(error, where, "bounds token ids as a start position");
    if (desc.arg >= out->inputs.size()) return fail(error, where, "names input " + std::to_string(desc.arg) +
                                                                      " of " + std::to_string(out->inputs.size()));
    const DType dtype = out->inputs[desc.arg].dtype;
    if (dtype != DType::kInt32 && dtype != DType::kInt64) {
      return fail(error, where, std::string("names input ") + std::to_string(desc.arg) + " of dtype " +
                                    dtype_name(dtype) + ", not int32 or int64");
    }
    if (desc.bound < 0) return fail(error, where, "has a negative bound");
    if (desc.start_only && (desc.rows_arg >= out->inputs.size() ||
                            desc.rows_dim >= out->inputs[desc.rows_arg].sizes.size())) {
      return fail(error, where, "counts rows along input " + std::to_string(desc.rows_arg) + " dim " +
                                    std::to_string(desc.rows_dim) + ", which does not exist");
    }
    out->position_bounds.push_back(desc);
  }
  return true;
}

}  // namespace

bool parse_payload(const void* data, size_t size, std::vector<uint64_t>* aligned_storage,
                   PayloadDesc* out, std::string* error) {
  *out = PayloadDesc();
  if (data != nullptr && size > 0 && (reinterpret_cast<uintptr_t>(data) & 7u) != 0) {
    aligned_storage->resize((size + 7) / 8);
    std::memcpy(aligned_storage->data(), data, size);
    data = aligned_storage->data();
  }
  const fb::Payload* p = nullptr;
  if (!read_header(data, size, &p, out, error) || !read_arg_specs(p, out, error) ||
      !read_named_buffers(p->states(), "state", &out->states, error) ||
      !read_named_buffers(p->constants(), "constant", &out->constants, error)) {
    return false;
  }
  // Param and grid args are one byte wide.
  if (out->num_launch_args() > 256) {
    return fail(error, "", "more than 256 delegate arguments");
  }
  return read_all_size_from(p, out, error) &&
         read_workspace_bytes(p->workspace_bytes(), "", &out->workspace_bytes, error) &&
         read_plans(p, out, error) && read_position_bounds(p, out, error);
}

}  // namespace cuda_gqa
