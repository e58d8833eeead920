"""Compile rmsnorm (RMSNorm over the rows of a [rows, hidden] activation) for one model and GPU arch."""

from __future__ import annotations

import torch
import triton

from ..kernels.rmsnorm import rmsnorm
from ..limits import SUPPORTED_DTYPES
from .programmatic_launch import wait_for_previous_constexpr
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE

MAX_SINGLE_PASS_COLS = 8192  # wider rows are read in chunks of this many columns, twice


def rmsnorm_block(n_cols: int) -> int:
    """Columns one pass over a row handles: the whole row up to MAX_SINGLE_PASS_COLS."""
    return min(triton.next_power_of_2(n_cols), MAX_SINGLE_PASS_COLS)


def rmsnorm_num_warps(block: int) -> int:
    """Warps for a BLOCK-wide pass: 8 elements of a row per thread, 1 to 16 warps."""
    return max(1, min(16, block // 256))


def compile_rmsnorm(*, dtype: torch.dtype, n_cols: int, arch: int, weight_offset: float = 0.0,
                    has_residual: bool = False, weight_dtype: torch.dtype | None = None,
                    wait_for_previous: bool = False) -> CompiledKernel:
    """rmsnorm over rows of n_cols `dtype` elements (X, Residual, Out), weights of `weight_dtype`
    (default: `dtype`), as a cubin for sm_<arch>.

    Pointers are compiled as 16-byte aligned; the row strides as multiples of
    16 elements when n_cols is one (any row-major activation of that width),
    else with no assumption. Without has_residual, Residual and stride_rr are
    not parameters.
    """
    weight_dtype = dtype if weight_dtype is None else weight_dtype
    for what, given in (("activation", dtype), ("weight", weight_dtype)):
        if given not in SUPPORTED_DTYPES:
            raise ValueError(f"rmsnorm {what} dtype {given} is not supported: use float16, bfloat16 or float32")
    if n_cols <= 0:
        raise ValueError(f"rmsnorm width {n_cols} must be positive")
    strides = ["stride_xr", "stride_or"] + (["stride_rr"] if has_residual else [])
    pointers = ["X", "Out"] + (["Residual"] if has_residual else [])
    signature = {"W": POINTER_TYPE[weight_dtype], "eps": "fp32", **{p: POINTER_TYPE[dtype] for p in pointers},
                 **{s: "i32" for s in strides}}
    block = rmsnorm_block(n_cols)
    constexprs = {"N_COLS": n_cols, "BLOCK": block, "WEIGHT_OFFSET": float(weight_offset),
                  "HAS_RESIDUAL": has_residual, **wait_for_previous_constexpr(wait_for_previous, arch)}
    if not has_residual:
        constexprs.update(Residual=None, stride_rr=0)
    aligned = ["W", *pointers] + (strides if n_cols % 16 == 0 else [])
    return compile_to_cubin(rmsnorm, signature=signature, constexprs=constexprs,
                            divisible_by_16=frozenset(aligned), arch=arch,
                            num_warps=rmsnorm_num_warps(block), num_stages=1)


def rmsnorm_grid(n_rows: int) -> tuple[int, int, int]:
    """One program per row (token)."""
    return (n_rows, 1, 1)
