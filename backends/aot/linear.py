"""Compile linear_gemv / linear_gemm (kernels/linear.py) for one linear layer and GPU arch.

Entry parameters of every variant, in order (hidden scratch pointers last):
    X, W, Bias, Residual, Out, M, eps, stride_xm, stride_rm, stride_om,
    global_scratch, profile_scratch
N and K are compiled in (the weights are static); Bias and Residual are
parameters even where the variant does not read them (bind them to Out, or 0).

With aligned=True (the default) the cubin assumes, and the runtime must check
before launching it:
  * X, W, Residual and Out start at 16-byte aligned addresses (0 passes for an
    unused Residual);
  * stride_xm, stride_rm and stride_om are multiples of 16 elements (with a
    single row of X the stride is never used: pass one that is);
Bias, M and eps carry no assumption. aligned=False compiles the generic
variant for activations that break these: it assumes only W aligned (a
constant the runtime uploads, so aligns, itself), and keeps its wide loads.
"""

from __future__ import annotations

import torch

from ..heuristics import LINEAR_KINDS, LinearConfig
from ..kernels.linear import GATED_ACTIVATIONS, linear_gemm, linear_gemv
from ..limits import SUPPORTED_DTYPES
from .programmatic_launch import wait_for_previous_constexpr
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE

OUT_DTYPES = SUPPORTED_DTYPES
STRIDES = ("stride_xm", "stride_rm", "stride_om")
ALIGNED_PARAMS = frozenset(["X", "W", "Residual", "Out", *STRIDES])
GENERIC_ALIGNED_PARAMS = frozenset(["W"])
KERNELS = {"gemv": linear_gemv, "gemm": linear_gemm}


def linear_problem(*, kind: str, dtype: torch.dtype, out_dtype: torch.dtype, n: int, k: int, config: LinearConfig,
                   gated: str, softcap: float) -> str | None:
    """None when compile_linear takes these arguments, else what is wrong with them."""
    if kind not in LINEAR_KINDS:
        return f"linear kind {kind!r} is not one of {LINEAR_KINDS}"
    if dtype not in SUPPORTED_DTYPES:
        return f"linear dtype {dtype} is not supported: use float16, bfloat16 or float32"
    if out_dtype not in (dtype, torch.float32):
        return f"linear output dtype {out_dtype} must be the input's ({dtype}) or float32"
    if n < 1 or k < 1:
        return f"linear sizes must be positive: n={n}, k={k}"
    if gated not in GATED_ACTIVATIONS:
        return f"gated={gated!r} is not one of {GATED_ACTIVATIONS}"
    if softcap < 0:
        return f"softcap={softcap} is negative"
    if config.split_k != 1:
        return f"split_k={config.split_k}: the linear kernels run only split_k=1"
    if kind == "gemm" and min(config.block_m, config.block_n, config.block_k) < 16:
        return f"linear_gemm tiles must be at least 16 wide (tl.dot), not {config}"
    return None


def compile_linear(*, kind: str, dtype: torch.dtype, out_dtype: torch.dtype, n: int, k: int, arch: int,
                   config: LinearConfig, has_bias: bool = False, has_residual: bool = False,
                   norm_prologue: bool = False, gated: str = "", softcap: float = 0.0,
                   aligned: bool = True, wait_for_previous: bool = False) -> CompiledKernel:
    """linear_<kind> for an [n (x2 when gated), k] weight of `dtype` writing `out_dtype`, as a cubin for sm_<arch>.

    config: tiles from heuristics.linear_config (launch with heuristics.linear_grid).
    aligned: assume 16-byte aligned activations and strides (module docstring); W is assumed aligned always.
    """
    problem = linear_problem(kind=kind, dtype=dtype, out_dtype=out_dtype, n=n, k=k, config=config, gated=gated,
                             softcap=softcap)
    if problem is not None:
        raise ValueError(problem)
    pointer = POINTER_TYPE[dtype]
    signature = {"X": pointer, "W": pointer, "Bias": pointer, "Residual": pointer, "Out": POINTER_TYPE[out_dtype],
                 "M": "i32", "eps": "fp32", **{s: "i32" for s in STRIDES}}
    constexprs = {"N": n, "K": k, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n, "BLOCK_K": config.block_k,
                  "NORM_PROLOGUE": norm_prologue, "HAS_BIAS": has_bias, "HAS_RESIDUAL": has_residual,
                  "GATED": gated, "SOFTCAP": float(softcap), **wait_for_previous_constexpr(wait_for_previous, arch)}
    return compile_to_cubin(KERNELS[kind], signature=signature, constexprs=constexprs,
                            divisible_by_16=ALIGNED_PARAMS if aligned else GENERIC_ALIGNED_PARAMS, arch=arch,
                            num_warps=config.num_warps, num_stages=config.num_stages)
