"""argmax_rows: the greedy token id of each row of Logits [L, V], as torch.argmax(logits, -1).

Ties go to the lowest index; NaN counts as the largest value (the first NaN
wins), as in torch. Values are compared as int32 keys ordered like the
floats (_order_keys), so one integer max per lane does it.

Rows are tokens (batch 1: logits [1, L, V] are L rows). V is compiled in
(a model's vocabulary is fixed) and NUM_SPLITS * SPLIT >= V with it (one
split: SPLIT covers the row). Program (row, split) scans columns
[split * SPLIT, (split + 1) * SPLIT) of its row BLOCK at a time, each lane
keeping its best (key, index). NUM_SPLITS == 1 stores the winner at
Out[row] (int64) directly. Otherwise each program stores its (key, index)
at Partials[row, 0, split] and Partials[row, 1, split] (int32 workspace
[L, 2, NUM_SPLITS]) and argmax_merge, one program per row, picks the winner.
"""

import triton
import triton.language as tl

from .programmatic_launch import wait_for_previous

INT32_MIN = tl.constexpr(-2147483648)
INT32_MAX = tl.constexpr(2147483647)


@triton.jit
def _order_keys(x):
    """float32 -> int32 with the floats' order (-inf lowest, -0 == +0), NaN above +inf."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    keys = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip all but the sign bit
    return tl.where(x != x, INT32_MAX, keys)


@triton.jit
def _first_best(keys, indices):
    """The largest key and the lowest index holding it."""
    best = tl.max(keys, axis=0)
    return best, tl.min(tl.where(keys == best, indices, INT32_MAX), axis=0)


@triton.jit
def argmax_rows(
    Logits, Out, Partials,
    stride_lr,
    V: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLIT: tl.constexpr, BLOCK: tl.constexpr,
    WAIT_FOR_PREVIOUS: tl.constexpr = False,
):
    wait_for_previous(WAIT_FOR_PREVIOUS)
    row = tl.program_id(0)
    split = tl.program_id(1)
    logits_row = Logits + row.to(tl.int64) * stride_lr
    cols = tl.arange(0, BLOCK)
    best_keys = tl.full([BLOCK], INT32_MIN, tl.int32)
    best_indices = tl.full([BLOCK], INT32_MAX, tl.int32)
    for offset in range(0, SPLIT, BLOCK):
        columns = split * SPLIT + offset + cols
        x = tl.load(logits_row + columns, mask=columns < V, other=float("-inf")).to(tl.float32)
        keys = tl.where(columns < V, _order_keys(x), INT32_MIN)
        better = keys > best_keys  # strictly: an equal key at a later index loses
        best_keys = tl.where(better, keys, best_keys)
        best_indices = tl.where(better, columns, best_indices)
    best, index = _first_best(best_keys, best_indices)
    if NUM_SPLITS == 1:
        tl.store(Out + row, index.to(tl.int64))
    else:
        partial = Partials + row.to(tl.int64) * 2 * NUM_SPLITS + split
        tl.store(partial, best)
        tl.store(partial + NUM_SPLITS, index)


@triton.jit
def argmax_merge(Partials, Out, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
                 WAIT_FOR_PREVIOUS: tl.constexpr = False):
    """Program `row`: the winner among the row's NUM_SPLITS (key, index) partials, to Out[row] (int64)."""
    wait_for_previous(WAIT_FOR_PREVIOUS)
    row = tl.program_id(0)
    splits = tl.arange(0, BLOCK_S)
    partial = Partials + row.to(tl.int64) * 2 * NUM_SPLITS + splits
    keys = tl.load(partial, mask=splits < NUM_SPLITS, other=INT32_MIN)
    indices = tl.load(partial + NUM_SPLITS, mask=splits < NUM_SPLITS, other=INT32_MAX)
    best, index = _first_best(keys, indices)
    tl.store(Out + row, index.to(tl.int64))
