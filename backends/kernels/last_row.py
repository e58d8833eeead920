"""last_row: Out[0, :] = X[L - 1, :], the last token's row of a step (ExecuTorch llama's `h[:, -1, :]`
before its final norm and LM head).

L is the step's row count (the call's token count when it is dynamic), so
the row's offset is known only at launch. Program c copies columns
[c * BLOCK, (c + 1) * BLOCK).
"""

import triton
import triton.language as tl

from .programmatic_launch import wait_for_previous


@triton.jit
def last_row(X, Out, L, stride_xr, N_COLS: tl.constexpr, BLOCK: tl.constexpr,
             WAIT_FOR_PREVIOUS: tl.constexpr = False):
    wait_for_previous(WAIT_FOR_PREVIOUS)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N_COLS
    row = (L - 1).to(tl.int64)
    tl.store(Out + cols, tl.load(X + row * stride_xr + cols, mask=ok), mask=ok)
