"""rope_cache_write: RoPE on the fused q/k/v projection's output, fused with the KV-cache write.

QKV is [L, (HEADS_Q + 2 * HEADS_KV) * HEAD_DIM] (row stride stride_qkv): q heads,
then k heads, then v heads, each HEAD_DIM wide. Row l is the token at position
p = InputPos[0] + l. Program (l, head), head < HEADS_Q: q head `head`;
otherwise k/v head `head - HEADS_Q`. Each does what export/llm/decoder.py's
Attention does to its row and head:

- QK_NORM (Qwen3, Gemma 3): RMSNorm over HEAD_DIM, weights QNormW / KNormW
  scaled by (NORM_OFFSET + w), rounded to the activations' dtype as the
  model's q_norm / k_norm return it;
- rotate-half RoPE (Hugging Face layout): x * Cos[p] + rotate_half(x) * Sin[p],
  Cos/Sin contiguous [rows >= S, HEAD_DIM], computed in float32;
  INTERLEAVED (ExecuTorch llama's apply_rotary_emb): each pair (x[2j], x[2j+1])
  turns by angle j: (x0 * c - x1 * s, x0 * s + x1 * c) with c, s = Cos[p, j],
  Sin[p, j] of contiguous [rows >= S, HEAD_DIM / 2] tables;
- q: stored to Q_out[head, l, :] (strides stride_qoh, stride_qol);
- k: stored to K_cache[h, p, :]; v (not rotated) to V_cache[h, p, :] (caches
  [H_kv, S, HEAD_DIM], batch 1, strides stride_ch, stride_cs shared by both).

A row whose position is outside [0, S) is skipped entirely (its Q_out row is
left as it was; eager index_copy_ would raise). Program (0, 0) stores
kv_len = clamp(InputPos[0] + L, 0, S) (int32) at KvLen: the attention kernel
launched next on the same stream attends keys [0, kv_len).
"""

import triton
import triton.language as tl

from .programmatic_launch import wait_for_previous


@triton.jit
def _rms_normed(x, w, rstd, NORM_OFFSET: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """x * rstd * (NORM_OFFSET + w) rounded to OUT_DTYPE, back in float32."""
    return (x * rstd * (NORM_OFFSET + w)).to(OUT_DTYPE).to(tl.float32)


@triton.jit
def rope_cache_write(
    QKV, Cos, Sin, InputPos, QNormW, KNormW, Q_out, K_cache, V_cache, KvLen,
    L, S, eps,
    stride_qkv, stride_qoh, stride_qol, stride_ch, stride_cs,
    HEADS_Q: tl.constexpr, HEADS_KV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    QK_NORM: tl.constexpr, NORM_OFFSET: tl.constexpr, INTERLEAVED: tl.constexpr = False,
    WAIT_FOR_PREVIOUS: tl.constexpr = False,
):
    wait_for_previous(WAIT_FOR_PREVIOUS)
    row = tl.program_id(0)
    head = tl.program_id(1)
    start = tl.load(InputPos).to(tl.int64)
    if (row == 0) & (head == 0):
        tl.store(KvLen, tl.minimum(tl.maximum(start + L, 0), S).to(tl.int32))
    pos = start + row
    if (pos >= 0) & (pos < S):
        d = tl.arange(0, BLOCK_D)
        ok = d < HEAD_DIM
        if INTERLEAVED:
            # Pairs (x[2j], x[2j+1]): the even one takes -x[d + 1] * sin, the odd one +x[d - 1] * sin.
            even = d % 2 == 0
            partner = tl.where(even, d + 1, d - 1)
            sign = tl.where(even, -1.0, 1.0)
            column = d // 2
            table_width = HEAD_DIM // 2
        else:
            # rotate_half(x)[d] = -x[d + D/2] for the first half, x[d - D/2] for the second.
            first_half = d < HEAD_DIM // 2
            partner = tl.where(first_half, d + HEAD_DIM // 2, d - HEAD_DIM // 2)
            sign = tl.where(first_half, -1.0, 1.0)
            column = d
            table_width = HEAD_DIM
        src = QKV + row.to(tl.int64) * stride_qkv + head * HEAD_DIM
        x = tl.load(src + d, mask=ok, other=0.0).to(tl.float32)
        x_partner = tl.load(src + partner, mask=ok, other=0.0).to(tl.float32)
        if QK_NORM:
            if head < HEADS_Q:
                w = tl.load(QNormW + d, mask=ok, other=0.0).to(tl.float32)
                w_partner = tl.load(QNormW + partner, mask=ok, other=0.0).to(tl.float32)
            else:
                w = tl.load(KNormW + d, mask=ok, other=0.0).to(tl.float32)
                w_partner = tl.load(KNormW + partner, mask=ok, other=0.0).to(tl.float32)
            rstd = tl.rsqrt(tl.sum(x * x, axis=0) / HEAD_DIM + eps)
            x = _rms_normed(x, w, rstd, NORM_OFFSET, QKV.dtype.element_ty)
            x_partner = _rms_normed(x_partner, w_partner, rstd, NORM_OFFSET, QKV.dtype.element_ty)
        cos = tl.load(Cos + pos * table_width + column, mask=ok, other=0.0).to(tl.float32)
        sin = tl.load(Sin + pos * table_width + column, mask=ok, other=0.0).to(tl.float32)
        rotated = x * cos + sign * x_partner * sin
        if head < HEADS_Q:
            dst = Q_out + head.to(tl.int64) * stride_qoh + row.to(tl.int64) * stride_qol
            tl.store(dst + d, rotated.to(Q_out.dtype.element_ty), mask=ok)
        else:
            cache_row = (head - HEADS_Q).to(tl.int64) * stride_ch + pos * stride_cs
            tl.store(K_cache + cache_row + d, rotated.to(K_cache.dtype.element_ty), mask=ok)
            v = tl.load(src + HEADS_KV * HEAD_DIM + d, mask=ok)  # v head h sits HEADS_KV heads after k head h
            tl.store(V_cache + cache_row + d, v.to(V_cache.dtype.element_ty), mask=ok)
