"""Compile last_row (the last of L rows, copied) for one dtype, row width and GPU arch."""

from __future__ import annotations

import torch
import triton

from ..kernels.last_row import last_row
from ..limits import SUPPORTED_DTYPES
from .programmatic_launch import wait_for_previous_constexpr
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE

BLOCK = 1024
NUM_WARPS = 4


def compile_last_row(*, dtype: torch.dtype, n_cols: int, arch: int, wait_for_previous: bool = False) -> CompiledKernel:
    """last_row of rows of n_cols `dtype` elements, as a cubin for sm_<arch>.

    X and Out are compiled as 16-byte aligned; stride_xr as a multiple of 16
    elements when n_cols is one; L carries no assumption.
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"last_row dtype {dtype} is not supported: use float16, bfloat16 or float32")
    if n_cols <= 0:
        raise ValueError(f"last_row width {n_cols} must be positive")
    pointer = POINTER_TYPE[dtype]
    signature = {"X": pointer, "Out": pointer, "L": "i32", "stride_xr": "i32"}
    aligned = ["X", "Out"] + (["stride_xr"] if n_cols % 16 == 0 else [])
    return compile_to_cubin(last_row, signature=signature, constexprs={"N_COLS": n_cols, "BLOCK": BLOCK,
                                                                    **wait_for_previous_constexpr(wait_for_previous, arch)},
                            divisible_by_16=frozenset(aligned), arch=arch, num_warps=NUM_WARPS, num_stages=1)


def last_row_grid(n_cols: int, block: int = BLOCK) -> tuple[int, int, int]:
    """Program c: columns [c * block, (c + 1) * block)."""
    return (triton.cdiv(n_cols, block), 1, 1)
