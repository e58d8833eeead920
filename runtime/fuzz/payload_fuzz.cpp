// cuda_gqa_payload_fuzz: feeds seeded truncations and byte flips of real
// payload files through what init and execute do with a payload (parse,
// arch-variant choice, image selection, scratch sizing, constant binding,
// launch evaluation),
// and counts what was accepted. Built plainly and, with CUDA_GQA_SANITIZE,
// under AddressSanitizer and UndefinedBehaviorSanitizer, where any
// out-of-bounds read or undefined operation aborts the run.
//
//   cuda_gqa_payload_fuzz [--seed N] [--truncations N] [--flips N] [--variations N] PAYLOAD...
//
// --truncations N: N prefixes of random lengths, or every proper prefix when
// N >= the payload's size. --flips N: N copies with 1 to 16 bytes replaced,
// half of them only outside the images (where the structure is); each at
// most 10^7. Every accepted case is evaluated at the largest contiguous
// arguments (states included) and, --variations N times per arch (default
// 4, at most 64), at drawn sizes, strides and addresses, as host and as
// device tensors (the layout checks of execute included). Each case
// is copied into a buffer of exactly its size, at an odd address every other
// case, so reads past the end hit the sanitizer's red zone and both the
// aligned and the copying path of parse_payload run.
//
// Prints one JSON line per file. Exit status: 0 ran to the end; 2 bad usage,
// an unreadable file, or a file that is not a valid payload to begin with.
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "../runner/cli_args.h"
#include "kernel_module.h"
#include "launcher.h"
#include "payload.h"

namespace {

using cuda_gqa::ArgDesc;
using cuda_gqa::KernelDesc;
using cuda_gqa::PayloadDesc;

// Compute capabilities whose launch plans the evaluation walks.
constexpr int kDeviceArchs[] = {75, 80, 86, 89, 90, 100, 120};

struct Stats {
  uint64_t truncations = 0;
  uint64_t truncations_accepted = 0;
  uint64_t flips = 0;
  uint64_t flips_accepted = 0;
  uint64_t launches_evaluated = 0;
  uint64_t launches_refused = 0;
};

// Byte ranges [begin, end) of the compiled images inside the payload.
std::vector<std::pair<size_t, size_t>> image_ranges(const PayloadDesc& p, const uint8_t* base) {
  std::vector<std::pair<size_t, size_t>> ranges;
  auto add = [&](const cuda_gqa::ImageView& v) {
    if (v.size == 0) return;
    const size_t begin = static_cast<size_t>(v.data - base);
    ranges.emplace_back(begin, begin + v.size);
  };
  auto add_kernels = [&](const std::vector<KernelDesc>& kernels) {
    for (const KernelDesc& k : kernels) {
      for (const cuda_gqa::ImageView& c : k.cubins) add(c);
      add(k.ptx);
    }
  };
  for (const cuda_gqa::LaunchPlanDesc& plan : p.plans) add_kernels(plan.kernels);
  return ranges;
}

bool inside_an_image(size_t pos, const std::vector<std::pair<size_t, size_t>>& ranges) {
  for (const auto& r : ranges) {
    if (pos >= r.first && pos < r.second) return true;
  }
  return false;
}

// Contiguous arguments of the payload's largest shapes (the max sizes) at
// 256-byte aligned fake addresses: every launch argument, the states (which
// init describes alike) included.
std::vector<ArgDesc> contiguous_args(const PayloadDesc& p) {
  std::vector<ArgDesc> args(p.num_launch_args());
  for (size_t i = 0; i < args.size(); ++i) {
    const cuda_gqa::TensorSpecDesc& spec = p.arg_spec(i);
    ArgDesc& a = args[i];
    a.dtype = static_cast<int>(spec.dtype);
    a.rank = spec.sizes.size();
    int64_t stride = 1;
    for (size_t d = a.rank; d-- > 0;) {
      a.sizes[d] = spec.max_sizes[d];
      a.strides[d] = stride;
      // Sizes are bounded by parse_payload; saturate rather than overflow.
      if (__builtin_mul_overflow(stride, a.sizes[d], &stride)) stride = INT64_MAX / 2;
    }
    a.address = 0x7f0000000000ull + (uint64_t{i} << 36);
  }
  return args;
}

// A variation of the caller's arguments (never the states, which init
// describes): sizes drawn within the bounds (the size_from dims then follow
// their sources, as execute resizes outputs), and strides contiguous,
// padded, zero, negative or huge, addresses off by a few bytes.
void vary_args(const PayloadDesc& p, std::mt19937_64& rng, std::vector<ArgDesc>* args) {
  auto below = [&](uint64_t n) { return n == 0 ? 0 : rng() % n; };
  static constexpr int64_t kOddStrides[] = {0, -1, -64, 3, 1 << 20, INT64_MAX / 4, INT64_MIN / 4};
  for (size_t i = 0; i < p.num_args(); ++i) {
    ArgDesc& a = (*args)[i];
    const cuda_gqa::TensorSpecDesc& spec = p.arg_spec(i);
    for (size_t d = 0; d < a.rank && d < cuda_gqa::kMaxRank; ++d) {
      if (spec.sizes[d] < 0) a.sizes[d] = static_cast<int64_t>(below(static_cast<uint64_t>(spec.max_sizes[d]) + 2));
    }
    for (const cuda_gqa::DimSourceDesc& src : spec.size_from) {
      if (src.arg < i && src.arg_dim < (*args)[src.arg].rank && below(8) != 0) {
        a.sizes[src.dim] = (*args)[src.arg].sizes[src.arg_dim];
      }
    }
    const int64_t pad = below(3) == 0 ? static_cast<int64_t>(below(64)) : 0;
    int64_t stride = 1;
    for (size_t d = a.rank; d-- > 0;) {
      a.strides[d] = below(16) == 0 ? kOddStrides[below(7)] : stride;
      const int64_t extent = (d + 1 == a.rank ? a.sizes[d] + pad : a.sizes[d]);
      if (__builtin_mul_overflow(stride, extent, &stride)) stride = INT64_MAX / 2;
    }
    if (below(8) == 0) a.address += below(32);
  }
}

// What init uploads: each constant at its own 256-byte aligned (fake) device address.
std::vector<CUdeviceptr> fake_constants(const PayloadDesc& p) {
  std::vector<CUdeviceptr> constants(p.constants.size());
  for (size_t i = 0; i < constants.size(); ++i) constants[i] = 0x7b0000000000ull + (uint64_t{i} << 32);
  return constants;
}

// Counts kernel k's launch over args, evaluated as execute would (fake workspace, scratch
// and constant addresses) or refused; a kernel whose scratch init would refuse is skipped.
void count_launch(const PayloadDesc& p, const KernelDesc& k, const std::vector<ArgDesc>& args,
                  const std::vector<CUdeviceptr>& constants, Stats* stats) {
  std::string error;
  cuda_gqa::ScratchDesc scratch;
  scratch.workspace = p.workspace_bytes > 0 ? 0x7e0000000000ull : 0;
  scratch.constants = constants.data();
  scratch.num_constants = constants.size();
  if (k.global_scratch_bytes > 0 || k.profile_scratch_bytes > 0) {
    if (!cuda_gqa::bounded_grid_ctas(p, k, &scratch.ctas, &error)) return;
    scratch.global = k.global_scratch_bytes > 0 ? 0x7d0000000000ull : 0;
    scratch.profile = k.profile_scratch_bytes > 0 ? 0x7c0000000000ull : 0;
  }
  if (!cuda_gqa::check_scratch(k, scratch, &error)) return;
  std::vector<uint64_t> values(k.params.size());
  cuda_gqa::LaunchConfig config;
  const auto err = cuda_gqa::evaluate_launch(k, args.data(), args.size(), scratch, values.data(), &config, &error);
  ++(err == executorch::runtime::Error::Ok ? stats->launches_evaluated : stats->launches_refused);
}

// Everything execute runs on one set of arguments: the argument checks (with
// the layout checks of host and device tensors), the plan choice and the
// evaluation of each of its kernels. Counts an evaluation that passed or was
// refused.
void evaluate_args(const PayloadDesc& p, const std::vector<ArgDesc>& args, bool host, Stats* stats) {
  std::string error;
  for (size_t i = 0; i < args.size(); ++i) {
    if (!cuda_gqa::check_arg(p.arg_spec(i), args.data(), i, p.inputs.size(), &error) ||
        !cuda_gqa::check_layout(args.data(), i, p.inputs.size(), host && i < p.num_args(), &error)) {
      ++stats->launches_refused;
      return;
    }
  }
  size_t selected = 0;
  if (!cuda_gqa::select_plan(p, args.data(), args.size(), &selected, &error)) {
    ++stats->launches_refused;
    return;
  }
  const std::vector<CUdeviceptr> constants = fake_constants(p);
  for (const KernelDesc& k : p.plans[selected].kernels) {
    count_launch(p, k, args, constants, stats);
  }
}

// What init and execute do with an accepted payload, for each device arch:
// every kernel's image choice and launch at the largest contiguous
// arguments, then `variations` draws of other shapes and strides.
void evaluate_accepted(const PayloadDesc& parsed, std::mt19937_64& rng, int variations, Stats* stats) {
  std::string error;
  for (int cc : kDeviceArchs) {
    PayloadDesc p = parsed;
    if (!cuda_gqa::keep_plans_for_arch(&p, cc, &error)) continue;
    const std::vector<ArgDesc> args = contiguous_args(p);
    bool args_fit = true;
    for (size_t i = 0; i < args.size(); ++i) {
      args_fit &= cuda_gqa::check_arg(p.arg_spec(i), args.data(), i, p.inputs.size(), &error);
    }
    if (!args_fit) continue;
    const std::vector<CUdeviceptr> constants = fake_constants(p);
    size_t selected = 0;
    ++(cuda_gqa::select_plan(p, args.data(), args.size(), &selected, &error)
           ? stats->launches_evaluated
           : stats->launches_refused);
    for (const cuda_gqa::LaunchPlanDesc& plan : p.plans) {
      for (const KernelDesc& k : plan.kernels) {
        cuda_gqa::ImageChoice choice;
        if (!cuda_gqa::select_image(k, cc, &choice, &error)) continue;
        count_launch(p, k, args, constants, stats);
      }
    }
    for (int v = 0; v < variations; ++v) {
      std::vector<ArgDesc> varied = args;
      vary_args(p, rng, &varied);
      evaluate_args(p, varied, v % 2 == 0, stats);
    }
  }
}

// Parses `data` from an exact-size heap copy (at an odd address when
// `misalign`); true if accepted, and then evaluates it.
bool run_case(const uint8_t* data, size_t size, bool misalign, std::mt19937_64& rng, int variations,
              Stats* stats) {
  const size_t offset = misalign ? 1 : 0;
  std::unique_ptr<uint8_t[]> copy(size + offset > 0 ? new uint8_t[size + offset] : nullptr);
  if (size > 0) std::memcpy(copy.get() + offset, data, size);
  std::vector<uint64_t> aligned_storage;
  PayloadDesc parsed;
  std::string error;
  const bool ok = cuda_gqa::parse_payload(size > 0 ? copy.get() + offset : nullptr, size,
                                          &aligned_storage, &parsed, &error);
  if (ok) evaluate_accepted(parsed, rng, variations, stats);
  return ok;
}

bool read_file(const char* path, std::vector<uint8_t>* out, std::string* error) {
  if (!cuda_gqa_runner::readable_regular_file(path, error)) return false;
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    *error = std::string("cannot open ") + path;
    return false;
  }
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  if (f.bad()) *error = std::string("cannot read ") + path;
  return !f.bad();
}

// Most truncations or flips per file: a run of minutes at most, plain or sanitized.
constexpr long long kMaxCases = 10000000;
constexpr long long kMaxVariations = 64;

// `text` as a JSON string literal (paths may hold quotes or backslashes).
std::string json_string(const char* text) {
  std::string out = "\"";
  for (const char* c = text; *c != '\0'; ++c) {
    if (*c == '"' || *c == '\\') out += '\\';
    out += *c;
  }
  return out + "\"";
}

int usage(const std::string& why) {
  std::fprintf(stderr,
               "error: %s\nusage: cuda_gqa_payload_fuzz [--seed N] [--truncations N] "
               "[--flips N] [--variations N] PAYLOAD...\n",
               why.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  long long seed = 1234, truncations = 2000, flips = 4000, variations = 4;
  std::vector<const char*> files;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    long long* target = a == "--seed"          ? &seed
                        : a == "--truncations" ? &truncations
                        : a == "--flips"       ? &flips
                        : a == "--variations"  ? &variations
                                               : nullptr;
    if (target != nullptr) {
      const long long high = a == "--seed" ? INT64_MAX : a == "--variations" ? kMaxVariations : kMaxCases;
      if (i + 1 >= argc) return usage("no value for " + a);
      const char* value = argv[++i];
      if (!cuda_gqa_runner::parse_integer(value, 0, high, target)) {
        return usage("bad " + a + " " + cuda_gqa_runner::out_of_range(value, 0, high));
      }
    } else if (!a.empty() && a[0] == '-') {
      return usage("unknown option " + a);
    } else {
      files.push_back(argv[i]);
    }
  }
  if (files.empty()) return usage("no payload files");

  for (const char* path : files) {
    std::vector<uint8_t> valid;
    std::string why;
    if (!read_file(path, &valid, &why)) return usage(why);
    PayloadDesc parsed;
    std::vector<uint64_t> storage;
    std::string error;
    // Aligned copy so that image views point into `storage`, whose offsets
    // equal the file's.
    storage.resize((valid.size() + 7) / 8);
    if (!valid.empty()) std::memcpy(storage.data(), valid.data(), valid.size());
    std::vector<uint64_t> unused;
    if (!cuda_gqa::parse_payload(storage.data(), valid.size(), &unused, &parsed, &error)) {
      std::fprintf(stderr, "error: %s is not a valid payload to start from: %s\n", path,
                   error.c_str());
      return 2;
    }
    const auto images =
        image_ranges(parsed, reinterpret_cast<const uint8_t*>(storage.data()));

    // mt19937_64's output sequence is fixed by the standard; the mapping
    // to ranges below is ours, so the cases are the same everywhere.
    std::mt19937_64 rng(static_cast<uint64_t>(seed));
    // The argument variations draw from a stream of their own, so that the
    // cases of a seed do not depend on --variations.
    std::mt19937_64 arg_rng(static_cast<uint64_t>(seed) ^ 0x9e3779b97f4a7c15ull);
    auto below = [&](uint64_t n) { return n == 0 ? 0 : rng() % n; };
    Stats stats;
    const size_t size = valid.size();
    const bool every_prefix = static_cast<uint64_t>(truncations) >= size;
    const uint64_t num_truncations = every_prefix ? size : static_cast<uint64_t>(truncations);
    for (uint64_t t = 0; t < num_truncations; ++t) {
      const size_t n = every_prefix ? static_cast<size_t>(t) : static_cast<size_t>(below(size));
      ++stats.truncations;
      stats.truncations_accepted += run_case(valid.data(), n, t % 2 == 1, arg_rng, static_cast<int>(variations), &stats);
    }
    static constexpr int kFlipCounts[] = {1, 1, 2, 4, 16};
    static constexpr uint8_t kSpecialBytes[] = {0x00, 0xff, 0x7f, 0x80, 0x01};
    std::vector<uint8_t> mutated = valid;
    std::vector<size_t> changed;
    for (long long f = 0; f < flips && size > 0; ++f) {
      const bool structure_only = f % 2 == 0 && images.size() > 0;
      const int count = kFlipCounts[below(5)];
      for (int c = 0; c < count; ++c) {
        size_t pos = static_cast<size_t>(below(size));
        // Structure bytes are a small part of a payload with cubins; draw
        // again until one is hit (bounded: a payload of images only keeps the last).
        for (int tries = 0; structure_only && tries < 64 && inside_an_image(pos, images); ++tries) {
          pos = static_cast<size_t>(below(size));
        }
        mutated[pos] = below(4) == 0 ? kSpecialBytes[below(5)] : static_cast<uint8_t>(rng());
        changed.push_back(pos);
      }
      ++stats.flips;
      stats.flips_accepted += run_case(mutated.data(), mutated.size(), f % 2 == 1, arg_rng, static_cast<int>(variations),
                                         &stats);
      for (size_t pos : changed) mutated[pos] = valid[pos];
      changed.clear();
    }
    std::printf("{\"file\": %s, \"size\": %zu, \"truncations\": %" PRIu64
                ", \"truncations_accepted\": %" PRIu64 ", \"flips\": %" PRIu64
                ", \"flips_accepted\": %" PRIu64 ", \"launches_evaluated\": %" PRIu64
                ", \"launches_refused\": %" PRIu64 "}\n",
                json_string(path).c_str(), size, stats.truncations, stats.truncations_accepted, stats.flips,
                stats.flips_accepted, stats.launches_evaluated, stats.launches_refused);
    std::fflush(stdout);
  }
  return 0;
}
