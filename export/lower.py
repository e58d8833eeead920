"""torch.nn.Module -> ExecuTorch program with GQA attention lowered to CudaGqaBackend."""

from __future__ import annotations

import torch
from executorch.exir import ExecutorchProgramManager, to_edge_transform_and_lower

from cuda_gqa.backends.partition import AttentionDecision, CudaGqaPartitioner


def lower_to_executorch(
    model: torch.nn.Module, example_inputs: tuple, **compile_options
) -> tuple[ExecutorchProgramManager, list[AttentionDecision]]:
    """Export `model` and lower its GQA attention; returns the program and the partition report."""
    exported = torch.export.export(model, example_inputs)
    partitioner = CudaGqaPartitioner(**compile_options)
    edge = to_edge_transform_and_lower(exported, partitioner=[partitioner])
    return edge.to_executorch(), partitioner.report
