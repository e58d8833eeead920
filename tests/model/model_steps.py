"""Exported decoder steps, as the whole-model partitioner sees them."""

import torch


def edge_step(model, length: int):
    """`model`'s step of `length` tokens, exported and in ExecuTorch's edge dialect with
    linear and SDPA kept whole (as the whole-model partitioner keeps them)."""
    from executorch.exir import EdgeCompileConfig, to_edge

    with torch.no_grad():
        program = torch.export.export(model, (torch.zeros(1, length, dtype=torch.long), torch.tensor([0])))
    config = EdgeCompileConfig(_check_ir_validity=False, preserve_ops=[
        torch.ops.aten.linear.default, torch.ops.aten.scaled_dot_product_attention.default])
    return to_edge(program, compile_config=config).exported_program()
