#include "launch_graph.h"

#include <executorch/runtime/platform/log.h>

#include <algorithm>
#include <cstring>

namespace cuda_gqa {

using executorch::runtime::Error;

namespace {

// The node of an evaluated launch. kern and ctx stay null: func names the
// kernel, and with it its context. The driver reads kernelParams during the
// call that takes these.
CUDA_KERNEL_NODE_PARAMS node_params(KernelLauncher& launcher) {
  CUDA_KERNEL_NODE_PARAMS p;
  std::memset(&p, 0, sizeof(p));
  const LaunchConfig& c = launcher.config();
  p.func = launcher.function();
  p.gridDimX = c.grid[0];
  p.gridDimY = c.grid[1];
  p.gridDimZ = c.grid[2];
  p.blockDimX = c.block;
  p.blockDimY = 1;
  p.blockDimZ = 1;
  p.sharedMemBytes = c.shared_mem_bytes;
  p.kernelParams = launcher.param_pointers();
  p.extra = nullptr;
  return p;
}

Error failed(const CudaDriver& driver, const char* call, CUresult r) {
  ET_LOG(Error, "CudaGqaBackend: launch graph: %s failed: %s", call, driver.error_string(r).c_str());
  return Error::Internal;
}

}  // namespace

void PlanGraph::reserve(const std::vector<KernelLauncher>& launchers) {
  nodes_.assign(launchers.size(), nullptr);
  held_.resize(launchers.size());
  for (size_t i = 0; i < launchers.size(); ++i) {
    held_[i].values.assign(launchers[i].values().size(), 0);
  }
}

void PlanGraph::release(const CudaDriver& driver) {
  // The exec first: it was instantiated from the graph.
  if (exec_ != nullptr) {
    const CUresult r = driver.GraphExecDestroy(exec_);
    if (r != CUDA_SUCCESS) failed(driver, "cuGraphExecDestroy", r);
    exec_ = nullptr;
  }
  if (graph_ != nullptr) {
    const CUresult r = driver.GraphDestroy(graph_);
    if (r != CUDA_SUCCESS) failed(driver, "cuGraphDestroy", r);
    graph_ = nullptr;
  }
  std::fill(nodes_.begin(), nodes_.end(), nullptr);
}

Error PlanGraph::build(const CudaDriver& driver, std::vector<KernelLauncher>& launchers) {
  release(driver);
  CUresult r = driver.GraphCreate(&graph_, 0);
  if (r != CUDA_SUCCESS) {
    graph_ = nullptr;
    return failed(driver, "cuGraphCreate", r);
  }
  // A chain: each kernel reads what the one before wrote (the cache write,
  // then attention, then the combine of its splits) and they share the
  // workspace. A programmatic dependent is added alone, then joined to the
  // kernel before it by a programmatic edge: it may start while that kernel
  // drains, and waits for it itself (griddepcontrol.wait).
  for (size_t i = 0; i < launchers.size(); ++i) {
    const bool programmatic = launchers[i].programmatic() && !programmatic_edge_refused_;
    const bool after_previous = i > 0 && !programmatic;
    const CUDA_KERNEL_NODE_PARAMS p = node_params(launchers[i]);
    r = driver.GraphAddKernelNode(&nodes_[i], graph_, after_previous ? &nodes_[i - 1] : nullptr,
                                  after_previous ? 1 : 0, &p);
    if (r != CUDA_SUCCESS) {
      nodes_[i] = nullptr;
      failed(driver, "cuGraphAddKernelNode", r);
      release(driver);
      return Error::Internal;
    }
    if (!programmatic) continue;
    CUgraphEdgeData edge;
    std::memset(&edge, 0, sizeof(edge));
    edge.from_port = CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC;
    edge.to_port = 0;
    edge.type = CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC;
    r = driver.GraphAddDependencies(graph_, &nodes_[i - 1], &nodes_[i], &edge, 1);
    if (r != CUDA_SUCCESS) {
      // Launched normally, the kernel is just as correct: an ordinary edge.
      programmatic_edge_refused_ = true;
      ET_LOG(Info, "CudaGqaBackend: launch graph: cuGraphAddDependencies refused a programmatic edge (%s): "
                   "an ordinary one instead",
             driver.error_string(r).c_str());
      r = driver.GraphAddDependencies(graph_, &nodes_[i - 1], &nodes_[i], nullptr, 1);
      if (r != CUDA_SUCCESS) {
        failed(driver, "cuGraphAddDependencies", r);
        release(driver);
        return Error::Internal;
      }
    }
  }
  r = driver.GraphInstantiateWithFlags(&exec_, graph_, 0);
  if (r != CUDA_SUCCESS) {
    exec_ = nullptr;
    failed(driver, "cuGraphInstantiateWithFlags", r);
    release(driver);
    return Error::Internal;
  }
  for (size_t i = 0; i < launchers.size(); ++i) {
    std::memcpy(held_[i].grid, launchers[i].config().grid, sizeof(held_[i].grid));
    std::memcpy(held_[i].values.data(), launchers[i].values().data(),
                held_[i].values.size() * sizeof(uint64_t));
  }
  return Error::Ok;
}

Error PlanGraph::launch(const CudaDriver& driver, CUstream stream,
                        std::vector<KernelLauncher>& launchers) {
  for (const KernelLauncher& l : launchers) {
    if (l.config().ctas() != 0) continue;
    // An empty grid: launched directly, where launch_evaluated skips it.
    for (KernelLauncher& direct : launchers) {
      const Error err = direct.launch_evaluated(driver, stream);
      if (err != Error::Ok) return err;
    }
    return Error::Ok;
  }
  if (exec_ == nullptr) {
    const Error err = build(driver, launchers);
    if (err != Error::Ok) return err;
  } else {
    for (size_t i = 0; i < launchers.size(); ++i) {
      HeldLaunch& held = held_[i];
      const KernelLauncher& l = launchers[i];
      const size_t bytes = held.values.size() * sizeof(uint64_t);
      if (std::memcmp(held.grid, l.config().grid, sizeof(held.grid)) == 0 &&
          std::memcmp(held.values.data(), l.values().data(), bytes) == 0) {
        continue;
      }
      const CUDA_KERNEL_NODE_PARAMS p = node_params(launchers[i]);
      const CUresult r = driver.GraphExecKernelNodeSetParams(exec_, nodes_[i], &p);
      if (r != CUDA_SUCCESS) {
        // Refused in place: a new exec from the current launches (all of them).
        if (!rebuild_logged_) {
          rebuild_logged_ = true;
          ET_LOG(Info, "CudaGqaBackend: launch graph: cuGraphExecKernelNodeSetParams refused an update (%s): "
                       "instantiating the graph again",
                 driver.error_string(r).c_str());
        }
        const Error err = build(driver, launchers);
        if (err != Error::Ok) return err;
        break;
      }
      std::memcpy(held.grid, l.config().grid, sizeof(held.grid));
      std::memcpy(held.values.data(), l.values().data(), bytes);
    }
  }
  const CUresult r = driver.GraphLaunch(exec_, stream);
  if (r != CUDA_SUCCESS) return failed(driver, "cuGraphLaunch", r);
  return Error::Ok;
}

}  // namespace cuda_gqa
