"""GQA attention forward in Triton: one program per (query block, batch * query head).

Query head h reads KV head h // GROUP_SIZE, so K/V are never expanded in
memory. Softmax is computed online in base 2 with fp32 accumulation.
Causal masking is bottom-right aligned: with L_q queries over L_kv keys,
query i sees keys j <= i + (L_kv - L_q), which is what chunked prefill and
decode against a KV cache need; a query that sees no key writes zeros.

Variants (constexprs, see online_softmax.py): IS_CAUSAL, WINDOW_LEFT,
MASK_KIND with Mask[b, h, i, j] addressed through its four strides (0 along
broadcast dimensions), SOFTCAP. KvLen, when given, points to a device int
scalar bounding the filled part of the keys (a KV cache): it is read on the
device, and blocks past it are never loaded. Unused pointers are None.
"""

import triton
import triton.language as tl

from .online_softmax import attend_key_range, filled_length, fully_visible_end, visible_key_range


@triton.jit
def gqa_attention_fwd(
    Q, K, V, Out, Mask, KvLen,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_mb, stride_mh, stride_mm, stride_mn,
    L_q, L_kv,
    NUM_HEADS_Q: tl.constexpr, GROUP_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, WINDOW_LEFT: tl.constexpr, MASK_KIND: tl.constexpr, SOFTCAP: tl.constexpr,
    L2_SECTION_BYTES: tl.constexpr,
):
    block_m, batch_head = program_tile(L_kv, GROUP_SIZE, HEAD_DIM, K.dtype.element_ty.primitive_bitwidth // 8,
                                       L2_SECTION_BYTES)
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
    mask_rows = rows
    if MASK_KIND != "none":
        mask_rows = Mask + batch * stride_mb + head * stride_mh + rows.to(tl.int64) * stride_mm

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    L_kv = filled_length(L_kv, KvLen)
    diagonal = L_kv - L_q
    # Only keys some row of this block may see: skips whole blocks past the
    # last row's diagonal and before the first row's window.
    kv_lo, kv_hi = visible_key_range(block_m * BLOCK_M, (block_m + 1) * BLOCK_M - 1, diagonal, L_kv,
                                     BLOCK_N, IS_CAUSAL, WINDOW_LEFT)
    # Blocks every row sees run without per-key tests; the rest (the causal
    # diagonal, the end of the keys, a window's edge) with them.
    kv_mid = fully_visible_end(block_m * BLOCK_M, diagonal, kv_lo, kv_hi, BLOCK_N, IS_CAUSAL, WINDOW_LEFT)
    row_max, row_sum, acc = attend_key_range(
        q, k_base, v_base, stride_kn, stride_vn, dims, dim_ok, rows, row_ok, diagonal, kv_lo, kv_mid, sm_scale,
        row_max, row_sum, acc, mask_rows, stride_mn, BLOCK_N, IS_CAUSAL, WINDOW_LEFT, MASK_KIND, SOFTCAP, False)
    row_max, row_sum, acc = attend_key_range(
        q, k_base, v_base, stride_kn, stride_vn, dims, dim_ok, rows, row_ok, diagonal, kv_mid, kv_hi, sm_scale,
        row_max, row_sum, acc, mask_rows, stride_mn, BLOCK_N, IS_CAUSAL, WINDOW_LEFT, MASK_KIND, SOFTCAP, True)

    out = acc / tl.where(row_sum == 0.0, 1.0, row_sum)[:, None]
    tl.store(o_base + rows[:, None] * stride_om + dims[None, :], out.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])


@triton.jit
def program_tile(L_kv, GROUP_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, ELEMENT_BYTES: tl.constexpr,
                 L2_SECTION_BYTES: tl.constexpr):
    """(query block, batch * query head) this program computes, in the launch grid's order.

    Programs start in linear order (axis 0 fastest). Heads are cut into
    sections whose K and V fit L2_SECTION_BYTES (whole GQA groups, at least
    one); within a section the programs walk its heads fastest and the query
    blocks from the last down. Under a causal mask the last blocks attend the
    most keys: the launch then starts every head's longest blocks first and
    ends on short ones, while the blocks in flight read a section's K/V from
    L2. Each (block, head) is taken by exactly one program.
    """
    num_blocks = tl.num_programs(0)
    num_heads = tl.num_programs(1)
    linear = tl.program_id(1) * num_blocks + tl.program_id(0)
    kv_head_bytes = tl.maximum(L_kv.to(tl.int64) * (2 * HEAD_DIM * ELEMENT_BYTES), 1)
    section = tl.minimum(tl.maximum(L2_SECTION_BYTES // kv_head_bytes, 1) * GROUP_SIZE, num_heads).to(tl.int32)
    first_head = linear // (section * num_blocks) * section
    heads_here = tl.minimum(section, num_heads - first_head)
    in_section = linear - first_head * num_blocks
    return num_blocks - 1 - in_section // heads_here, first_head + in_section % heads_here


def launch_grid(l_q: int, batch: int, num_heads_q: int, block_m: int) -> tuple[int, int, int]:
    """The grid gqa_attention_fwd expects."""
    return (triton.cdiv(l_q, block_m), batch * num_heads_q, 1)
