// The options CudaGqaBackend takes through ExecuTorch's backend options:
// process-wide with executorch::runtime::set_option("CudaGqaBackend", ...),
// or per program load with a LoadBackendOptionsMap (runtime specs at init,
// which override the process-wide values). A delegate reads them once, at
// init; changing them later affects delegates initialised afterwards.
//
//   "device"      int      CUDA device index (default 0)
//   "stream"      string   CUstream handle as a decimal or 0x-hex integer;
//                          "0" (default): a non-blocking stream the delegate owns.
//                          A pointer does not fit ExecuTorch's int option.
//   "synchronize" bool     execute waits for its kernels (default true). With
//                          outputs in host memory it always waits for their copy back.
//   "profile"     bool     time each execute's kernels with CUDA events, the
//                          stream held until all are enqueued (default false;
//                          cuda_gqa_profiled_kernel_time_ns reads the sum)
//   "launch_graphs" bool   launch each launch plan's kernels as one CUDA graph,
//                          built at the plan's first execute and updated in
//                          place when its tensors move (default true; a driver
//                          without the graph API launches them one by one
//                          anyway; launch_graph.h)
//   "programmatic_launch" bool  launch a kernel whose payload says it waits for
//                          the previous one (Kernel.waits_for_previous) as its
//                          programmatic dependent, where the image loaded has
//                          that wait (sm_90+) and the driver can (default true;
//                          launcher.h)
#pragma once

#include <executorch/runtime/backend/options.h>
#include <executorch/runtime/core/error.h>
#include <executorch/runtime/core/span.h>

#include <cstdint>
#include <string>

namespace cuda_gqa {

struct BackendSettings {
  int device = 0;
  uint64_t stream = 0;  // 0: the delegate creates and owns its stream
  bool synchronize = true;
  bool profile = false;
  bool launch_graphs = true;
  bool programmatic_launch = true;
};

// Applies `options` in order onto *settings. On an unknown key, a value of
// the wrong type or a value out of range returns InvalidArgument with the
// reason in *error and leaves *settings unchanged.
executorch::runtime::Error apply_backend_options(
    executorch::runtime::Span<const executorch::runtime::BackendOption> options,
    BackendSettings* settings, std::string* error);

// Fills each option's value from `settings` by its key (the value types
// above); InvalidArgument naming an unknown key.
executorch::runtime::Error read_backend_options(
    const BackendSettings& settings,
    executorch::runtime::Span<executorch::runtime::BackendOption> options, std::string* error);

}  // namespace cuda_gqa
