"""GQA attention forward in Triton: one program per (query block, batch * query head).

Query head h reads KV head h // GROUP_SIZE, so K/V are never expanded in
memory. Softmax is computed online in base 2 with fp32 accumulation.
Causal masking is bottom-right aligned: with L_q queries over L_kv keys,
query i sees keys j <= i + (L_kv - L_q), which is what chunked prefill and
decode against a KV cache need; a query that sees no key writes zeros.
"""

import triton
import triton.language as tl

from .online_softmax import attend_key_range



@triton.jit
def gqa_attention_fwd(
    Q, K, V, Out,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    L_q, L_kv,
    NUM_HEADS_Q: tl.constexpr, GROUP_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
):
    block_m = tl.program_id(0)
    batch_head = tl.program_id(1)
    batch = (batch_head // NUM_HEADS_Q).to(tl.int64)
    head = (batch_head % NUM_HEADS_Q).to(tl.int64)
    kv_head = head // GROUP_SIZE
    q_base = Q + batch * stride_qb + head * stride_qh
    k_base = K + batch * stride_kb + kv_head * stride_kh
    v_base = V + batch * stride_vb + kv_head * stride_vh
    o_base = Out + batch * stride_ob + head * stride_oh

    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    # Head dims that are not powers of two are padded to BLOCK_D and masked.
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    row_ok = rows < L_q
    q = tl.load(q_base + rows[:, None] * stride_qm + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    qk_scale = sm_scale * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    diagonal = L_kv - L_q
    if IS_CAUSAL:
        # Keys past the last row's diagonal are masked for the whole block.
        kv_end = tl.maximum(tl.minimum(L_kv, (block_m + 1) * BLOCK_M + diagonal), 0)
    else:
        kv_end = L_kv
    row_max, row_sum, acc = attend_key_range(
        q, k_base, v_base, stride_kn, stride_vn, dims, dim_ok, rows, diagonal, 0, kv_end, qk_scale,
        row_max, row_sum, acc, BLOCK_N, IS_CAUSAL)

    out = acc / tl.where(row_sum == 0.0, 1.0, row_sum)[:, None]
    tl.store(o_base + rows[:, None] * stride_om + dims[None, :], out.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])


def launch_grid(l_q: int, batch: int, num_heads_q: int, block_m: int) -> tuple[int, int, int]:
    """The grid gqa_attention_fwd expects."""
    return (triton.cdiv(l_q, block_m), batch * num_heads_q, 1)
