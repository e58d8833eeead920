"""Compile kv_cache_write (the delegate-owned KV cache's row scatter) and kv_len_from_start for one problem
and GPU arch."""

from __future__ import annotations

import torch
import triton

from ..kernels.kv_cache_write import kv_cache_write, kv_len_from_start
from ..limits import SUPPORTED_DTYPES, check_head_dim
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE

POSITION_DTYPES = (torch.int32, torch.int64)
STRIDES = tuple(f"stride_{t}{d}" for t, dims in (("k", "bhl"), ("v", "bhl"), ("kc", "bhs"), ("vc", "bhs"))
                for d in dims)


def compile_kv_cache_write(*, dtype: torch.dtype, position_dtype: torch.dtype, head_dim: int, num_heads_kv: int,
                           l_new: int, arch: int, from_start: bool = False) -> CompiledKernel:
    """kv_cache_write for caches of `dtype` and `position_dtype` positions, as a cubin for sm_<arch>.

    The K/V pointers and strides are compiled as multiples of 16 (bytes,
    elements), as in the attention kernels; Positions and KvLen carry no
    such assumption. BLOCK_L covers the l_new positions the kv_len reduction
    reads. from_start: Positions is the first row's position (FROM_START;
    l_new is then not needed, any number of rows is written).
    """
    check_head_dim(head_dim)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"cache dtype {dtype} is not supported: use float16, bfloat16 or float32")
    if position_dtype not in POSITION_DTYPES:
        raise ValueError(f"cache positions must be int32 or int64, not {position_dtype}")
    pointer = POINTER_TYPE[dtype]
    signature = {"K_new": pointer, "V_new": pointer, "Positions": POINTER_TYPE[position_dtype], "K_cache": pointer,
                 "V_cache": pointer, "KvLen": "*i32", "L_new": "i32", "S": "i32", **{s: "i32" for s in STRIDES}}
    constexprs = {"NUM_HEADS_KV": num_heads_kv, "HEAD_DIM": head_dim, "BLOCK_D": triton.next_power_of_2(head_dim),
                  "BLOCK_L": 1 if from_start else triton.next_power_of_2(max(l_new, 1)), "FROM_START": from_start}
    return compile_to_cubin(kv_cache_write, signature=signature, constexprs=constexprs,
                            divisible_by_16=frozenset(["K_new", "V_new", "K_cache", "V_cache", *STRIDES]),
                            arch=arch, num_warps=1, num_stages=1)


def compile_kv_len_from_start(*, start_dtype: torch.dtype, arch: int) -> CompiledKernel:
    """kv_len_from_start for a `start_dtype` start position, as a cubin for sm_<arch> (no divisibility assumed)."""
    if start_dtype not in POSITION_DTYPES:
        raise ValueError(f"the start position must be int32 or int64, not {start_dtype}")
    signature = {"Start": POINTER_TYPE[start_dtype], "KvLen": "*i32", "L_q": "i32", "S": "i32"}
    return compile_to_cubin(kv_len_from_start, signature=signature, constexprs={}, divisible_by_16=frozenset(),
                            arch=arch, num_warps=1, num_stages=1)
