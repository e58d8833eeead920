// cuda_gqa_llm_runner: greedy generation with a .pte from export_llm
// (python -m cuda_gqa.export.llm), in C++ with ExecuTorch's runtime: the
// loop of python -m cuda_gqa.export.llm.generate, for GPU machines without
// executorch's Python package.
//
//   cuda_gqa_llm_runner MODEL.pte [--data FILE.ptd] --prompt FILE [--new-tokens N] [--device N]
//                       [--expected-tokens FILE] [--expected-logits FILE]
//                       [--atol X] [--rtol X] [--tokens-out FILE] [--logits-out FILE] [--no-launch-graphs]
//                       [--no-programmatic-launch] [--device-argmax]
//   cuda_gqa_llm_runner MODEL.pte [--data FILE.ptd] --decode-at P [--steps N] [--warmup W]
//
// --data: the program's external weights (a .ptd from export_llm
// external_weights / --external-weights), loaded with it (both mmapped).
//
// --prompt: int64 token ids, raw little-endian. The prompt is prefilled from
// position 0 in chunks of the program's prefill length (the last chunk
// overlapping the one before, or padded when the prompt is shorter than one
// chunk), then --new-tokens tokens are decoded greedily one at a time.
// --expected-tokens (int64) and --expected-logits (float32, one row of vocab
// logits per generated token: the prefill's last row, then each decode step's)
// are compared; an element passes when |got - want| <= atol + rtol * |want|.
// Logits rows are compared up to the first token that differs (later rows
// come from other inputs than eager's); that token still passes when eager's
// logits of the two tokens are within that tolerance of each other (a tie).
// Prints prefill time, decode time per token (median, p90) and tokens/s.
//
// --decode-at P times decode steps alone: W untimed steps, then N timed ones,
// each at positions P .. P+N-1 (no prefill: the cache holds whatever is there,
// zeros or an earlier run's rows; the GPU delegates attend kv_len = position
// + 1 keys, attention left on the CPU attends its whole cache whatever the
// position), each step fed the last step's greedy token. Prints the step
// time's median and p90 and tokens/s. Both modes also print the wall time
// spent inside CudaGqaBackend's execute calls per step
// (cuda_gqa_execute_time_ns(): its copies, launches and wait for the kernels)
// and its share of the step, when the program has such delegates.
//
// --teacher-forcing feeds each decode step eager's token instead of the
// program's own, so every row's logits come from eager's inputs and all are
// compared; a row whose argmax differs from eager's token passes only as a tie
// (eager's logits of the two within tolerance).
//
// --device-argmax: decode steps (and --decode-at's) call the program's
// decode_token method (export_llm --decode-token-method), which returns the
// greedy token id computed on the GPU instead of the vocabulary's logits;
// the first token still comes from prefill's logits. No logits rows then
// exist past the first, so it excludes --expected-logits, --logits-out and
// --teacher-forcing.
//
// Exit status: 0 ok, 1 a comparison failed, 2 bad usage or a load/run error.

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/runtime/platform/runtime.h>

#include "backend_load_options.h"
#include "cli_args.h"
#include "cuda_gqa_c_api.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using cuda_gqa_runner::out_of_range;
using cuda_gqa_runner::parse_integer;
using cuda_gqa_runner::readable_regular_file;

namespace {

constexpr int kExitOk = 0;
constexpr int kExitMismatch = 1;
constexpr int kExitError = 2;

struct Options {
  std::string model, data, prompt, expected_tokens, expected_logits, tokens_out, logits_out;
  long new_tokens = 16;
  long device = 0;
  long decode_at = -1, steps = 32, warmup = 3;
  long prefill_warmup = 0;  // untimed prefills of the prompt before the timed one
  bool teacher_forcing = false;
  bool device_argmax = false;  // decode steps through decode_token (token ids, no logits)
  double atol = 2e-2, rtol = 1.6e-2;
  bool launch_graphs = true;        // CudaGqaBackend's "launch_graphs"
  bool programmatic_launch = true;  // CudaGqaBackend's "programmatic_launch"
};

int fail(const std::string& what, const std::string& detail) {
  std::fprintf(stderr, "error: %s%s%s\n", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  return kExitError;
}

int fail(const std::string& what, Error err) {
  char code[16];
  std::snprintf(code, sizeof(code), "0x%x", static_cast<unsigned>(err));
  return fail(what, std::string("executorch error ") + code);
}

void usage(FILE* out) {
  std::fprintf(out,
               "usage: cuda_gqa_llm_runner MODEL.pte [--data FILE] --prompt FILE [--new-tokens N] [--device N]\n"
               "         [--expected-tokens FILE] [--expected-logits FILE] [--atol X] [--rtol X]\n"
               "         [--tokens-out FILE] [--logits-out FILE] [--no-launch-graphs]\n"
               "         [--no-programmatic-launch] [--prefill-warmup W]\n"
               "       cuda_gqa_llm_runner MODEL.pte [--data FILE] --decode-at P [--steps N] [--warmup W]\n"
               "  --data FILE             the program's external weights (.ptd)\n"
               "  --prompt FILE           int64 token ids (raw little-endian)\n"
               "  --new-tokens N          tokens to generate greedily (default 16)\n"
               "  --device N              CUDA device for CudaGqaBackend delegates (default 0)\n"
               "  --expected-tokens FILE  int64 ids the generation must reproduce\n"
               "  --expected-logits FILE  float32 [new tokens, vocab] logits to compare\n"
               "  --tokens-out FILE       write the generated ids (int64)\n"
               "  --logits-out FILE       write the logits rows (float32 [new tokens, vocab])\n"
               "  --teacher-forcing       feed eager's tokens (--expected-tokens), not the program's: every\n"
               "                          row of logits is then compared\n"
               "  --decode-at P           time decode steps alone at positions P.. (no prefill)\n"
               "  --steps N               timed steps of --decode-at (default 32)\n"
               "  --warmup W              untimed steps before them (default 3)\n"
               "  --prefill-warmup W      prefill the prompt W times untimed before the timed prefill\n"
               "                          (the first call of a method builds its CUDA graphs)\n"
               "  --no-launch-graphs      CudaGqaBackend option launch_graphs off: kernels launched one\n"
               "                          by one instead of one CUDA graph per launch plan\n"
               "  --device-argmax         decode steps call decode_token (the greedy token id from the GPU)\n"
               "                          instead of decode (no logits rows past prefill's)\n"
               "  --no-programmatic-launch  CudaGqaBackend option programmatic_launch off: no kernel\n"
               "                          launched as a programmatic dependent of the one before\n");
}

bool parse_number(const char* s, double* out) {
  char* end = nullptr;
  *out = std::strtod(s, &end);
  return end != s && *end == '\0' && std::isfinite(*out) && *out >= 0;
}

// Most tokens, steps or positions a flag may name.
constexpr long long kMaxCount = 10000000;

int parse_args(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    auto next = [&]() { return std::string(argv[++i]); };
    double number = 0;
    if (a == "-h" || a == "--help") {
      usage(stdout);
      return kExitOk;
    } else if (a == "--no-launch-graphs") {
      o->launch_graphs = false;
    } else if (a == "--no-programmatic-launch") {
      o->programmatic_launch = false;
    } else if (a == "--device-argmax") {
      o->device_argmax = true;
    } else if (a == "--prompt" && has_value) {
      o->prompt = next();
    } else if (a == "--data" && has_value) {
      o->data = next();
    } else if (a == "--teacher-forcing") {
      o->teacher_forcing = true;
    } else if (a == "--expected-tokens" && has_value) {
      o->expected_tokens = next();
    } else if (a == "--expected-logits" && has_value) {
      o->expected_logits = next();
    } else if (a == "--tokens-out" && has_value) {
      o->tokens_out = next();
    } else if (a == "--logits-out" && has_value) {
      o->logits_out = next();
    } else if ((a == "--new-tokens" || a == "--device" || a == "--decode-at" || a == "--steps" ||
                a == "--warmup" || a == "--prefill-warmup") &&
               has_value) {
      const std::string v = next();
      // Token counts and positions: at most kMaxCount; a device index fits the tensors' int8.
      const long long low = a == "--new-tokens" || a == "--steps" ? 1 : 0;
      const long long high = a == "--device" ? 127 : kMaxCount;
      long long value = 0;
      if (!parse_integer(v.c_str(), low, high, &value)) return fail("bad " + a, out_of_range(v, low, high));
      long* field = a == "--new-tokens" ? &o->new_tokens
                    : a == "--device"   ? &o->device
                    : a == "--decode-at" ? &o->decode_at
                    : a == "--steps"    ? &o->steps
                    : a == "--warmup"   ? &o->warmup
                                        : &o->prefill_warmup;
      *field = static_cast<long>(value);
    } else if ((a == "--atol" || a == "--rtol") && has_value) {
      const std::string v = next();
      if (!parse_number(v.c_str(), &number)) return fail("bad " + a, v);
      (a == "--atol" ? o->atol : o->rtol) = number;
    } else if (!a.empty() && a[0] != '-' && o->model.empty()) {
      o->model = a;
    } else {
      usage(stderr);
      return fail("unknown or incomplete argument", a);
    }
  }
  if (o->model.empty() || (o->prompt.empty() && o->decode_at < 0)) {
    usage(stderr);
    return fail("a model and --prompt are needed (or --decode-at P)", "");
  }
  if (o->new_tokens < 1) return fail("--new-tokens", "at least 1");
  if (o->steps < 1) return fail("--steps", "at least 1");
  if (o->teacher_forcing && o->expected_tokens.empty()) return fail("--teacher-forcing", "needs --expected-tokens");
  if (o->device_argmax && (o->teacher_forcing || !o->expected_logits.empty() || !o->logits_out.empty())) {
    return fail("--device-argmax", "decode steps return token ids, no logits: it excludes --teacher-forcing, "
                                   "--expected-logits and --logits-out");
  }
  const std::pair<const char*, const std::string*> files[] = {
      {"model", &o->model}, {"--data", &o->data}, {"--prompt", &o->prompt},
      {"--expected-tokens", &o->expected_tokens}, {"--expected-logits", &o->expected_logits}};
  std::string error;
  for (const auto& file : files) {
    if (!file.second->empty() && !readable_regular_file(*file.second, &error)) return fail(file.first, error);
  }
  return -1;
}

template <typename T>
bool read_array(const std::string& path, std::vector<T>* out, std::string* error) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) {
    *error = "cannot open " + path;
    return false;
  }
  const std::streamsize n = f.tellg();
  if (n < 0) {
    *error = "cannot read " + path + " (not a regular file?)";
    return false;
  }
  if (n % static_cast<std::streamsize>(sizeof(T)) != 0) {
    *error = path + ": " + std::to_string(n) + " bytes is not a whole number of elements";
    return false;
  }
  f.seekg(0);
  out->resize(static_cast<size_t>(n) / sizeof(T));
  if (n > 0 && !f.read(reinterpret_cast<char*>(out->data()), n)) {
    *error = "cannot read " + path;
    return false;
  }
  return true;
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const size_t idx = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::min(idx == 0 ? 0 : idx - 1, v.size() - 1)];
}

// The int64 a constant method (get_prefill_len, ...) returns.
bool constant(Module& module, const char* method, int64_t* out, std::string* error) {
  auto result = module.execute(method);
  if (!result.ok() || result->empty() || !(*result)[0].isInt()) {
    *error = std::string("the program has no int constant method ") + method +
             " (not a .pte from export_llm?)";
    return false;
  }
  *out = (*result)[0].toInt();
  return true;
}

// Wall time spent inside CudaGqaBackend's execute calls between two points.
struct BackendClock {
  uint64_t ns = cuda_gqa_execute_time_ns(), calls = cuda_gqa_execute_count();
  double ms_since() const { return static_cast<double>(cuda_gqa_execute_time_ns() - ns) / 1e6; }
  uint64_t calls_since() const { return cuda_gqa_execute_count() - calls; }
};

// Per-step times: "median M ms, p90 P ms" and the backend's share of them.
void print_attention(const std::vector<double>& step_ms, const std::vector<double>& backend_ms, uint64_t calls) {
  if (calls == 0) {
    std::printf("attention: no CudaGqaBackend calls (attention on the CPU)\n");
    return;
  }
  std::vector<double> shares;
  for (size_t i = 0; i < step_ms.size(); ++i) shares.push_back(backend_ms[i] / step_ms[i]);
  std::printf("attention: CudaGqaBackend execute median %.3f ms per step (%.1f%% of the step, median of the "
              "steps' shares), p90 %.3f ms, %llu calls per step\n",
              percentile(backend_ms, 0.5), 100.0 * percentile(shares, 0.5), percentile(backend_ms, 0.9),
              static_cast<unsigned long long>(calls / step_ms.size()));
}

constexpr const char* kTokenMethod = "decode_token";

int64_t argmax(const std::vector<float>& v) {
  return static_cast<int64_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

struct Decoder {
  Module* module;
  int64_t prefill_len = 0, max_seq_len = 0;

  // Runs `method` on tokens written at `position`; copies row `row` of its
  // float32 logits [1, L, vocab] into *logits, or, from a method returning the
  // last row's logits only ([1, 1, vocab]), row L - 1's; sets *has_row false
  // when it returned no logits for row `row`.
  Error step(const char* method, std::vector<int64_t> tokens, int64_t position, int64_t row,
             std::vector<float>* logits, bool* has_row = nullptr) {
    const auto rows = static_cast<int64_t>(tokens.size());
    const auto length = static_cast<executorch::aten::SizesType>(tokens.size());
    auto token_tensor = executorch::extension::make_tensor_ptr({1, length}, std::move(tokens));
    auto position_tensor = executorch::extension::make_tensor_ptr({1}, std::vector<int64_t>{position});
    auto result = module->execute(method, {EValue(*token_tensor), EValue(*position_tensor)});
    if (!result.ok()) return result.error();
    const Tensor& out = (*result)[0].toTensor();
    if (out.scalar_type() != ScalarType::Float || out.dim() != 3 || (out.size(1) != rows && out.size(1) != 1)) {
      return Error::InvalidProgram;
    }
    const bool last_row_only = out.size(1) != rows;
    if (has_row != nullptr) *has_row = !last_row_only || row == rows - 1;
    if (last_row_only && row != rows - 1) return Error::Ok;
    const auto vocab = static_cast<size_t>(out.size(2));
    const float* data = out.const_data_ptr<float>() + static_cast<size_t>(last_row_only ? 0 : row) * vocab;
    logits->assign(data, data + vocab);
    return Error::Ok;
  }

  // One decode step through decode_token: `token` at `position` in, the
  // greedy next token id (int64 [1, 1], computed on the device) out.
  Error next_token(int64_t token, int64_t position, int64_t* next) {
    auto token_tensor = executorch::extension::make_tensor_ptr({1, 1}, std::vector<int64_t>{token});
    auto position_tensor = executorch::extension::make_tensor_ptr({1}, std::vector<int64_t>{position});
    auto result = module->execute(kTokenMethod, {EValue(*token_tensor), EValue(*position_tensor)});
    if (!result.ok()) return result.error();
    const Tensor& out = (*result)[0].toTensor();
    if (out.scalar_type() != ScalarType::Long || out.numel() != 1) return Error::InvalidProgram;
    *next = out.const_data_ptr<int64_t>()[0];
    return Error::Ok;
  }

  // A decode step fed `token` at `position`: the next greedy token, from
  // decode_token or from decode's logits (kept in *logits).
  Error decode(bool device_argmax, int64_t token, int64_t position, std::vector<float>* logits, int64_t* next) {
    if (device_argmax) return next_token(token, position, next);
    const Error err = step("decode", {token}, position, 0, logits);
    if (err == Error::Ok) *next = argmax(*logits);
    return err;
  }
};

// Loads the methods a run calls; decode_token only with --device-argmax, and
// refused with a clear error where the program has none.
int load_methods(Module& module, const Options& opt) {
  std::vector<const char*> methods = {"prefill", "decode"};
  if (opt.device_argmax) {
    const auto names = module.method_names();
    if (!names.ok() || names->count(kTokenMethod) == 0) {
      return fail("--device-argmax", opt.model + " has no decode_token method: export it with "
                                     "--decode-token-method (greedy_token_method=True)");
    }
    methods.push_back(kTokenMethod);
  }
  for (const char* method : methods) {
    const Error err = module.load_method(method);
    if (err != Error::Ok) {
      return fail(std::string("loading method '") + method + "' failed" +
                      (opt.data.empty() ? " (a program exported with external weights needs --data FILE.ptd)" : ""),
                  err);
    }
  }
  return kExitOk;
}

// Writes `prompt` into the cache from position 0 and leaves its last token's
// logits in *logits: whole chunks of the program's prefill length, then a
// last one overlapping the one before (it rewrites identical cache rows) or,
// for a prompt shorter than a chunk, padded; a padded prompt's last token
// comes from a decode step at its position when prefill returns its last row
// only. *calls: the prefill calls made.
Error prefill(Decoder* decoder, const std::vector<int64_t>& prompt, std::vector<float>* logits, size_t* calls) {
  const auto n = static_cast<int64_t>(prompt.size());
  const int64_t chunk = decoder->prefill_len;
  std::vector<int64_t> starts;
  for (int64_t s = 0; s + chunk <= n; s += chunk) starts.push_back(s);
  if (starts.empty()) starts.push_back(0);
  if (starts.back() + chunk < n) starts.push_back(n - chunk);
  *calls = starts.size();
  bool has_last = true;
  for (int64_t start : starts) {
    std::vector<int64_t> tokens(prompt.begin() + start, prompt.begin() + std::min(start + chunk, n));
    const int64_t last = static_cast<int64_t>(tokens.size()) - 1;
    tokens.resize(static_cast<size_t>(chunk), 0);
    const Error err = decoder->step("prefill", std::move(tokens), start, last, logits, &has_last);
    if (err != Error::Ok) return err;
  }
  return has_last ? Error::Ok : decoder->step("decode", {prompt.back()}, n - 1, 0, logits);
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  const int parsed = parse_args(argc, argv, &opt);
  if (parsed >= 0) return parsed;
  executorch::runtime::runtime_init();

  std::vector<int64_t> prompt;
  std::string error;
  if (opt.decode_at < 0) {
    if (!read_array(opt.prompt, &prompt, &error)) return fail("prompt", error);
    if (prompt.empty()) return fail("prompt", opt.prompt + " holds no tokens");
  }

  // export_llm plans the caches its methods share (share_mutable_buffers) in
  // one arena, which the methods must then be given in common. External
  // weights (GBs) are mmapped rather than read into memory.
  const auto load_start = std::chrono::steady_clock::now();
  std::unique_ptr<Module> module_holder =
      opt.data.empty()
          ? std::make_unique<Module>(opt.model, Module::LoadMode::File, nullptr, nullptr, nullptr,
                                     /*share_memory_arenas=*/true)
          : std::make_unique<Module>(opt.model, opt.data, Module::LoadMode::Mmap, nullptr, nullptr, nullptr,
                                     /*share_memory_arenas=*/true);
  Module& module = *module_holder;
  Error err = cuda_gqa_runner::load_with_backend_options(
      &module, {opt.device, /*profile=*/false, opt.launch_graphs, opt.programmatic_launch});
  if (err != Error::Ok) return fail("loading " + opt.model + " failed", err);
  Decoder decoder{&module};
  if (!constant(module, "get_prefill_len", &decoder.prefill_len, &error) ||
      !constant(module, "get_max_seq_len", &decoder.max_seq_len, &error)) {
    return fail(opt.model, error);
  }
  if (const int rc = load_methods(module, opt); rc != kExitOk) return rc;
  std::printf("loaded %s%s%s in %.2f s\n", opt.model.c_str(), opt.data.empty() ? "" : " with ", opt.data.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count());

  if (opt.decode_at >= 0) {
    const int64_t first = opt.decode_at;
    if (first + std::max(opt.steps, opt.warmup) > decoder.max_seq_len) {
      return fail("--decode-at", "positions " + std::to_string(first) + ".." +
                                     std::to_string(first + std::max(opt.steps, opt.warmup) - 1) +
                                     " run past the program's max_seq_len " + std::to_string(decoder.max_seq_len));
    }
    std::vector<float> logits;
    int64_t token = 1;
    std::vector<double> step_ms, backend_ms;
    uint64_t calls = 0;
    for (long i = 0; i < opt.warmup + opt.steps; ++i) {
      const bool timed = i >= opt.warmup;
      const int64_t position = first + (timed ? i - opt.warmup : i);
      const BackendClock backend;
      const auto t0 = std::chrono::steady_clock::now();
      err = decoder.decode(opt.device_argmax, token, position, &logits, &token);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (err != Error::Ok) return fail("decode step at position " + std::to_string(position) + " failed", err);
      if (timed) {
        step_ms.push_back(ms);
        backend_ms.push_back(backend.ms_since());
        calls += backend.calls_since();
      }
    }
    double total = 0;
    for (double ms : step_ms) total += ms;
    std::printf("decode-at%s: %zu steps at positions %lld..%lld: median %.3f ms, p90 %.3f ms per step, "
                "%.1f tokens/s\n", opt.device_argmax ? " (decode_token)" : "", step_ms.size(), static_cast<long long>(first), static_cast<long long>(first + opt.steps - 1),
                percentile(step_ms, 0.5), percentile(step_ms, 0.9), 1e3 * static_cast<double>(step_ms.size()) / total);
    print_attention(step_ms, backend_ms, calls);
    return kExitOk;
  }

  const auto n = static_cast<int64_t>(prompt.size());
  if (n + opt.new_tokens > decoder.max_seq_len) {
    return fail("too long", std::to_string(n) + " prompt tokens + " + std::to_string(opt.new_tokens) +
                                " new ones exceed the program's max_seq_len " +
                                std::to_string(decoder.max_seq_len));
  }

  std::vector<float> logits;
  std::vector<std::vector<float>> rows;
  size_t prefill_calls = 0;
  for (long rep = 0; rep < opt.prefill_warmup; ++rep) {  // the same rows rewritten
    err = prefill(&decoder, prompt, &logits, &prefill_calls);
    if (err != Error::Ok) return fail("prefill failed", err);
  }
  const auto prefill_start = std::chrono::steady_clock::now();
  err = prefill(&decoder, prompt, &logits, &prefill_calls);
  if (err != Error::Ok) return fail("prefill failed", err);
  const double prefill_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - prefill_start).count();

  std::vector<int64_t> want_tokens;
  if (!opt.expected_tokens.empty()) {
    if (!read_array(opt.expected_tokens, &want_tokens, &error)) return fail("expected tokens", error);
    if (opt.teacher_forcing && static_cast<long>(want_tokens.size()) < opt.new_tokens) {
      return fail("--teacher-forcing", opt.expected_tokens + " holds " + std::to_string(want_tokens.size()) +
                                           " tokens, fewer than --new-tokens");
    }
  }
  std::vector<int64_t> generated;
  std::vector<double> step_ms, backend_ms;
  uint64_t calls = 0;
  int64_t next = argmax(logits);  // the first new token: from prefill's logits
  while (true) {
    if (!opt.device_argmax || rows.empty()) rows.push_back(logits);
    generated.push_back(next);
    if (static_cast<long>(generated.size()) == opt.new_tokens) break;
    const int64_t fed = opt.teacher_forcing ? want_tokens[generated.size() - 1] : generated.back();
    const BackendClock backend;
    const auto t0 = std::chrono::steady_clock::now();
    err = decoder.decode(opt.device_argmax, fed, n + static_cast<int64_t>(generated.size()) - 1, &logits, &next);
    step_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    backend_ms.push_back(backend.ms_since());
    calls += backend.calls_since();
    if (err != Error::Ok) return fail("decode step " + std::to_string(generated.size()) + " failed", err);
  }

  std::printf("prompt %lld tokens: prefill %.2f ms (%zu call(s) of %lld tokens)\n", static_cast<long long>(n),
              prefill_ms, prefill_calls, static_cast<long long>(decoder.prefill_len));
  if (!step_ms.empty()) {
    double total = 0;
    for (double ms : step_ms) total += ms;
    std::printf("decode%s: %zu steps, median %.3f ms, p90 %.3f ms per token, %.1f tokens/s\n",
                opt.device_argmax ? " (decode_token)" : "", step_ms.size(),
                percentile(step_ms, 0.5), percentile(step_ms, 0.9), 1e3 * step_ms.size() / total);
    print_attention(step_ms, backend_ms, calls);
  }
  std::printf("tokens:");
  for (int64_t t : generated) std::printf(" %lld", static_cast<long long>(t));
  std::printf("\n");
  if (!opt.tokens_out.empty()) {
    std::ofstream f(opt.tokens_out, std::ios::binary | std::ios::trunc);
    if (!f || !f.write(reinterpret_cast<const char*>(generated.data()),
                       static_cast<std::streamsize>(generated.size() * sizeof(int64_t)))) {
      return fail("cannot write", opt.tokens_out);
    }
  }
  if (!opt.logits_out.empty()) {
    std::ofstream f(opt.logits_out, std::ios::binary | std::ios::trunc);
    for (const std::vector<float>& row : rows) {
      if (!f || !f.write(reinterpret_cast<const char*>(row.data()),
                         static_cast<std::streamsize>(row.size() * sizeof(float)))) {
        return fail("cannot write", opt.logits_out);
      }
    }
  }

  // Rows after the first token that differs from eager's were computed from
  // other inputs than eager's, so the logits are compared up to that row
  // (all rows with teacher forcing: every row had eager's inputs).
  bool pass = true;
  size_t same = generated.size();  // tokens equal to eager's before the first difference
  if (!opt.expected_tokens.empty()) {
    same = 0;
    while (same < std::min(want_tokens.size(), generated.size()) && want_tokens[same] == generated[same]) ++same;
  }
  const size_t compared = opt.teacher_forcing ? rows.size() : std::min(rows.size(), same + 1);
  bool tie = false;  // the first differing token came from a tie in eager's logits, within tolerance
  size_t forced_matches = 0, forced_ties = 0;  // teacher forcing: rows whose argmax is eager's, or ties
  if (!opt.expected_logits.empty()) {
    std::vector<float> want;
    if (!read_array(opt.expected_logits, &want, &error)) return fail("expected logits", error);
    const size_t vocab = rows.front().size();
    if (want.size() != vocab * rows.size()) {
      return fail("expected logits", opt.expected_logits + " holds " + std::to_string(want.size()) +
                                         " floats, the run made " + std::to_string(rows.size()) + " rows of " +
                                         std::to_string(vocab));
    }
    auto close = [&](double got, double expected) {
      return std::fabs(got - expected) <= opt.atol + opt.rtol * std::fabs(expected);
    };
    double max_err = 0;
    size_t bad = 0;
    for (size_t r = 0; r < compared; ++r) {
      for (size_t v = 0; v < vocab; ++v) {
        const double got = rows[r][v], expected = want[r * vocab + v];
        if (!close(got, expected)) ++bad;
        const double d = std::fabs(got - expected);
        if (!std::isnan(d)) max_err = std::max(max_err, d);
      }
    }
    if (same < want_tokens.size() && same < generated.size()) {
      const float* eager_row = want.data() + same * vocab;
      tie = close(eager_row[generated[same]], eager_row[want_tokens[same]]);
    }
    for (size_t r = 0; opt.teacher_forcing && r < generated.size(); ++r) {
      const float* eager_row = want.data() + r * vocab;
      if (generated[r] == want_tokens[r]) {
        ++forced_matches;
      } else if (close(eager_row[generated[r]], eager_row[want_tokens[r]])) {
        ++forced_ties;
      }
    }
    pass = pass && bad == 0;
    std::printf("logits: max_abs_err=%g over %zu rows%s, %zu elements outside atol %g + rtol %g * |expected| %s\n",
                max_err, compared, compared < rows.size() ? " (up to the first differing token)" : "", bad,
                opt.atol, opt.rtol, bad == 0 ? "PASS" : "FAIL");
  }
  if (opt.teacher_forcing) {
    const bool ok = forced_matches + forced_ties == generated.size();
    pass = pass && ok;
    std::printf("tokens: %zu of %zu argmaxes match eager's tokens (teacher forcing: each step fed eager's token)"
                ", %zu others tie in eager's logits within tolerance %s\n",
                forced_matches, generated.size(), forced_ties, ok ? "PASS" : "FAIL");
  } else if (!opt.expected_tokens.empty()) {
    const bool ok = want_tokens.size() == generated.size() && same == want_tokens.size();
    pass = pass && (ok || tie);
    std::printf("tokens: %zu of %zu match eager before the first difference %s\n", same, want_tokens.size(),
                ok ? "PASS" : tie ? "PASS (eager's logits tie there within tolerance)" : "FAIL");
  }
  return pass ? kExitOk : kExitMismatch;
}
