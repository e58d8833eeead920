// One launch plan's kernels replayed as a CUDA graph (the "launch_graphs"
// option, on by default where the driver has the graph API).
//
// Why: each cuLaunchKernel costs the host about 2 us of driver time, and a
// decode execute launches up to three kernels (KV-cache write, split-KV
// attention, combine). One cuGraphLaunch enqueues them all, and the GPU
// starts each node behind the previous one without a separate submission.
//
// How:
// - Built lazily, by the first execute that picks the plan, with the driver's
//   graph API (cuGraphCreate, one cuGraphAddKernelNode per kernel depending
//   on the one before, cuGraphInstantiateWithFlags), not by stream capture:
//   it depends on nothing about the caller's stream (capturing or not) and
//   enqueues nothing.
// - A kernel launched as a programmatic dependent of the one before
//   (KernelLauncher::programmatic) depends on it through a programmatic edge
//   (cuGraphAddDependencies_v2 from its programmatic port), where the driver
//   has the call: the graph form of the same launch. An edge the driver
//   refuses is logged once and made an ordinary one.
// - The exec's launches (grid and parameter slots per node) are kept. Each
//   execute compares its freshly evaluated launches with them byte for byte
//   and updates only the nodes that differ, with
//   cuGraphExecKernelNodeSetParams (host only; launches already enqueued
//   keep their values). ExecuTorch's planned memory gives a decode loop the
//   same addresses every call, so the steady state is one cuGraphLaunch and
//   no update.
// - An update the driver refuses (e.g. a change it cannot apply in place)
//   rebuilds and re-instantiates the graph from the current launches; a
//   failure to build, instantiate or launch is returned, naming the call.
// - A call where some kernel's grid is empty (empty tensors) launches the
//   kernels directly: a kernel node cannot have an empty grid.
//
// Not thread-safe, like the CUDA graph objects it holds: one delegate's
// executes are serialised by its mutex; different delegates have their own.
#pragma once

#include <executorch/runtime/core/error.h>

#include <cstdint>
#include <vector>

#include "cuda_driver.h"
#include "launcher.h"

namespace cuda_gqa {

class PlanGraph {
 public:
  // Sizes the copies of the launches for a plan of these kernels, at init,
  // so that launch() allocates nothing on the host (building the graph
  // aside, which the driver does).
  void reserve(const std::vector<KernelLauncher>& launchers);

  // Launches `launchers`, each already evaluated (KernelLauncher::evaluate),
  // in order on `stream` through the graph: building it first if there is
  // none, updating the nodes whose launch changed. reserve(launchers) must
  // have been called (init does, for every plan). Logs any failure with the
  // driver call's name and returns Error::Internal.
  executorch::runtime::Error launch(const CudaDriver& driver, CUstream stream,
                                    std::vector<KernelLauncher>& launchers);

  // Destroys the exec and the graph (none: nothing); failures are logged by
  // name. The caller makes sure no launch of the exec is still running.
  void release(const CudaDriver& driver);

 private:
  executorch::runtime::Error build(const CudaDriver& driver, std::vector<KernelLauncher>& launchers);

  // A node's launch as the exec holds it.
  struct HeldLaunch {
    uint32_t grid[3] = {0, 0, 0};
    std::vector<uint64_t> values;
  };

  CUgraph graph_ = nullptr;  // kept: its nodes name the exec's nodes in updates
  CUgraphExec exec_ = nullptr;
  std::vector<CUgraphNode> nodes_;
  std::vector<HeldLaunch> held_;
  bool rebuild_logged_ = false;  // the first refused update is logged, once
  // A programmatic edge was refused: this graph's edges are ordinary from then on.
  bool programmatic_edge_refused_ = false;
};

}  // namespace cuda_gqa
