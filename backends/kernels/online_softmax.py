"""The inner loop both attention kernels share: attend a tile of query rows to a key range.

Which keys a query row sees (bottom-right aligned, with diagonal = L_kv - L_q,
L_kv being the filled length when a kv_len bounds it):
  IS_CAUSAL        key j <= row + diagonal
  WINDOW_LEFT >= 0 key j >= row + diagonal - WINDOW_LEFT (keys left of the
                   diagonal a row may see; -1: unbounded). With IS_CAUSAL this
                   is FlashAttention's window (WINDOW_LEFT, 0); Mistral's
                   sliding_window W is WINDOW_LEFT = W - 1.
  MASK_KIND        "none"; "bool": a mask element False hides the key;
                   "additive": the mask element is added to the scaled score.
A row that sees no key ends with row_sum 0; callers write zeros for it.

SOFTCAP > 0 caps the scaled logits as SOFTCAP * tanh(score / SOFTCAP) (Gemma 2)
before masks apply.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * LOG2E): scores are kept in base 2


@triton.jit
def visible_key_range(first_row, last_row, diagonal, L_kv,
                      BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, WINDOW_LEFT: tl.constexpr):
    """[lo, hi) of keys any of the query rows first_row..last_row may see; lo is a multiple of BLOCK_N."""
    lo = 0
    if WINDOW_LEFT >= 0:
        lo = tl.maximum(first_row + diagonal - WINDOW_LEFT, 0) // BLOCK_N * BLOCK_N
    hi = L_kv
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(L_kv, last_row + diagonal + 1), 0)
    return lo, hi


@triton.jit
def fully_visible_end(first_row, diagonal, kv_lo, kv_hi, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr,
                      WINDOW_LEFT: tl.constexpr):
    """End of the keys [kv_lo, end) every row from first_row on sees, in whole BLOCK_N blocks.

    They need no bounds, causal or window test: attend_key_range runs them
    with ON_EDGE=False and only [end, kv_hi) with the tests. kv_lo must be a
    multiple of BLOCK_N; with a window every block is tested (end = kv_lo).
    """
    if WINDOW_LEFT >= 0:
        end = kv_lo
    else:
        end = kv_hi
        if IS_CAUSAL:
            end = tl.minimum(end, first_row + diagonal + 1)
        end = tl.maximum(end // BLOCK_N * BLOCK_N, kv_lo)
    return end


@triton.jit
def attend_key_range(q, k_base, v_base, stride_kn, stride_vn, dims, dim_ok, query_rows, row_ok, diagonal,
                     kv_lo, kv_hi, sm_scale, row_max, row_sum, acc, mask_rows, stride_mn,
                     BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                     MASK_KIND: tl.constexpr, SOFTCAP: tl.constexpr, ON_EDGE: tl.constexpr):
    """Fold keys [kv_lo, kv_hi) into the running (row_max, row_sum, acc) of an online softmax.

    mask_rows: per query row, the address of its mask row (unused when MASK_KIND is "none").
    ON_EDGE=False promises whole BLOCK_N blocks that every row sees (see
    fully_visible_end): loads go unpredicated along keys and the bounds,
    causal and window tests are skipped.
    """
    cols_in_block = tl.arange(0, BLOCK_N)
    for kv_start in range(kv_lo, kv_hi, BLOCK_N):
        cols = kv_start + cols_in_block
        col_ok = cols < kv_hi
        kv_mask = dim_ok[None, :]  # a padded head dim
        if ON_EDGE:
            kv_mask = col_ok[:, None] & kv_mask
        k = tl.load(k_base + cols[:, None] * stride_kn + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + dims[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k))
        if SOFTCAP > 0.0:
            # tanh(x) = 1 - 2 / (e^{2x} + 1): exact at both tails (e^{2x} -> inf gives 1, -> 0 gives -1).
            capped = 1.0 - 2.0 / (tl.exp2(qk * (sm_scale * 2.0 * LOG2E / SOFTCAP)) + 1.0)
            scores = capped * (SOFTCAP * LOG2E)
        else:
            scores = qk * (sm_scale * LOG2E)
        if MASK_KIND != "none":
            mask = tl.load(mask_rows[:, None] + cols[None, :] * stride_mn,
                           mask=row_ok[:, None] & col_ok[None, :], other=0)
            if MASK_KIND == "additive":
                scores = scores + mask.to(tl.float32) * LOG2E
        if ON_EDGE:
            visible = col_ok[None, :]
            if IS_CAUSAL:
                visible = visible & (cols[None, :] <= query_rows[:, None] + diagonal)
            if WINDOW_LEFT >= 0:
                visible = visible & (cols[None, :] >= query_rows[:, None] + diagonal - WINDOW_LEFT)
            if MASK_KIND == "bool":
                visible = visible & (mask != 0)
            scores = tl.where(visible, scores, float("-inf"))
        elif MASK_KIND == "bool":
            scores = tl.where(mask != 0, scores, float("-inf"))

        new_max = tl.maximum(row_max, tl.max(scores, 1))
        # A row that has seen no key yet keeps max -inf; shift by 0 instead
        # so exp2 gives 0 rather than NaN from (-inf) - (-inf).
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        p = tl.exp2(scores - shift[:, None])
        rescale = tl.exp2(row_max - shift)
        row_sum = row_sum * rescale + tl.sum(p, 1)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
        row_max = new_max
    return row_max, row_sum, acc


@triton.jit
def filled_length(L_kv, KvLen):
    """L_kv, or the filled length a device kv_len scalar gives (never more than L_kv)."""
    if KvLen is not None:
        L_kv = tl.maximum(tl.minimum(L_kv, tl.load(KvLen).to(tl.int32)), 0)
    return L_kv
