"""linear: the model's linear layers, with the fusions a whole decode step needs.

    Out[m, n] = epilogue(r_m * sum_k X[m, k] * W[n, k])

X [M, K] (row stride stride_xm, K contiguous); W [N_w, K] row-major (torch
nn.Linear's weight: one row per output feature); Out [M, N] (row stride
stride_om), of X's dtype or float32. Accumulation is fp32.

Variants (constexprs):
  NORM_PROLOGUE  r_m = rsqrt(mean_k X[m, k]^2 + eps): RMSNorm folded into the
                 linear (its weight is multiplied into W's columns at export,
                 so norm(x) @ W^T == r * (x @ W'^T)). r is a per-row scale of
                 the dot product, so the sum of squares is taken in the same
                 pass over K that loads X for the product: no extra pass.
                 Without it r_m = 1.
  HAS_BIAS       + Bias[n].
  GATED          "" | "silu" | "gelu_tanh": W holds [gate; up] (N_w = 2N) and
                 Out = act(gate) * up, gate from row n and up from row N + n
                 (each with its bias), both accumulated by the same program.
  SOFTCAP        > 0: Out = SOFTCAP * tanh(value / SOFTCAP) (Gemma 2's logits).
  HAS_RESIDUAL   Out = Residual[m, n] + value. Residual may be Out itself: each
                 element is read and then written by the same program.
The epilogue applies them in that order: scale by r, bias, gate, soft-cap,
residual; one rounding, at the store.

N and K are constexprs (weights are static: a cubin per linear shape), so the
K loop has a known trip count and drops its bounds test where BLOCK_K
divides K. Unused pointers (Bias, Residual) are still parameters, so every
variant binds the same list; they are never dereferenced.

linear_gemv (decode, M <= a few rows): program (n block, m block) streams
BLOCK_N rows of W, BLOCK_K at a time (BLOCK_K spans 16-byte vectors across the
program's threads), for all BLOCK_M rows of X at once: W is read once for up
to BLOCK_M rows. The products stay per k lane in a [BLOCK_M, BLOCK_N, BLOCK_K]
fp32 accumulator and are reduced across K once, after the loop.

linear_gemm (prefill): program (m block, n block) of tensor-core tiles
(tl.dot), fp32 inputs in full fp32 precision (no TF32), as torch's default.
"""

import triton
import triton.language as tl

from .programmatic_launch import wait_for_previous

LOG2E = tl.constexpr(1.4426950408889634)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
GATED_ACTIVATIONS = ("", "silu", "gelu_tanh")


@triton.jit
def _tanh(x):
    # 1 - 2 / (e^{2x} + 1): exact at both tails (e^{2x} -> inf gives 1, -> 0 gives -1).
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * LOG2E)) + 1.0)


@triton.jit
def _activation(x, GATED: tl.constexpr):
    if GATED == "silu":
        return x / (1.0 + tl.exp2(-x * LOG2E))
    else:  # gelu_tanh
        return 0.5 * x * (1.0 + _tanh((x + 0.044715 * x * x * x) * SQRT_2_OVER_PI))


@triton.jit
def _load_tile(ptrs, inside, k, K: tl.constexpr, BLOCK_K: tl.constexpr):
    """The tile at ptrs, zero where `inside` (rows or columns, broadcast) is false and past K (k: the tile's
    K indices, broadcast); the K test is compiled out where BLOCK_K divides K."""
    if K % BLOCK_K == 0:
        return tl.load(ptrs, mask=inside, other=0.0)
    else:
        return tl.load(ptrs, mask=inside & (k < K), other=0.0)


@triton.jit
def _row_scale(sum_squares, eps, K: tl.constexpr, NORM_PROLOGUE: tl.constexpr):
    """r per row (sum_squares: per row, the sum of its squares): the RMSNorm scale, or 1."""
    if NORM_PROLOGUE:
        return tl.rsqrt(sum_squares / K + eps)
    else:
        return sum_squares * 0.0 + 1.0


@triton.jit
def _epilogue(acc, acc_up, r, rows, cols, row_ok, col_ok, Bias, Residual, Out, stride_rm, stride_om,
              N: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, SOFTCAP: tl.constexpr,
              HAS_RESIDUAL: tl.constexpr):
    """Store epilogue(r * acc) for the [rows, cols] tile (see the module docstring)."""
    value = acc * r[:, None]
    if HAS_BIAS:
        value += tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if GATED != "":
        up = acc_up * r[:, None]
        if HAS_BIAS:
            up += tl.load(Bias + N + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        value = _activation(value, GATED) * up
    if SOFTCAP > 0.0:
        value = SOFTCAP * _tanh(value / SOFTCAP)
    rows = rows.to(tl.int64)
    tile_ok = row_ok[:, None] & col_ok[None, :]
    if HAS_RESIDUAL:
        residual = tl.load(Residual + rows[:, None] * stride_rm + cols[None, :], mask=tile_ok, other=0.0)
        value += residual.to(tl.float32)
    tl.store(Out + rows[:, None] * stride_om + cols[None, :], value.to(Out.dtype.element_ty), mask=tile_ok)


@triton.jit
def linear_gemv(
    X, W, Bias, Residual, Out,
    M, N: tl.constexpr, K: tl.constexpr, eps,
    stride_xm, stride_rm, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    NORM_PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    GATED: tl.constexpr, SOFTCAP: tl.constexpr, WAIT_FOR_PREVIOUS: tl.constexpr = False,
):
    wait_for_previous(WAIT_FOR_PREVIOUS)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    # Tiles are 3-D [rows of X, rows of W, K] from the loads on: X and W are
    # loaded in the layout the product and the accumulator keep (16-byte
    # vectors along K), so nothing moves between threads inside the loop.
    k_in_block = tl.arange(0, BLOCK_K)[None, None, :]
    x_rows_ok = row_ok[:, None, None]
    w_rows_ok = col_ok[None, :, None]
    x_ptrs = X + rows.to(tl.int64)[:, None, None] * stride_xm + k_in_block  # [BLOCK_M, 1, BLOCK_K]
    w_ptrs = W + cols.to(tl.int64)[None, :, None] * K + k_in_block  # [1, BLOCK_N, BLOCK_K]

    acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], tl.float32)
    acc_up = acc
    squares = tl.zeros([BLOCK_M, 1, BLOCK_K], tl.float32)  # per k lane, summed once after the loop
    for k_start in range(0, K, BLOCK_K):
        k = k_start + k_in_block
        x = _load_tile(x_ptrs + k_start, x_rows_ok, k, K, BLOCK_K).to(tl.float32)
        acc += x * _load_tile(w_ptrs + k_start, w_rows_ok, k, K, BLOCK_K).to(tl.float32)
        if GATED != "":
            acc_up += x * _load_tile(w_ptrs + (N * K + k_start), w_rows_ok, k, K, BLOCK_K).to(tl.float32)
        if NORM_PROLOGUE:
            squares += x * x

    r = _row_scale(tl.sum(tl.sum(squares, axis=2), axis=1), eps, K, NORM_PROLOGUE)
    _epilogue(tl.sum(acc, axis=2), tl.sum(acc_up, axis=2), r, rows, cols, row_ok, col_ok, Bias, Residual, Out,
              stride_rm, stride_om, N, HAS_BIAS, GATED, SOFTCAP, HAS_RESIDUAL)


@triton.jit
def _dot(x, w, acc):
    if x.dtype == tl.float32:
        return tl.dot(x, w, acc, input_precision="ieee")
    else:
        return tl.dot(x, w, acc)


@triton.jit
def linear_gemm(
    X, W, Bias, Residual, Out,
    M, N: tl.constexpr, K: tl.constexpr, eps,
    stride_xm, stride_rm, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    NORM_PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    GATED: tl.constexpr, SOFTCAP: tl.constexpr, WAIT_FOR_PREVIOUS: tl.constexpr = False,
):
    wait_for_previous(WAIT_FOR_PREVIOUS)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    k_in_block = tl.arange(0, BLOCK_K)
    x_ptrs = X + rows.to(tl.int64)[:, None] * stride_xm + k_in_block[None, :]  # [BLOCK_M, BLOCK_K]
    w_ptrs = W + cols.to(tl.int64)[None, :] * K + k_in_block[:, None]  # [BLOCK_K, BLOCK_N]: W^T's tile

    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_up = acc
    sum_squares = tl.zeros([BLOCK_M], tl.float32)
    for k_start in range(0, K, BLOCK_K):
        k = k_start + k_in_block
        x = _load_tile(x_ptrs + k_start, row_ok[:, None], k[None, :], K, BLOCK_K)
        acc = _dot(x, _load_tile(w_ptrs + k_start, col_ok[None, :], k[:, None], K, BLOCK_K), acc)
        if GATED != "":
            acc_up = _dot(x, _load_tile(w_ptrs + (N * K + k_start), col_ok[None, :], k[:, None], K, BLOCK_K), acc_up)
        if NORM_PROLOGUE:
            x32 = x.to(tl.float32)
            sum_squares += tl.sum(x32 * x32, axis=1)

    r = _row_scale(sum_squares, eps, K, NORM_PROLOGUE)
    _epilogue(acc, acc_up, r, rows, cols, row_ok, col_ok, Bias, Residual, Out, stride_rm, stride_om, N, HAS_BIAS,
              GATED, SOFTCAP, HAS_RESIDUAL)
