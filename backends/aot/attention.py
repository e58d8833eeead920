"""Compile gqa_attention_fwd for one attention problem and GPU arch."""

from __future__ import annotations

import torch
import triton

from ..heuristics import L2_SECTION_BYTES, WS_ARCH, WS_BLOCK_M, WS_MAX_REGISTERS, WS_NUM_WARPS
from ..kernels.attention_fwd import gqa_attention_fwd
from ..limits import SUPPORTED_DTYPES, check_head_dim
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE, AttentionVariant

_STRIDES = [f"stride_{t}{d}" for t, dims in (("q", "bhm"), ("k", "bhn"), ("v", "bhn"), ("o", "bhm")) for d in dims]


def compile_attention(*, dtype: torch.dtype, head_dim: int, num_heads_q: int, group_size: int,
                      variant: AttentionVariant, arch: int, block_m: int = 64, block_n: int = 64, num_warps: int = 4,
                      num_stages: int = 2, aligned: bool = True, lengths_aligned: bool = False,
                      warp_specialized: bool = False) -> CompiledKernel:
    """gqa_attention_fwd specialised for this problem, as a cubin for sm_<arch>.

    Pointers and all strides are compiled as multiples of 16 (elements for
    strides): head dims are multiples of 16, so row strides of contiguous or
    [B, L, H, D]-viewed tensors are too. The runtime checks this per launch.
    The mask and kv_len pointers and mask strides carry no such assumption.
    aligned=False drops the assumption: the generic variant for inputs that break it.
    lengths_aligned=True (with aligned) also compiles L_q and L_kv as multiples
    of 16: on an H200 that made causal prefill ~6% faster at 64-row tiles
    (bench/results/h200_prefill_experiments.md).
    warp_specialized: kernels/attention_fwd_ws.gqa_attention_fwd_ws instead
    (sm_90, aligned; block_m and num_warps are then its own: heuristics.WS_*, and
    heuristics.warp_specialized_forward_applies for the calls it takes).
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype} is not supported: use float16, bfloat16 or float32")
    check_head_dim(head_dim)
    pointer = POINTER_TYPE[dtype]
    signature = {"Q": pointer, "K": pointer, "V": pointer, "Out": pointer, "sm_scale": "fp32",
                 "L_q": "i32", "L_kv": "i32", **{s: "i32" for s in _STRIDES}, **variant.signature()}
    constexprs = {"NUM_HEADS_Q": num_heads_q, "GROUP_SIZE": group_size, "HEAD_DIM": head_dim,
                  "BLOCK_D": triton.next_power_of_2(head_dim), "BLOCK_M": block_m, "BLOCK_N": block_n,
                  **variant.constexprs(), "L2_SECTION_BYTES": L2_SECTION_BYTES}
    if lengths_aligned and not aligned:
        raise ValueError("lengths_aligned needs aligned")
    divisible = ["Q", "K", "V", "Out", *_STRIDES] if aligned else []
    divisible += ["L_q", "L_kv"] if lengths_aligned else []
    if not warp_specialized:
        return compile_to_cubin(gqa_attention_fwd, signature=signature, constexprs=constexprs,
                                divisible_by_16=frozenset(divisible), arch=arch,
                                num_warps=num_warps, num_stages=num_stages)
    if arch != WS_ARCH or not aligned:
        raise ValueError(f"the warp-specialized forward is for aligned inputs on sm_{WS_ARCH} (asked: sm_{arch}, "
                         f"aligned={aligned})")
    if (block_m, num_warps) != (WS_BLOCK_M, WS_NUM_WARPS):
        raise ValueError(f"the warp-specialized forward has block_m {WS_BLOCK_M} and {WS_NUM_WARPS} warps, "
                         f"not {block_m} and {num_warps}")
    from ..kernels.attention_fwd_ws import gqa_attention_fwd_ws  # Gluon: Triton 3.9's API

    # Its stages are its K/V ring's (NUM_STAGES); Triton's pipeliner has nothing to do.
    return compile_to_cubin(gqa_attention_fwd_ws, signature=signature,
                            constexprs={**constexprs, "NUM_STAGES": num_stages}, divisible_by_16=frozenset(divisible),
                            arch=arch, num_warps=num_warps, num_stages=1, maxnreg=WS_MAX_REGISTERS)
