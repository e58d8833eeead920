// cuda_gqa_runner: runs a .pte with ExecuTorch's C++ runtime (no Python,
// libtorch or Triton), with CudaGqaBackend linked in.
//
//   cuda_gqa_runner MODEL.pte [--method NAME] [--input FILE]... [--expected FILE]...
//                   [--output-dir DIR] [--atol X] [--rtol X] [--warmup N] [--iterations N]
//                   [--device N] [--inputs-on-device] [--no-launch-graphs | --compare-launch-graphs]
//                   [--no-programmatic-launch] [--time-inputs-set-once]
//
// Inputs are raw little-endian tensors in the method's input order; dtype and
// shape come from the program. A scalar input's file holds its raw value: int64,
// float64, or one byte 0/1 for a bool. Programs may also use XNNPACK's delegate,
// which is linked in. Exit status: 0 ok, 1 an output differs from
// --expected by more than --atol + --rtol * |expected|, 2 bad usage or a load/run error.
//
// Timing: --warmup untimed executes, then --iterations timed ones (wall time
// of Module::execute, which waits for the GPU). Then the program is loaded
// again with CudaGqaBackend's "profile" option and run as many times: each
// delegate holds its stream until its kernels are enqueued and times them
// with CUDA events, so the kernels' device time excludes the host's launch
// latency. Host-side overhead = median execute time - median kernel time.
// --time-inputs-set-once adds a timed pass of executes with the inputs set
// once before it (what a loop writing each step's inputs into the same
// tensors pays per execute, without Module's per-call set_input).
// --no-launch-graphs loads every delegate with CudaGqaBackend's
// "launch_graphs" option off (kernel by kernel instead of one CUDA graph per
// launch plan); --compare-launch-graphs times both in one run: each program
// is loaded once more with the option off, its executes interleaved with the
// default ones, and three more lines report it ("... (launch graphs off)").
// --no-programmatic-launch loads every delegate with the "programmatic_launch"
// option off (no kernel launched as a programmatic dependent of the one before).
#include <executorch/extension/module/module.h>
#include <executorch/runtime/core/device_allocator.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/runtime/platform/runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "backend_load_options.h"
#include "cli_args.h"
#include "cuda_gqa_c_api.h"

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::Tag;
using cuda_gqa_runner::out_of_range;
using cuda_gqa_runner::parse_integer;
using cuda_gqa_runner::readable_regular_file;

constexpr int kExitOk = 0;
constexpr int kExitMismatch = 1;
constexpr int kExitError = 2;

struct Options {
  std::string model;
  std::string method = "forward";
  std::vector<std::string> inputs;
  std::vector<std::string> expected;
  std::string output_dir;
  double atol = 2e-2;
  // 2 bf16 ulps: outputs computed in bf16 differ from eager by rounding.
  double rtol = 1.6e-2;
  long long warmup = 3;
  long long iterations = 10;
  long long device = -1;  // -1: the backend's default (option "device")
  bool inputs_on_device = false;
  bool launch_graphs = true;           // CudaGqaBackend's "launch_graphs"
  bool compare_launch_graphs = false;  // also time the program with launch_graphs off
  bool programmatic_launch = true;     // CudaGqaBackend's "programmatic_launch"
  bool time_inputs_set_once = false;   // also time executes with the inputs set once
};

void usage(FILE* out) {
  std::fprintf(out,
               "usage: cuda_gqa_runner MODEL.pte [--method NAME] [--input FILE]...\n"
               "         [--expected FILE]... [--output-dir DIR] [--atol X] [--rtol X]\n"
               "         [--warmup N] [--iterations N] [--device N] [--inputs-on-device]\n"
               "         [--no-launch-graphs | --compare-launch-graphs] [--no-programmatic-launch]\n"
               "         [--time-inputs-set-once]\n"
               "  --input FILE      raw little-endian input tensor, repeated in input order\n"
               "  --expected FILE   raw expected output, repeated in output order\n"
               "  --output-dir DIR  write DIR/output_<i>.bin for each output\n"
               "  --atol X, --rtol X  an element passes when |out - expected| <= atol + rtol * |expected|\n"
               "                    (defaults 2e-2, 1.6e-2)\n"
               "  --warmup N        untimed executions first (default 3)\n"
               "  --iterations N    timed executions (default 10); reports execute time, kernel\n"
               "                    time (a second, profiled pass) and host-side overhead\n"
               "  --device N        CUDA device for CudaGqaBackend delegates (default 0)\n"
               "  --inputs-on-device  copy the inputs to that device once and pass device tensors\n"
               "                    (programs exported with device-resident method inputs)\n"
               "  --no-launch-graphs  CudaGqaBackend option launch_graphs off: kernels launched one by\n"
               "                    one instead of one CUDA graph per launch plan\n"
               "  --compare-launch-graphs  time the program both ways in one run (executes\n"
               "                    interleaved); the extra lines say \"(launch graphs off)\"\n"
               "  --no-programmatic-launch  CudaGqaBackend option programmatic_launch off: no kernel\n"
               "                    launched as a programmatic dependent of the one before\n"
               "  --time-inputs-set-once  also time executes with the inputs set once before them\n"
               "                    (Method execute without Module's per-call set_input)\n"
               "(CudaGqaBackend payload version %d)\n",
               cuda_gqa_payload_version());
}

int fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "error: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  return kExitError;
}

int fail(const char* what, Error e) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "executorch error 0x%x (%s)", static_cast<unsigned>(e),
                executorch::runtime::to_string(e));
  return fail(what, std::string(buf));
}

// Most warm-up and timed executions: a count the report is meant to hold, far from any overflow.
constexpr long long kMaxRuns = 1000000;

// Returns -1 on success, else the exit code.
int parse_args(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char** v) {
      if (i + 1 >= argc) return false;
      *v = argv[++i];
      return true;
    };
    const char* v = nullptr;
    if (a == "-h" || a == "--help") {
      usage(stdout);
      return kExitOk;
    } else if (a == "--method" && value(&v)) {
      o->method = v;
    } else if (a == "--input" && value(&v)) {
      o->inputs.push_back(v);
    } else if (a == "--expected" && value(&v)) {
      o->expected.push_back(v);
    } else if (a == "--output-dir" && value(&v)) {
      o->output_dir = v;
    } else if ((a == "--atol" || a == "--rtol") && value(&v)) {
      char* end = nullptr;
      double& tol = a == "--atol" ? o->atol : o->rtol;
      tol = std::strtod(v, &end);
      if (end == v || *end != '\0' || !(tol >= 0) || !std::isfinite(tol)) {
        return fail(a == "--atol" ? "bad --atol" : "bad --rtol", v);
      }
    } else if (a == "--warmup" && value(&v)) {
      if (!parse_integer(v, 0, kMaxRuns, &o->warmup)) return fail("bad --warmup", out_of_range(v, 0, kMaxRuns));
    } else if (a == "--iterations" && value(&v)) {
      if (!parse_integer(v, 0, kMaxRuns, &o->iterations)) {
        return fail("bad --iterations", out_of_range(v, 0, kMaxRuns));
      }
    } else if (a == "--inputs-on-device") {
      o->inputs_on_device = true;
    } else if (a == "--no-launch-graphs") {
      o->launch_graphs = false;
    } else if (a == "--compare-launch-graphs") {
      o->compare_launch_graphs = true;
    } else if (a == "--no-programmatic-launch") {
      o->programmatic_launch = false;
    } else if (a == "--time-inputs-set-once") {
      o->time_inputs_set_once = true;
    } else if (a == "--device" && value(&v)) {
      // Tensors name their device in an int8.
      if (!parse_integer(v, 0, 127, &o->device)) return fail("bad --device", out_of_range(v, 0, 127));
    } else if (!a.empty() && a[0] != '-' && o->model.empty()) {
      o->model = a;
    } else {
      usage(stderr);
      return fail("unexpected argument", a);
    }
  }
  if (o->model.empty()) {
    usage(stderr);
    return fail("no model given", "");
  }
  if (!o->launch_graphs && o->compare_launch_graphs) {
    return fail("--no-launch-graphs and --compare-launch-graphs", "pick one");
  }
  std::string error;
  if (!readable_regular_file(o->model, &error)) return fail("model", error);
  for (const auto* files : {&o->inputs, &o->expected}) {
    for (const std::string& path : *files) {
      if (!readable_regular_file(path, &error)) return fail(files == &o->inputs ? "--input" : "--expected", error);
    }
  }
  return -1;
}

bool read_file(const std::string& path, std::vector<uint8_t>* out, std::string* error) {
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
  f.seekg(0);
  out->resize(static_cast<size_t>(n));
  if (n > 0 && !f.read(reinterpret_cast<char*>(out->data()), n)) {
    *error = "cannot read " + path;
    return false;
  }
  return true;
}

bool write_file(const std::string& path, const void* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  return f && f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

float bf16_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Element i of a float32/float16/bfloat16 buffer as float.
bool element_as_float(ScalarType t, const uint8_t* data, size_t i, float* out) {
  switch (t) {
    case ScalarType::Float:
      std::memcpy(out, data + 4 * i, 4);
      return true;
    case ScalarType::Half: {
      uint16_t h;
      std::memcpy(&h, data + 2 * i, 2);
      *out = half_to_float(h);
      return true;
    }
    case ScalarType::BFloat16: {
      uint16_t b;
      std::memcpy(&b, data + 2 * i, 2);
      *out = bf16_to_float(b);
      return true;
    }
    default:
      return false;
  }
}

// A scalar method input from its file's bytes, the raw little-endian value:
// int64 (8 bytes), float64 (8 bytes) or bool (1 byte, 0 or 1).
bool append_scalar_input(Tag tag, const std::vector<uint8_t>& bytes, std::vector<EValue>* inputs,
                         std::string* error) {
  const size_t need = tag == Tag::Bool ? 1 : 8;
  const char* kind = tag == Tag::Int ? "an int (int64)" : tag == Tag::Double ? "a float (float64)" : "a bool";
  if (bytes.size() != need) {
    *error = "has " + std::to_string(bytes.size()) + " bytes; " + kind + " input needs " + std::to_string(need);
    return false;
  }
  if (tag == Tag::Int) {
    int64_t value;
    std::memcpy(&value, bytes.data(), sizeof(value));
    inputs->emplace_back(value);
  } else if (tag == Tag::Double) {
    double value;
    std::memcpy(&value, bytes.data(), sizeof(value));
    inputs->emplace_back(value);
  } else {
    if (bytes[0] > 1) {
      *error = "a bool input must be the byte 0 or 1, got " + std::to_string(bytes[0]);
      return false;
    }
    inputs->emplace_back(bytes[0] == 1);
  }
  return true;
}

// The q-quantile of v; NaN for no values.
double percentile(std::vector<double> v, double q) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const size_t idx = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size()))) - 1;
  return v[std::min(idx, v.size() - 1)];
}

// Loads the program with --device, --no-programmatic-launch, and `profile` and `launch_graphs`.
Error load_module(Module* module, const Options& opt, bool profile, bool launch_graphs) {
  return cuda_gqa_runner::load_with_backend_options(
      module, {static_cast<long>(opt.device), profile, launch_graphs, opt.programmatic_launch});
}

// Checks `outputs` against --expected (and writes them to --output-dir,
// unless `label` says they come from the extra load): -1, with *all_pass
// cleared on a mismatch, or the exit code of an error.
int check_outputs(const Options& opt, const std::vector<EValue>& outputs, const char* label, bool* all_pass) {
  Error err = Error::Ok;
  if (!opt.expected.empty() && opt.expected.size() != outputs.size()) {
    return fail("wrong number of --expected files",
                std::to_string(opt.expected.size()) + " given, method '" + opt.method +
                    "' returns " + std::to_string(outputs.size()));
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].isTensor()) {
      std::printf("output %zu: not a tensor, skipped\n", i);
      continue;
    }
    const Tensor& t = outputs[i].toTensor();
    const auto* data = static_cast<const uint8_t*>(t.const_data_ptr());
    // An output the program planned in device memory (a "target_device"
    // delegate output returned as is) is read back through its allocator.
    std::vector<uint8_t> host_copy;
    const auto* impl = t.unsafeGetTensorImpl();
    if (impl->device_type() != executorch::runtime::etensor::DeviceType::CPU) {
      auto* allocator =
          executorch::runtime::DeviceAllocatorRegistry::instance().get_allocator(impl->device_type());
      if (allocator == nullptr) return fail("no device allocator", "for output " + std::to_string(i));
      host_copy.resize(t.nbytes());
      err = allocator->copy_device_to_host(host_copy.data(), data, t.nbytes(), impl->device_index());
      if (err != Error::Ok) return fail(("copying output " + std::to_string(i) + " to the host failed").c_str(), err);
      data = host_copy.data();
    }
    if (!opt.output_dir.empty() && label[0] == '\0') {
      const std::string path = opt.output_dir + "/output_" + std::to_string(i) + ".bin";
      if (!write_file(path, data, t.nbytes())) return fail("cannot write", path);
    }
    if (opt.expected.empty()) continue;
    std::vector<uint8_t> expected;
    std::string error;
    if (!read_file(opt.expected[i], &expected, &error)) return fail("expected", error);
    if (expected.size() != t.nbytes()) {
      return fail("expected size mismatch",
                  opt.expected[i] + " has " + std::to_string(expected.size()) +
                      " bytes, output " + std::to_string(i) + " has " +
                      std::to_string(t.nbytes()));
    }
    double max_err = 0.0;
    size_t mismatched = 0;
    bool finite = true;
    for (size_t e = 0; e < static_cast<size_t>(t.numel()); ++e) {
      float got = 0, want = 0;
      if (!element_as_float(t.scalar_type(), data, e, &got) ||
          !element_as_float(t.scalar_type(), expected.data(), e, &want)) {
        return fail("cannot compare",
                    "output " + std::to_string(i) + " has dtype " +
                        std::to_string(static_cast<int>(t.scalar_type())));
      }
      const double d = std::fabs(static_cast<double>(got) - static_cast<double>(want));
      if (std::isnan(d)) {
        if (!(std::isnan(got) && std::isnan(want))) finite = false;
      } else {
        max_err = std::max(max_err, d);
        if (d > opt.atol + opt.rtol * std::fabs(static_cast<double>(want))) ++mismatched;
      }
    }
    const bool pass = finite && mismatched == 0;
    *all_pass = *all_pass && pass;
    std::printf("output %zu%s: max_abs_err=%g%s, %zu of %zu elements outside atol %g + rtol %g * |expected| %s\n",
                i, label, max_err, finite ? "" : " (NaN mismatch)", mismatched,
                static_cast<size_t>(t.numel()), opt.atol, opt.rtol, pass ? "PASS" : "FAIL");
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  const int parsed = parse_args(argc, argv, &opt);
  if (parsed >= 0) return parsed;

  executorch::runtime::runtime_init();
  {
    std::ifstream probe(opt.model, std::ios::binary);
    if (!probe) return fail("cannot open model", opt.model);
  }
  Module module(opt.model, Module::LoadMode::File);
  Error err = load_module(&module, opt, /*profile=*/false, opt.launch_graphs);
  if (err != Error::Ok) return fail(("loading " + opt.model + " failed").c_str(), err);
  // --compare-launch-graphs: the program loaded again, launch graphs off.
  std::unique_ptr<Module> direct;
  if (opt.compare_launch_graphs) {
    direct = std::make_unique<Module>(opt.model, Module::LoadMode::File);
    err = load_module(direct.get(), opt, /*profile=*/false, /*launch_graphs=*/false);
    if (err != Error::Ok) return fail(("loading " + opt.model + " without launch graphs failed").c_str(), err);
  }

  auto meta = module.method_meta(opt.method);
  if (!meta.ok()) return fail(("no method '" + opt.method + "'").c_str(), meta.error());
  const size_t num_inputs = meta->num_inputs();
  if (opt.inputs.size() != num_inputs) {
    return fail("wrong number of --input files",
                std::to_string(opt.inputs.size()) + " given, method '" + opt.method +
                    "' takes " + std::to_string(num_inputs));
  }

  // Inputs: the buffers own the bytes, the TensorPtrs describe them.
  std::vector<std::vector<uint8_t>> input_data(num_inputs);
  std::vector<TensorPtr> input_tensors;
  std::vector<EValue> inputs;
  for (size_t i = 0; i < num_inputs; ++i) {
    auto tag = meta->input_tag(i);
    if (!tag.ok()) return fail("cannot read input metadata", tag.error());
    std::string error;
    if (*tag == Tag::Int || *tag == Tag::Double || *tag == Tag::Bool) {
      if (!read_file(opt.inputs[i], &input_data[i], &error)) return fail("input", error);
      if (!append_scalar_input(*tag, input_data[i], &inputs, &error)) {
        return fail("input", opt.inputs[i] + " (input " + std::to_string(i) + "): " + error);
      }
      continue;
    }
    if (*tag != Tag::Tensor) {
      return fail("unsupported input", "input " + std::to_string(i) + " is not a tensor, int, float or bool");
    }
    auto info = meta->input_tensor_meta(i);
    if (!info.ok()) return fail("cannot read input metadata", info.error());
    if (!read_file(opt.inputs[i], &input_data[i], &error)) return fail("input", error);
    if (input_data[i].size() != info->nbytes()) {
      return fail("input size mismatch",
                  opt.inputs[i] + " has " + std::to_string(input_data[i].size()) +
                      " bytes, input " + std::to_string(i) + " needs " +
                      std::to_string(info->nbytes()));
    }
    std::vector<executorch::aten::SizesType> sizes(info->sizes().begin(), info->sizes().end());
    std::vector<executorch::aten::DimOrderType> dim_order(info->dim_order().begin(),
                                                          info->dim_order().end());
    if (opt.inputs_on_device) {
      // Copied once, through the registered CUDA DeviceAllocator; the timed
      // executes then read device memory only. (Not clone_tensor_ptr_to:
      // it aborts when the allocation fails.)
      namespace et = executorch::runtime::etensor;
      const auto index = static_cast<et::DeviceIndex>(std::max(opt.device, 0LL));
      auto* allocator =
          executorch::runtime::DeviceAllocatorRegistry::instance().get_allocator(et::DeviceType::CUDA);
      if (allocator == nullptr) return fail("--inputs-on-device", "no CUDA device allocator registered");
      auto memory = allocator->allocate(input_data[i].size(), index);
      if (!memory.ok()) return fail(("device memory for input " + std::to_string(i)).c_str(), memory.error());
      err = allocator->copy_host_to_device(*memory, input_data[i].data(), input_data[i].size(), index);
      if (err != Error::Ok) {
        allocator->deallocate(*memory, index);
        return fail(("copying input " + std::to_string(i) + " to the device").c_str(), err);
      }
      input_tensors.push_back(executorch::extension::make_tensor_ptr(
          std::move(sizes), *memory, std::move(dim_order), {}, info->scalar_type(),
          et::Device(et::DeviceType::CUDA, index), executorch::aten::TensorShapeDynamism::STATIC,
          [allocator, index](void* p) { allocator->deallocate(p, index); }));
    } else {
      input_tensors.push_back(executorch::extension::make_tensor_ptr(
          std::move(sizes), input_data[i].data(), std::move(dim_order), {},
          info->scalar_type()));
    }
    inputs.emplace_back(*input_tensors.back());
  }

  // Warm-up, then timed runs; the outputs of the last run are checked. With
  // --compare-launch-graphs each run executes both loads, in turn.
  const long long runs = opt.warmup + std::max(opt.iterations, 1LL);  // both at most kMaxRuns
  struct Timed {
    Module* module;
    const char* label;  // appended to the report lines
    std::vector<double> times_us, kernel_us;
    std::vector<EValue> outputs;
  };
  std::vector<Timed> timed;
  timed.push_back({&module, "", {}, {}, {}});
  if (direct) timed.push_back({direct.get(), " (launch graphs off)", {}, {}, {}});
  for (long long r = 0; r < runs; ++r) {
    for (Timed& t : timed) {
      const auto t0 = std::chrono::steady_clock::now();
      auto result = t.module->execute(opt.method, inputs);
      const auto t1 = std::chrono::steady_clock::now();
      if (!result.ok()) {
        return fail(("executing '" + opt.method + "'" + t.label + " failed").c_str(), result.error());
      }
      if (r >= opt.warmup) {
        t.times_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      }
      if (r + 1 == runs) t.outputs = std::move(*result);
    }
  }
  if (opt.iterations > 0) {
    // The profiled pass: the same program loaded with "profile" on (one
    // load per timed one, with its launch_graphs).
    std::vector<std::unique_ptr<Module>> profiled;
    for (const Timed& t : timed) {
      profiled.push_back(std::make_unique<Module>(opt.model, Module::LoadMode::File));
      err = load_module(profiled.back().get(), opt, /*profile=*/true, t.module == &module && opt.launch_graphs);
      if (err != Error::Ok) return fail(("loading " + opt.model + " to profile failed").c_str(), err);
    }
    for (long long r = 0; r < runs; ++r) {
      for (size_t i = 0; i < timed.size(); ++i) {
        const uint64_t before = cuda_gqa_profiled_kernel_time_ns();
        auto result = profiled[i]->execute(opt.method, inputs);
        if (!result.ok()) {
          return fail(("executing '" + opt.method + "'" + timed[i].label + " to profile failed").c_str(),
                      result.error());
        }
        if (r >= opt.warmup) {
          timed[i].kernel_us.push_back(static_cast<double>(cuda_gqa_profiled_kernel_time_ns() - before) / 1e3);
        }
      }
    }
    // --time-inputs-set-once: Method execute alone, the inputs set once
    // before the loop (a decode loop that writes each step's inputs into the
    // same tensors), without Module's per-call set_input.
    std::vector<double> set_once_us;
    if (opt.time_inputs_set_once) {
      err = module.set_inputs(opt.method, inputs);
      if (err != Error::Ok) return fail("setting the inputs once", err);
      for (long long r = 0; r < runs; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        auto result = module.execute(opt.method);
        const auto t1 = std::chrono::steady_clock::now();
        if (!result.ok()) {
          return fail(("executing '" + opt.method + "' with inputs set once failed").c_str(), result.error());
        }
        if (r >= opt.warmup) set_once_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      }
    }
    for (const Timed& t : timed) {
      const double execute_median = percentile(t.times_us, 0.5);
      const double kernel_median = percentile(t.kernel_us, 0.5);
      std::printf("execute%s: median %.1f us, p90 %.1f us over %zu iterations\n", t.label, execute_median,
                  percentile(t.times_us, 0.9), t.times_us.size());
      std::printf("kernels%s: median %.1f us, p90 %.1f us (CUDA events around each execute's kernels, "
                  "enqueued back to back)\n",
                  t.label, kernel_median, percentile(t.kernel_us, 0.9));
      std::printf("host overhead%s: median %.1f us (median execute - median kernels; includes the "
                  "copies of inputs and outputs in host memory)\n",
                  t.label, execute_median - kernel_median);
    }
    if (opt.time_inputs_set_once) {
      const double median = percentile(set_once_us, 0.5);
      std::printf("execute, inputs set once: median %.1f us, p90 %.1f us; host overhead %.1f us (minus the "
                  "median kernels above)\n",
                  median, percentile(set_once_us, 0.9), median - percentile(timed[0].kernel_us, 0.5));
    }
  }

  bool all_pass = true;
  for (Timed& t : timed) {
    const int status = check_outputs(opt, t.outputs, t.label, &all_pass);
    if (status >= 0) return status;
  }
  return all_pass ? kExitOk : kExitMismatch;
}
