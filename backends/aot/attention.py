"""Compile gqa_attention_fwd for one attention problem and GPU arch."""

from __future__ import annotations

import torch
import triton

from ..kernels.attention_fwd import gqa_attention_fwd
from ..limits import SUPPORTED_DTYPES, check_head_dim
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE, AttentionVariant

_STRIDES = [f"stride_{t}{d}" for t, dims in (("q", "bhm"), ("k", "bhn"), ("v", "bhn"), ("o", "bhm")) for d in dims]


def compile_attention(*, dtype: torch.dtype, head_dim: int, num_heads_q: int, group_size: int,
                      variant: AttentionVariant, arch: int, block_m: int = 64, block_n: int = 64, num_warps: int = 4,
                      num_stages: int = 2, aligned: bool = True, lengths_aligned: bool = False) -> CompiledKernel:
    """gqa_attention_fwd specialised for this problem, as a cubin for sm_<arch>.

    Pointers and all strides are compiled as multiples of 16 (elements for
    strides): head dims are multiples of 16, so row strides of contiguous or
    [B, L, H, D]-viewed tensors are too. The runtime checks this per launch.
    The mask and kv_len pointers and mask strides carry no such assumption.
    aligned=False drops the assumption: the generic variant for inputs that break it.
    lengths_aligned=True (with aligned) also compiles L_q and L_kv as multiples
    of 16: on an H200 that made causal prefill ~6% faster at 64-row tiles
    (bench/results/h200_prefill_experiments.md).
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype} is not supported: use float16, bfloat16 or float32")
    check_head_dim(head_dim)
    pointer = POINTER_TYPE[dtype]
    signature = {"Q": pointer, "K": pointer, "V": pointer, "Out": pointer, "sm_scale": "fp32",
                 "L_q": "i32", "L_kv": "i32", **{s: "i32" for s in _STRIDES}, **variant.signature()}
    constexprs = {"NUM_HEADS_Q": num_heads_q, "GROUP_SIZE": group_size, "HEAD_DIM": head_dim,
                  "BLOCK_D": triton.next_power_of_2(head_dim), "BLOCK_M": block_m, "BLOCK_N": block_n,
                  **variant.constexprs()}
    if lengths_aligned and not aligned:
        raise ValueError("lengths_aligned needs aligned")
    divisible = ["Q", "K", "V", "Out", *_STRIDES] if aligned else []
    divisible += ["L_q", "L_kv"] if lengths_aligned else []
    return compile_to_cubin(gqa_attention_fwd, signature=signature, constexprs=constexprs,
                            divisible_by_16=frozenset(divisible), arch=arch,
                            num_warps=num_warps, num_stages=num_stages)
