"""Compile the split-KV decode kernels (gqa_decode_split, gqa_decode_combine) for one problem and GPU arch."""

from __future__ import annotations

import torch
import triton

from ..heuristics import merge_block_s
from ..kernels.attention_decode import gqa_decode_combine, gqa_decode_split
from ..limits import SUPPORTED_DTYPES, check_head_dim
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE, AttentionVariant

_SPLIT_STRIDES = [f"stride_{t}{d}" for t, dims in (("q", "bhm"), ("k", "bhn"), ("v", "bhn"), ("o", "bhm"))
                  for d in dims]
_OUT_STRIDES = ["stride_ob", "stride_oh", "stride_om"]
# Splits merged per step of the combine's loop by default (plans pass heuristics.combine_block_s).
COMBINE_BLOCK_S = 16


def _pointer_type(dtype: torch.dtype) -> str:
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype} is not supported: use float16, bfloat16 or float32")
    return POINTER_TYPE[dtype]


def compile_decode_split(*, dtype: torch.dtype, head_dim: int, num_heads_q: int, group_size: int,
                         variant: AttentionVariant, single_split: bool, arch: int, block_m: int, block_n: int,
                         num_warps: int = 4, num_stages: int = 2, fused_combine: bool = False,
                         aligned: bool = True, launch_dependents: bool = False) -> CompiledKernel:
    """gqa_decode_split specialised for this problem, as a cubin for sm_<arch>.

    single_split=True is the one-launch variant that writes Out (grid axis 0
    must then be 1); otherwise it writes the fp32 Partial/Lse workspace for
    gqa_decode_combine, or with fused_combine=True merges the splits itself
    through int32 Arrivals counters in the workspace (zeroed once at init by
    the runtime). Q/K/V/Out, the workspace pointers and all strides are
    compiled as multiples of 16 (bytes for pointers, elements for strides),
    as in compile_attention; the runtime checks this per launch. The mask
    and kv_len pointers and mask strides carry no such assumption.
    aligned=False drops it everywhere (the generic variant: with a single
    split, Partial and Lse take Out's address). launch_dependents: lets a
    combine launched as its programmatic dependent start early (sm_90+ only).
    """
    check_head_dim(head_dim)
    pointer = _pointer_type(dtype)
    signature = {"Q": pointer, "K": pointer, "V": pointer, "Out": pointer, "Partial": "*fp32", "Lse": "*fp32",
                 "Arrivals": "*i32", "sm_scale": "fp32", "L_q": "i32", "L_kv": "i32",
                 **{s: "i32" for s in _SPLIT_STRIDES},
                 **variant.signature()}
    constexprs = {"NUM_HEADS_Q": num_heads_q, "GROUP_SIZE": group_size, "HEAD_DIM": head_dim,
                  "BLOCK_D": triton.next_power_of_2(head_dim), "BLOCK_M": block_m, "BLOCK_N": block_n,
                  "SINGLE_SPLIT": single_split, "FUSED_COMBINE": fused_combine and not single_split,
                  "MERGE_BLOCK_S": merge_block_s(block_m, head_dim), "LAUNCH_DEPENDENTS": launch_dependents,
                  **variant.constexprs()}
    return compile_to_cubin(gqa_decode_split, signature=signature, constexprs=constexprs,
                            divisible_by_16=frozenset(["Q", "K", "V", "Out", "Partial", "Lse", "Arrivals",
                                                       *_SPLIT_STRIDES] if aligned else []),
                            arch=arch, num_warps=num_warps, num_stages=num_stages)


def compile_decode_combine(*, dtype: torch.dtype, head_dim: int, num_heads_q: int, arch: int,
                           block_s: int = COMBINE_BLOCK_S, num_warps: int = 4,
                           aligned: bool = True, wait_for_splits: bool = False) -> CompiledKernel:
    """gqa_decode_combine for Out of `dtype`, as a cubin for sm_<arch>; NUM_SPLITS stays a runtime int.
    aligned=False: no divisibility assumed of Out and its strides (the generic variant).
    wait_for_splits: waits for the split kernel itself, so it may be launched as
    its programmatic dependent (sm_90+ only)."""
    check_head_dim(head_dim)
    signature = {"Partial": "*fp32", "Lse": "*fp32", "Out": _pointer_type(dtype), "L_q": "i32", "NUM_SPLITS": "i32",
                 **{s: "i32" for s in _OUT_STRIDES}}
    constexprs = {"NUM_HEADS_Q": num_heads_q, "HEAD_DIM": head_dim, "BLOCK_D": triton.next_power_of_2(head_dim),
                  "BLOCK_S": block_s, "WAIT_FOR_SPLITS": wait_for_splits}
    return compile_to_cubin(gqa_decode_combine, signature=signature, constexprs=constexprs,
                            divisible_by_16=frozenset(["Partial", "Lse", *(["Out", *_OUT_STRIDES] if aligned else [])]), arch=arch,
                            num_warps=num_warps, num_stages=1)
