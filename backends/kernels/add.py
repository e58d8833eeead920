"""add: Out[r, :] = A[r, :] + B[r, :] over rows of N_COLS elements, for a residual add no linear's
epilogue took.

Added in float32 and rounded to Out's dtype once (what torch does for two
half-precision tensors). Out may alias A or B. Program (r, c) handles
columns [c * BLOCK, (c + 1) * BLOCK) of row r (rows = tokens; a contiguous
tensor of any shape is one row of numel columns, or [rows, last dim]).
"""

import triton
import triton.language as tl

from .programmatic_launch import wait_for_previous


@triton.jit
def add(A, B, Out, stride_ar, stride_br, stride_or, N_COLS: tl.constexpr, BLOCK: tl.constexpr,
        WAIT_FOR_PREVIOUS: tl.constexpr = False):
    wait_for_previous(WAIT_FOR_PREVIOUS)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N_COLS
    a = tl.load(A + row * stride_ar + cols, mask=ok).to(tl.float32)
    b = tl.load(B + row * stride_br + cols, mask=ok).to(tl.float32)
    tl.store(Out + row * stride_or + cols, (a + b).to(Out.dtype.element_ty), mask=ok)
