"""Compile add (elementwise A + B over contiguous tensors) for one dtype and GPU arch."""

from __future__ import annotations

import torch
import triton

from ..kernels.add import add
from ..limits import SUPPORTED_DTYPES
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE

BLOCK = 1024


def compile_add(*, dtype: torch.dtype, arch: int) -> CompiledKernel:
    """add of two contiguous `dtype` tensors into a third (pointers compiled as 16-byte aligned),
    as a cubin for sm_<arch>."""
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"add dtype {dtype} is not supported: use float16, bfloat16 or float32")
    pointer = POINTER_TYPE[dtype]
    return compile_to_cubin(add, signature={"A": pointer, "B": pointer, "Out": pointer, "N": "i32"},
                            constexprs={"BLOCK": BLOCK}, divisible_by_16=frozenset(["A", "B", "Out"]), arch=arch,
                            num_warps=4, num_stages=1)


def add_grid(n: int) -> tuple[int, int, int]:
    """One program per BLOCK elements."""
    return (triton.cdiv(n, BLOCK), 1, 1)
