// How both runners load a program with CudaGqaBackend's load-time options
// (docs/runtime.md "Backend options"): one place for the option keys they set.
#pragma once

#include <executorch/extension/module/module.h>
#include <executorch/runtime/backend/backend_options_map.h>
#include <executorch/runtime/backend/options.h>

#include <cstring>

namespace cuda_gqa_runner {

struct BackendLoadOptions {
  long device = -1;                 // "device"; -1: the backend's default
  bool profile = false;             // "profile"
  bool launch_graphs = true;        // "launch_graphs"
  bool programmatic_launch = true;  // "programmatic_launch"
};

// module->load() with `options` given to CudaGqaBackend.
inline executorch::runtime::Error load_with_backend_options(executorch::extension::Module* module,
                                                             const BackendLoadOptions& options) {
  using executorch::runtime::BackendOption;
  BackendOption values[4];
  size_t n = 0;
  std::strcpy(values[n].key, "profile");
  values[n++].value = options.profile;
  std::strcpy(values[n].key, "launch_graphs");
  values[n++].value = options.launch_graphs;
  std::strcpy(values[n].key, "programmatic_launch");
  values[n++].value = options.programmatic_launch;
  if (options.device >= 0) {
    std::strcpy(values[n].key, "device");
    values[n++].value = static_cast<int>(options.device);
  }
  executorch::runtime::LoadBackendOptionsMap map;
  const executorch::runtime::Error err =
      map.set_options("CudaGqaBackend", executorch::runtime::Span<BackendOption>(values, n));
  return err != executorch::runtime::Error::Ok ? err : module->load(map);
}

}  // namespace cuda_gqa_runner
