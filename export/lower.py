"""torch.nn.Module -> ExecuTorch program with GQA attention lowered to CudaGqaBackend."""

from __future__ import annotations

import torch
from executorch.exir import ExecutorchProgramManager, to_edge_transform_and_lower

from cuda_gqa.backends.partition import AttentionDecision, CudaGqaPartitioner

from .device_io import device_io_config


def lower_to_executorch(
    model: torch.nn.Module, example_inputs: tuple, device_io: bool = False, dynamic_shapes=None, **compile_options
) -> tuple[ExecutorchProgramManager, list[AttentionDecision]]:
    """Export `model` and lower its GQA attention; returns the program and the partition report.
    device_io (with compile option target_device): see device_io.device_io_config.
    dynamic_shapes: torch.export's, e.g. bounded Dims for sequence lengths."""
    if device_io and compile_options.get("target_device") is None:
        raise ValueError("device_io needs a target_device")
    exported = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes)
    partitioner = CudaGqaPartitioner(**compile_options)
    edge = to_edge_transform_and_lower(exported, partitioner=[partitioner])
    return edge.to_executorch(device_io_config() if device_io else None), partitioner.report
