"""The inner loop both attention kernels share: attend a tile of query rows to a key range."""

import triton
import triton.language as tl


@triton.jit
def attend_key_range(q, k_base, v_base, stride_kn, stride_vn, dims, dim_ok, query_rows, diagonal,
                     kv_lo, kv_hi, qk_scale, row_max, row_sum, acc,
                     BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """Fold keys [kv_lo, kv_hi) into the running (row_max, row_sum, acc) of an online softmax.

    Scores are in base 2 (qk_scale carries log2(e)). With IS_CAUSAL, query row
    i sees keys j <= i + diagonal (bottom-right alignment: diagonal = L_kv - L_q).
    """
    cols_in_block = tl.arange(0, BLOCK_N)
    for kv_start in range(kv_lo, kv_hi, BLOCK_N):
        cols = kv_start + cols_in_block
        col_ok = cols < kv_hi
        kv_mask = col_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_base + cols[:, None] * stride_kn + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + dims[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k)) * qk_scale
        visible = col_ok[None, :]
        if IS_CAUSAL:
            visible = visible & (cols[None, :] <= query_rows[:, None] + diagonal)
        scores = tl.where(visible, scores, float("-inf"))

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
