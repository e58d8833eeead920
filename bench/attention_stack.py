"""A Llama-3-8B-shaped stack of GQA attention layers (H_q 32, H_kv 8, D 128, bf16) for AOT benchmarks.

Only the attention: layer i attends the previous layer's output over its
own K/V, so every layer is one delegated SDPA and the stack compiles and
serializes like a real model's attention without its weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

HEADS_Q, HEADS_KV, HEAD_DIM, DTYPE = 32, 8, 128, torch.bfloat16
# name -> (L_q, L_kv, is_causal)
SHAPES = {"prefill": (512, 512, True), "decode": (1, 4096, False)}


class AttentionStack(nn.Module):
    """distinct_layers: each layer gets its own softmax scale, so no two delegate
    payloads are equal (ExecuTorch stores equal payloads once by itself) while
    their kernels are, as when layers differ in anything but their kernels."""

    def __init__(self, layers: int, is_causal: bool, distinct_layers: bool = False):
        super().__init__()
        self.layers, self.is_causal, self.distinct_layers = layers, is_causal, distinct_layers

    def forward(self, q, *kv):
        for i in range(self.layers):
            scale = HEAD_DIM**-0.5 * (1 + i / 64) if self.distinct_layers else None
            q = F.scaled_dot_product_attention(q, kv[2 * i], kv[2 * i + 1], is_causal=self.is_causal, scale=scale,
                                               enable_gqa=True)
        return q


def attention_stack(layers: int, shape: str, distinct_layers: bool = False) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    l_q, l_kv, is_causal = SHAPES[shape]
    # Export reads only shapes and dtypes: zeros are cheaper to make than random data.
    q = torch.zeros(1, HEADS_Q, l_q, HEAD_DIM, dtype=DTYPE)
    kv = tuple(torch.zeros(1, HEADS_KV, l_kv, HEAD_DIM, dtype=DTYPE) for _ in range(2 * layers))
    return AttentionStack(layers, is_causal, distinct_layers), (q, *kv)


def lower_stack(layers: int, shape: str, distinct_layers: bool = False, **compile_options):
    """The ExecutorchProgramManager of the stack, every layer delegated to CudaGqaBackend."""
    from executorch.exir import to_edge_transform_and_lower

    from cuda_gqa.backends.partition import CudaGqaPartitioner

    model, inputs = attention_stack(layers, shape, distinct_layers)
    partitioner = CudaGqaPartitioner(**compile_options)
    edge = to_edge_transform_and_lower(torch.export.export(model, inputs), partitioner=[partitioner])
    delegated = sum(d.delegated for d in partitioner.report)
    if delegated != layers:
        raise RuntimeError(f"{delegated} of {layers} layers delegated: {partitioner.report}")
    return edge.to_executorch()
