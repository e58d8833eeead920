"""Launch the linear kernels on torch tensors through Triton's JIT.

For tests and benchmarks (on a GPU, or on the CPU under TRITON_INTERPRET=1);
the product path launches the AOT cubins (backends/aot/linear.py), with the
same heuristics.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..heuristics import LinearConfig, linear_config, linear_grid, linear_kind
from .linear import GATED_ACTIVATIONS, linear_gemm, linear_gemv


def _device_arch(t: torch.Tensor) -> Optional[int]:
    if t.device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(t.device)
    return 10 * major + minor


def _check(x, weight, bias, residual, out, n, gated):
    if gated not in GATED_ACTIVATIONS:
        raise ValueError(f"gated={gated!r} is not one of {GATED_ACTIVATIONS}")
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be [M, K] with K contiguous, not shape {tuple(x.shape)} strides {x.stride()}")
    if weight.dim() != 2 or not weight.is_contiguous() or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be a contiguous [N_w, K={x.shape[1]}], not {tuple(weight.shape)}")
    if gated and weight.shape[0] % 2:
        raise ValueError(f"a gated weight stacks [gate; up]: its {weight.shape[0]} rows are odd")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], not {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} is {t.dtype}, x is {x.dtype}: they must match")
    if out is not None and out.dtype not in (x.dtype, torch.float32):
        raise ValueError(f"out is {out.dtype}: it must be x's dtype ({x.dtype}) or float32")
    for name, t in (("residual", residual), ("out", out)):
        if t is not None and (tuple(t.shape) != (x.shape[0], n) or t.stride(1) != 1):
            raise ValueError(f"{name} must be [{x.shape[0]}, {n}] with the last dim contiguous, "
                             f"not {tuple(t.shape)} strides {t.stride()}")


def linear(x: torch.Tensor, weight: torch.Tensor, *, bias: Optional[torch.Tensor] = None,
           residual: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None,
           out_dtype: Optional[torch.dtype] = None, norm_eps: Optional[float] = None, gated: str = "",
           softcap: float = 0.0, kind: Optional[str] = None, config: Optional[LinearConfig] = None) -> torch.Tensor:
    """epilogue(r * x @ weight^T) (kernels/linear.py); returns out (allocated when not given).

    norm_eps: fold an RMSNorm of x with this eps in (NORM_PROLOGUE; its weight
    must already be in `weight`'s columns). residual may be out itself.
    kind/config: the heuristics' choice unless given.
    """
    n = weight.shape[0] // (2 if gated else 1)
    _check(x, weight, bias, residual, out, n, gated)
    m, k = x.shape
    kind = kind or linear_kind(m)
    config = config or linear_config(kind, m, n, k, x.dtype, _device_arch(x), gated=bool(gated))
    if config.split_k != 1:
        raise ValueError(f"split_k={config.split_k}: the linear kernels run only split_k=1")
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype or x.dtype, device=x.device)
    kernel = linear_gemv if kind == "gemv" else linear_gemm
    kernel[linear_grid(kind, m, n, config)](
        x, weight, out if bias is None else bias, out if residual is None else residual, out,
        m, n, k, 0.0 if norm_eps is None else float(norm_eps),
        x.stride(0), 0 if residual is None else residual.stride(0), out.stride(0),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        NORM_PROLOGUE=norm_eps is not None, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        GATED=gated, SOFTCAP=float(softcap), num_warps=config.num_warps, num_stages=config.num_stages)
    return out
