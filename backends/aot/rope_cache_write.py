"""Compile rope_cache_write (q/k norm + RoPE on the fused q/k/v rows, k and v into the KV cache) for one
attention layer shape and GPU arch."""

from __future__ import annotations

from typing import Optional

import torch
import triton

from ..kernels.rope_cache_write import rope_cache_write
from ..limits import SUPPORTED_DTYPES, check_head_dim
from .programmatic_launch import wait_for_previous_constexpr
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE

POSITION_DTYPES = (torch.int32, torch.int64)
STRIDES = ("stride_qkv", "stride_qoh", "stride_qol", "stride_ch", "stride_cs")


def rope_cache_write_num_warps(head_dim: int) -> int:
    """One warp per head up to 128 wide, two for 256."""
    return 1 if head_dim <= 128 else 2


def compile_rope_cache_write(*, dtype: torch.dtype, position_dtype: torch.dtype, heads_q: int, heads_kv: int,
                             head_dim: int, arch: int, qk_norm: bool = False, norm_offset: float = 0.0,
                             table_dtype: Optional[torch.dtype] = None,
                             norm_weight_dtype: Optional[torch.dtype] = None,
                             interleaved: bool = False, wait_for_previous: bool = False) -> CompiledKernel:
    """rope_cache_write for `dtype` activations and caches (QKV, Q_out, K_cache, V_cache), Cos/Sin
    tables of `table_dtype` and q/k norm weights of `norm_weight_dtype` (both default: `dtype`),
    InputPos of `position_dtype`, as a cubin for sm_<arch>.
    interleaved: RoPE on (even, odd) pairs with [rows, head_dim / 2] tables (ExecuTorch llama's
    form) instead of rotate-half with [rows, head_dim] ones.

    Every tensor pointer and stride is compiled as a multiple of 16 (bytes,
    elements: head_dim is a multiple of 16); InputPos and KvLen carry no
    such assumption. Without qk_norm, QNormW and KNormW are not parameters
    (eps stays one, unused).
    """
    check_head_dim(head_dim)
    table_dtype = dtype if table_dtype is None else table_dtype
    norm_weight_dtype = dtype if norm_weight_dtype is None else norm_weight_dtype
    for what, given in (("activation", dtype), ("RoPE table", table_dtype), ("q/k norm weight", norm_weight_dtype)):
        if given not in SUPPORTED_DTYPES:
            raise ValueError(f"rope_cache_write {what} dtype {given} is not supported: "
                             "use float16, bfloat16 or float32")
    if position_dtype not in POSITION_DTYPES:
        raise ValueError(f"input_pos must be int32 or int64, not {position_dtype}")
    if heads_q <= 0 or heads_kv <= 0 or heads_q % heads_kv:
        raise ValueError(f"{heads_q} q heads are not a positive multiple of {heads_kv} kv heads")
    pointer = POINTER_TYPE[dtype]
    signature = {"QKV": pointer, "Cos": POINTER_TYPE[table_dtype], "Sin": POINTER_TYPE[table_dtype],
                 "InputPos": POINTER_TYPE[position_dtype], "Q_out": pointer, "K_cache": pointer, "V_cache": pointer,
                 "KvLen": "*i32", "L": "i32", "S": "i32", "eps": "fp32", **{s: "i32" for s in STRIDES}}
    constexprs = {"HEADS_Q": heads_q, "HEADS_KV": heads_kv, "HEAD_DIM": head_dim,
                  "BLOCK_D": triton.next_power_of_2(head_dim), "QK_NORM": qk_norm, "NORM_OFFSET": float(norm_offset),
                  "INTERLEAVED": bool(interleaved), **wait_for_previous_constexpr(wait_for_previous, arch)}
    if qk_norm:
        signature.update(QNormW=POINTER_TYPE[norm_weight_dtype], KNormW=POINTER_TYPE[norm_weight_dtype])
    else:
        constexprs.update(QNormW=None, KNormW=None)
    aligned = [name for name, kind in signature.items() if kind.startswith("*")
               and name not in ("InputPos", "KvLen")] + list(STRIDES)
    return compile_to_cubin(rope_cache_write, signature=signature, constexprs=constexprs,
                            divisible_by_16=frozenset(aligned), arch=arch,
                            num_warps=rope_cache_write_num_warps(head_dim), num_stages=1)


def rope_cache_write_grid(l: int, heads_q: int, heads_kv: int) -> tuple[int, int, int]:
    """Program (row, head): q heads first, then one program per k/v head pair."""
    return (l, heads_q + heads_kv, 1)
