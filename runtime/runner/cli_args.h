// Checks the runners and the fuzz driver run on their command lines: whole
// numbers within a range (no overflow, no sign surprises) and file arguments
// that are readable regular files (a folder or a device is refused up front,
// not read as a garbage size).
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

namespace cuda_gqa_runner {

// A decimal integer in [low, high]; false (nothing stored) otherwise.
inline bool parse_integer(const char* text, long long low, long long high, long long* out) {
  if (text == nullptr || *text == '\0') return false;
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno == ERANGE || value < low || value > high) return false;
  *out = value;
  return true;
}

// "X (accepted: low to high)", for the refusal of flag `flag` given `text`.
inline std::string out_of_range(const std::string& text, long long low, long long high) {
  return text + " (accepted: a whole number from " + std::to_string(low) + " to " + std::to_string(high) + ")";
}

// True if `path` names a regular file this process may read; else *error says what it is instead.
inline bool readable_regular_file(const std::string& path, std::string* error) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    *error = "cannot open " + path + ": " + std::strerror(errno);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    *error = path + ": not a regular file" + (S_ISDIR(st.st_mode) ? " (a directory)" : "");
    return false;
  }
  if (::access(path.c_str(), R_OK) != 0) {
    *error = path + ": not readable";
    return false;
  }
  return true;
}

}  // namespace cuda_gqa_runner
