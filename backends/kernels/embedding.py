"""embedding: Out[l, :] = Table[Tokens[l], :] * SCALE, and a per-call flag of out-of-range token ids.

Program l copies row Tokens[l] of Table [V, D] (contiguous) to row l of Out
(row stride stride_o), times SCALE in float32, rounded to Out's dtype (Gemma
multiplies by sqrt(hidden) rounded to the model's dtype: the caller passes
that rounded value; SCALE = 1.0 copies). Batch 1: Tokens holds the L ids.

A token id outside [0, V) reads nothing: its Out row is zeroed. Program 0
stores Error = 1 if any of the L ids is out of range, else 0, every call (no
reset needed); the runtime checks it after the launch and fails the call.
"""

import triton
import triton.language as tl

from .programmatic_launch import wait_for_previous


@triton.jit
def embedding(
    Tokens, Table, Out, Error,
    L, V, stride_o,
    D: tl.constexpr, BLOCK_D: tl.constexpr, SCALE: tl.constexpr, BLOCK_L: tl.constexpr,
    WAIT_FOR_PREVIOUS: tl.constexpr = False,
):
    wait_for_previous(WAIT_FOR_PREVIOUS)
    row = tl.program_id(0)
    token = tl.load(Tokens + row).to(tl.int64)
    # Columns read from the table: all D for an id in range, none otherwise.
    readable = tl.where((token >= 0) & (token < V), D, 0)
    cols = tl.arange(0, BLOCK_D)
    for start in tl.static_range(0, D, BLOCK_D):
        ok = start + cols < D
        values = tl.load(Table + token * D + start + cols, mask=start + cols < readable, other=0.0).to(tl.float32)
        tl.store(Out + row.to(tl.int64) * stride_o + start + cols, (values * SCALE).to(Out.dtype.element_ty),
                 mask=ok)
    if row == 0:
        bad = tl.zeros([BLOCK_L], dtype=tl.int32)
        rows = tl.arange(0, BLOCK_L)
        first = 0
        while first < L:
            ids = tl.load(Tokens + first + rows, mask=first + rows < L, other=0).to(tl.int64)
            bad = tl.maximum(bad, ((ids < 0) | (ids >= V)).to(tl.int32))
            first += BLOCK_L
        tl.store(Error, tl.max(bad, axis=0))
