"""Compile add (elementwise A + B over rows) for one dtype, row width and GPU arch."""

from __future__ import annotations

import torch
import triton

from ..kernels.add import add
from ..limits import SUPPORTED_DTYPES
from .programmatic_launch import wait_for_previous_constexpr
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE

BLOCK = 1024
NUM_WARPS = 4
STRIDES = ("stride_ar", "stride_br", "stride_or")


def compile_add(*, dtype: torch.dtype, n_cols: int, arch: int, wait_for_previous: bool = False) -> CompiledKernel:
    """add of rows of n_cols `dtype` elements (A, B, Out), as a cubin for sm_<arch>.

    Pointers are compiled as 16-byte aligned; the row strides as multiples of
    16 elements when n_cols is one, else with no assumption.
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"add dtype {dtype} is not supported: use float16, bfloat16 or float32")
    if n_cols <= 0:
        raise ValueError(f"add width {n_cols} must be positive")
    pointer = POINTER_TYPE[dtype]
    signature = {"A": pointer, "B": pointer, "Out": pointer, **{s: "i32" for s in STRIDES}}
    aligned = ["A", "B", "Out"] + (list(STRIDES) if n_cols % 16 == 0 else [])
    return compile_to_cubin(add, signature=signature, constexprs={"N_COLS": n_cols, "BLOCK": BLOCK,
                                                               **wait_for_previous_constexpr(wait_for_previous, arch)},
                            divisible_by_16=frozenset(aligned), arch=arch, num_warps=NUM_WARPS, num_stages=1)


def add_grid(n_rows: int, n_cols: int, block: int = BLOCK) -> tuple[int, int, int]:
    """Program (row, column block); `block` is the compiled BLOCK."""
    return (n_rows, triton.cdiv(n_cols, block), 1)
