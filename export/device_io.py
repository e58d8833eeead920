"""The ExecuTorch backend config that keeps a target-device delegate's method inputs and
outputs in device memory (ExecuTorch 1.5.1's device-aware memory planning)."""

from __future__ import annotations

from executorch.exir import ExecutorchBackendConfig
from executorch.exir.passes import MemoryPlanningPass
from executorch.exir.passes.propagate_device_config import PropagateDeviceConfig


def device_io_config() -> ExecutorchBackendConfig:
    """Method inputs that feed a delegate with a target device, and its outputs that are method
    outputs, stay in device memory: no host copies at the program's edges. The caller passes
    device tensors as those inputs (the runtime plans no buffer of its own for them); the
    outputs come back as device tensors."""
    return ExecutorchBackendConfig(
        propagate_device_config=PropagateDeviceConfig(skip_h2d_for_method_inputs=True,
                                                      skip_d2h_for_method_outputs=True),
        enable_non_cpu_memory_planning=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False))
