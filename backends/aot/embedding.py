"""Compile embedding (token ids to rows of the embedding table, optionally scaled) for one model and GPU arch."""

from __future__ import annotations

import torch
import triton

from ..kernels.embedding import embedding
from ..limits import SUPPORTED_DTYPES
from .programmatic_launch import wait_for_previous_constexpr
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE

TOKEN_DTYPES = (torch.int32, torch.int64)
MAX_BLOCK_D = 4096
BLOCK_L = 128  # token ids program 0 checks per step


def embedding_scale(scale: float, dtype: torch.dtype) -> float:
    """`scale` rounded to `dtype`, as Gemma's `x * torch.tensor(hidden ** 0.5, dtype=x.dtype)` uses it."""
    return float(torch.tensor(scale, dtype=dtype))


def embedding_block_d(dim: int) -> int:
    return min(triton.next_power_of_2(dim), MAX_BLOCK_D)


def embedding_num_warps(block_d: int) -> int:
    """Warps for a BLOCK_D-wide row chunk: 8 elements per thread, 1 to 8 warps."""
    return max(1, min(8, block_d // 256))


def compile_embedding(*, dtype: torch.dtype, token_dtype: torch.dtype, dim: int, arch: int,
                      scale: float = 1.0, wait_for_previous: bool = False) -> CompiledKernel:
    """embedding from a contiguous [V, dim] `dtype` table into `dtype` rows, `token_dtype` ids, times
    `scale` rounded to `dtype` (embedding_scale; 1.0: a copy), as a cubin for sm_<arch>.

    Table and Out are compiled as 16-byte aligned, stride_o as a multiple of
    16 elements when dim is one; Tokens and Error carry no assumption.
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"embedding table dtype {dtype} is not supported: use float16, bfloat16 or float32")
    if token_dtype not in TOKEN_DTYPES:
        raise ValueError(f"token ids must be int32 or int64, not {token_dtype}")
    if dim <= 0:
        raise ValueError(f"embedding width {dim} must be positive")
    signature = {"Tokens": POINTER_TYPE[token_dtype], "Table": POINTER_TYPE[dtype], "Out": POINTER_TYPE[dtype],
                 "Error": "*i32", "L": "i32", "V": "i32", "stride_o": "i32"}
    block_d = embedding_block_d(dim)
    constexprs = {"D": dim, "BLOCK_D": block_d, "SCALE": embedding_scale(scale, dtype), "BLOCK_L": BLOCK_L,
                  **wait_for_previous_constexpr(wait_for_previous, arch)}
    aligned = ["Table", "Out"] + (["stride_o"] if dim % 16 == 0 else [])
    return compile_to_cubin(embedding, signature=signature, constexprs=constexprs,
                            divisible_by_16=frozenset(aligned), arch=arch,
                            num_warps=embedding_num_warps(block_d), num_stages=1)


def embedding_grid(l: int) -> tuple[int, int, int]:
    """One program per token."""
    return (l, 1, 1)
