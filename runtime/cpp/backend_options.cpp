#include "backend_options.h"

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <variant>

namespace cuda_gqa {

using executorch::runtime::BackendOption;
using executorch::runtime::Error;
using executorch::runtime::kMaxOptionValueLength;
using executorch::runtime::Span;

namespace {

using StringValue = std::array<char, kMaxOptionValueLength>;

constexpr char kKnownKeys[] = "device, stream, synchronize, profile, launch_graphs, programmatic_launch";

Error refuse(std::string* error, const std::string& what) {
  *error = what;
  return Error::InvalidArgument;
}

// A NUL-terminated option string holding a decimal or 0x-hex integer.
bool parse_handle(const StringValue& value, uint64_t* out) {
  if (std::memchr(value.data(), '\0', value.size()) == nullptr) return false;
  const char* s = value.data();
  if (*s == '\0' || *s == '-' || *s == '+' || *s == ' ') return false;
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s, &end, 0);
  if (errno != 0 || end == s || *end != '\0') return false;
  *out = v;
  return true;
}

std::string key_of(const BackendOption& option) {
  return std::string(option.key, strnlen(option.key, sizeof(option.key)));
}

}  // namespace

Error apply_backend_options(Span<const BackendOption> options, BackendSettings* settings,
                            std::string* error) {
  BackendSettings next = *settings;
  for (const BackendOption& option : options) {
    const std::string key = key_of(option);
    if (key == "device") {
      const int* v = std::get_if<int>(&option.value);
      if (v == nullptr) return refuse(error, "option 'device' must be an int");
      if (*v < 0) return refuse(error, "option 'device' is " + std::to_string(*v) + ", expected >= 0");
      next.device = *v;
    } else if (key == "stream") {
      const StringValue* v = std::get_if<StringValue>(&option.value);
      if (v == nullptr) {
        return refuse(error, "option 'stream' must be a string holding the CUstream handle "
                             "(\"0\": the backend's own stream)");
      }
      if (!parse_handle(*v, &next.stream)) {
        return refuse(error, "option 'stream' is '" +
                                 std::string(v->data(), strnlen(v->data(), v->size())) +
                                 "', expected a decimal or 0x-hex CUstream handle");
      }
    } else if (key == "synchronize" || key == "profile" || key == "launch_graphs" ||
               key == "programmatic_launch") {
      const bool* v = std::get_if<bool>(&option.value);
      if (v == nullptr) return refuse(error, "option '" + key + "' must be a bool");
      (key == "synchronize"     ? next.synchronize
       : key == "profile"       ? next.profile
       : key == "launch_graphs" ? next.launch_graphs
                                : next.programmatic_launch) = *v;
    } else {
      return refuse(error, "unknown option '" + key + "' (known: " + kKnownKeys + ")");
    }
  }
  *settings = next;
  return Error::Ok;
}

Error read_backend_options(const BackendSettings& settings, Span<BackendOption> options,
                           std::string* error) {
  for (BackendOption& option : options) {
    const std::string key = key_of(option);
    if (key == "device") {
      option.value = settings.device;
    } else if (key == "stream") {
      StringValue text{};
      std::snprintf(text.data(), text.size(), "0x%" PRIx64, settings.stream);
      option.value = text;
    } else if (key == "synchronize") {
      option.value = settings.synchronize;
    } else if (key == "profile") {
      option.value = settings.profile;
    } else if (key == "launch_graphs") {
      option.value = settings.launch_graphs;
    } else if (key == "programmatic_launch") {
      option.value = settings.programmatic_launch;
    } else {
      return refuse(error, "unknown option '" + key + "' (known: " + kKnownKeys + ")");
    }
  }
  return Error::Ok;
}

}  // namespace cuda_gqa
