"""rmsnorm: one row of X normalised by its root mean square, scaled by (WEIGHT_OFFSET + W).

Out[r, :] = (X[r, :] * rsqrt(mean(X[r, :]^2) + eps)) * (WEIGHT_OFFSET + W), in
float32, rounded to Out's dtype (export/llm/decoder.py's RMSNorm; Gemma:
WEIGHT_OFFSET = 1, weights stored around 0).

HAS_RESIDUAL: Out[r, :] = Residual[r, :] + that rounded norm (Gemma's sandwich
norm, x = x + post_norm(attn)); the add is done in float32 and rounded once,
as torch adds two half-precision tensors. Residual may alias Out: each
element is read before the same program writes it.

One program per row (rows = tokens; batch 1: a [1, L, hidden] activation is
L rows). N_COLS need not be a power of two. A row of at most BLOCK columns is
held in registers; a wider one is read twice (sum of squares, then scale).
"""

import triton
import triton.language as tl

from .programmatic_launch import wait_for_previous


@triton.jit
def _store_normed(x, rstd, W, Residual, Out, r_row, o_row, cols,
                  N_COLS: tl.constexpr, WEIGHT_OFFSET: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """Out[cols] = rounded (x * rstd * (WEIGHT_OFFSET + W[cols])) [+ Residual[cols]], x in float32."""
    ok = cols < N_COLS
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    y = (x * rstd * (WEIGHT_OFFSET + w)).to(Out.dtype.element_ty)
    if HAS_RESIDUAL:
        residual = tl.load(Residual + r_row + cols, mask=ok, other=0.0).to(tl.float32)
        y = (residual + y.to(tl.float32)).to(Out.dtype.element_ty)
    tl.store(Out + o_row + cols, y, mask=ok)


@triton.jit
def rmsnorm(
    X, W, Residual, Out,
    eps, stride_xr, stride_rr, stride_or,
    N_COLS: tl.constexpr, BLOCK: tl.constexpr, WEIGHT_OFFSET: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    WAIT_FOR_PREVIOUS: tl.constexpr = False,
):
    wait_for_previous(WAIT_FOR_PREVIOUS)
    row = tl.program_id(0).to(tl.int64)
    x_row, r_row, o_row = row * stride_xr, row * stride_rr, row * stride_or
    cols = tl.arange(0, BLOCK)
    if N_COLS <= BLOCK:
        x = tl.load(X + x_row + cols, mask=cols < N_COLS, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N_COLS + eps)
        _store_normed(x, rstd, W, Residual, Out, r_row, o_row, cols, N_COLS, WEIGHT_OFFSET, HAS_RESIDUAL)
    else:
        squares = tl.zeros([BLOCK], dtype=tl.float32)
        for start in tl.static_range(0, N_COLS, BLOCK):
            x = tl.load(X + x_row + start + cols, mask=start + cols < N_COLS, other=0.0).to(tl.float32)
            squares += x * x
        rstd = tl.rsqrt(tl.sum(squares, axis=0) / N_COLS + eps)
        for start in tl.static_range(0, N_COLS, BLOCK):
            x = tl.load(X + x_row + start + cols, mask=start + cols < N_COLS, other=0.0).to(tl.float32)
            _store_normed(x, rstd, W, Residual, Out, r_row, o_row, start + cols, N_COLS, WEIGHT_OFFSET,
                          HAS_RESIDUAL)
