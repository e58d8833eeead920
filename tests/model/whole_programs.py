"""Whole-step programs lowered with CudaGqaModelPartitioner, and their delegate's payload and named data."""

import torch
from executorch.exir import to_edge_transform_and_lower

from cuda_gqa.backends.partition import CudaGqaModelPartitioner


def lower_whole(model, length: int, archs=("sm_90",), max_tokens=None):
    """(edge program manager, partitioner) of `model`'s step of `length` tokens; with max_tokens,
    of a step of a dynamic token count up to max_tokens (`length` is then the example's)."""
    dynamic = None if max_tokens is None else ({1: torch.export.Dim("tokens", min=1, max=max_tokens)}, None)
    with torch.no_grad():
        program = torch.export.export(model, (torch.zeros(1, length, dtype=torch.long), torch.tensor([0])),
                                      dynamic_shapes=dynamic)
    partitioner = CudaGqaModelPartitioner(archs=list(archs))
    return to_edge_transform_and_lower(program, partitioner=[partitioner]), partitioner


def delegates(edge) -> list:
    module = edge.exported_program().graph_module
    return [m for name, m in module.named_children() if name.startswith("lowered_module")]


def named_data(lowered) -> dict[str, bytes]:
    out = lowered.named_data_store_output
    return {key: bytes(out.buffers[entry.buffer_index]) for key, entry in out.pte_data.items()}


def delegate_input_names(lowered) -> list[str]:
    return [n.name for n in lowered.original_module.graph.nodes
            if n.op == "placeholder" and n.name in lowered.original_module.graph_signature.user_inputs]
