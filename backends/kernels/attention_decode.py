"""Split-KV GQA decode in Triton, for few query rows (L_q of 1 to 16) over a long KV.

Two kernels:

gqa_decode_split: one program per (KV split, batch * KV head, M tile).
  Pack GQA: the GROUP_SIZE query heads that share a KV head and the L_q query
  rows are folded into the M dimension of one tile, so each K/V block of a
  split is loaded once for all of them. Packed row r (0 <= r < GROUP_SIZE *
  L_q) is query row r // GROUP_SIZE of query head kv_head * GROUP_SIZE +
  r % GROUP_SIZE: the heads of one query row are adjacent, which keeps a
  decode step (L_q = 1) a plain run of heads. BLOCK_M normally covers all
  GROUP_SIZE * L_q rows (one M tile); a third grid dimension of M tiles only
  exists for shapes whose packed tile would not fit (see backends/heuristics.py).

  The keys the tile's rows may see, [lo, hi) (causal, window and kv_len
  bounded, see online_softmax.py), are cut into num_programs(0) splits of
  equal length rounded up to BLOCK_N; split s covers [lo + s * len, lo + (s+1)
  * len) within hi. The host sizes the grid for the whole cache (the
  heuristics' split count for L_kv) and the kernel divides whatever is filled,
  so with a kv_len the cost follows the context while the grid and workspace
  stay fixed. A split with no key records that it saw none.
  Masks, window and soft-cap are the forward kernel's (attention_fwd.py);
  Mask rows are addressed per packed row.

  With SINGLE_SPLIT the one split covers every key and the program writes the
  final, normalised output straight into Out, so a short context is one launch.
  Otherwise each (split, row) writes to a caller-owned fp32 workspace:
    Partial[b, h, i, s, :HEAD_DIM]  the split's output, already normalised by
                                    its own softmax sum (0 when it saw no key),
    Lse[b, h, i, s]                 the split's log-sum-exp of the scaled
                                    scores, in base 2 (-inf when it saw no key),
  both contiguous, with the split count as the number of programs along grid
  axis 0. A workspace sized for larger B*H_q, L_q or split counts can be reused
  as is: only its leading elements are touched.

  With FUSED_COMBINE the merge happens in the same launch (no combine kernel,
  so a short decode costs one launch): after writing its partials, each
  program increments Arrivals[batch * KV heads + kv_head, m_tile] (int32, in
  the workspace); the program that arrives last merges every split of its
  tile's rows, as gqa_decode_combine would, writes Out and sets the counter
  back to 0. The counters must be 0 before the first launch (the runtimes
  zero the workspace once at init) and are 0 again after each launch, so
  launches in stream order (and CUDA graph replays) reuse them. Ordering: a
  CTA barrier then an acq_rel gpu-scope atomic publish the CTA's partial
  stores (the atomic releases what the barrier ordered before it); the last
  program's atomic acquires them, and its merge loads bypass L1 (.cg).

gqa_decode_combine: one program per (query row, batch * query head). It merges
  the splits of that row, each weighted by 2^(Lse_s - max Lse) and divided by
  their sum, and writes Out in Out's dtype; a row no split saw a key for gets 0.

Programmatic dependent launch (sm_90 and later; both constexprs False for
older archs, whose PTX has no griddepcontrol): with LAUNCH_DEPENDENTS the
split kernel lets the next kernel's programs be scheduled as soon as all of
its own have started, and with WAIT_FOR_SPLITS the combine waits, before its
first load, for the split kernel to finish and its stores to be visible. A
combine launched as a programmatic dependent thus hides its launch latency
behind the split kernel's tail; launched normally, the wait returns at once.
"""

import triton
import triton.language as tl

from .online_softmax import attend_key_range, filled_length, visible_key_range


@triton.jit
def gqa_decode_split(
    Q, K, V, Out, Partial, Lse, Arrivals, Mask, KvLen,
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
    SINGLE_SPLIT: tl.constexpr, FUSED_COMBINE: tl.constexpr = False, MERGE_BLOCK_S: tl.constexpr = 1,
    LAUNCH_DEPENDENTS: tl.constexpr = False,
):
    if LAUNCH_DEPENDENTS:
        tl.extra.cuda.gdc_launch_dependents()
    split = tl.program_id(0)
    batch_kv_head = tl.program_id(1)
    m_tile = tl.program_id(2)
    num_splits = tl.num_programs(0)
    num_heads_kv: tl.constexpr = NUM_HEADS_Q // GROUP_SIZE
    batch = (batch_kv_head // num_heads_kv).to(tl.int64)
    kv_head = (batch_kv_head % num_heads_kv).to(tl.int64)

    # Packed rows -> (query row, query head); see the module docstring.
    packed = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    q_row = packed // GROUP_SIZE
    head = kv_head * GROUP_SIZE + (packed % GROUP_SIZE).to(tl.int64)
    row_ok = q_row < L_q
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    q_mask = row_ok[:, None] & dim_ok[None, :]

    q_rows = Q + batch * stride_qb + head * stride_qh + q_row * stride_qm
    q = tl.load(q_rows[:, None] + dims[None, :], mask=q_mask, other=0.0)
    k_base = K + batch * stride_kb + kv_head * stride_kh
    v_base = V + batch * stride_vb + kv_head * stride_vh
    mask_rows = q_row
    if MASK_KIND != "none":
        mask_rows = Mask + batch * stride_mb + head * stride_mh + q_row.to(tl.int64) * stride_mm

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    L_kv = filled_length(L_kv, KvLen)
    diagonal = L_kv - L_q
    first_row = (m_tile * BLOCK_M) // GROUP_SIZE
    last_row = tl.minimum(L_q - 1, ((m_tile + 1) * BLOCK_M - 1) // GROUP_SIZE)
    kv_lo, kv_hi = visible_key_range(first_row, last_row, diagonal, L_kv, BLOCK_N, IS_CAUSAL, WINDOW_LEFT)
    if not SINGLE_SPLIT:
        split_len = tl.cdiv(tl.maximum(kv_hi - kv_lo, 0), num_splits * BLOCK_N) * BLOCK_N
        kv_lo = kv_lo + split * split_len
        kv_hi = tl.minimum(kv_lo + split_len, kv_hi)
    row_max, row_sum, acc = attend_key_range(
        q, k_base, v_base, stride_kn, stride_vn, dims, dim_ok, q_row, row_ok, diagonal, kv_lo, kv_hi, sm_scale,
        row_max, row_sum, acc, mask_rows, stride_mn, BLOCK_N, IS_CAUSAL, WINDOW_LEFT, MASK_KIND, SOFTCAP, True)

    saw_key = row_sum > 0.0
    out = acc / tl.where(saw_key, row_sum, 1.0)[:, None]
    if SINGLE_SPLIT:
        o_rows = Out + batch * stride_ob + head * stride_oh + q_row * stride_om
        tl.store(o_rows[:, None] + dims[None, :], out.to(Out.dtype.element_ty), mask=q_mask)
    else:
        # Workspace row of (batch, head, q_row), then this split's slot in it.
        slot = ((batch * NUM_HEADS_Q + head) * L_q + q_row) * num_splits + split
        lse = tl.where(saw_key, row_max + tl.log2(tl.where(saw_key, row_sum, 1.0)), float("-inf"))
        tl.store(Lse + slot, lse, mask=row_ok)
        tl.store(Partial + slot[:, None] * HEAD_DIM + dims[None, :], out, mask=q_mask)
        if FUSED_COMBINE:
            tl.debug_barrier()  # every thread's partial stores, before the release below
            arrivals = Arrivals + batch_kv_head * tl.num_programs(2) + m_tile
            arrived = tl.atomic_add(arrivals, 1, sem="acq_rel", scope="gpu")
            if arrived == num_splits - 1:
                first_slot = ((batch * NUM_HEADS_Q + head) * L_q + q_row) * num_splits
                merged = merge_splits(Partial, Lse, first_slot, num_splits, row_ok, dims, dim_ok,
                                      BLOCK_M, BLOCK_D, HEAD_DIM, MERGE_BLOCK_S)
                o_rows = Out + batch * stride_ob + head * stride_oh + q_row * stride_om
                tl.store(o_rows[:, None] + dims[None, :], merged.to(Out.dtype.element_ty), mask=q_mask)
                # Every split has arrived: nothing else touches the counter in this launch.
                tl.atomic_xchg(arrivals, 0, sem="relaxed", scope="gpu")


@triton.jit
def merge_splits(Partial, Lse, first_slot, num_splits, row_ok, dims, dim_ok,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                 MERGE_BLOCK_S: tl.constexpr):
    """The normalised merge of num_splits partials of BLOCK_M rows (first_slot: each row's split 0).

    Two passes in the [BLOCK_M, *] layouts of the split's own tile (no 3-D
    reductions, which cost layout shuffles through shared memory): the
    log-sum-exps give each row's maximum and weight sum; then the partials
    are summed with their weights, MERGE_BLOCK_S splits per step unrolled so
    their loads are in flight together rather than one L2 round trip each.
    Loads are .cg: other SMs wrote these lines, this SM's L1 may hold old
    copies.
    """
    in_block = tl.arange(0, MERGE_BLOCK_S)
    best = tl.full([BLOCK_M], float("-inf"), tl.float32)
    weight_sum = tl.zeros([BLOCK_M], tl.float32)
    for s_start in range(0, num_splits, MERGE_BLOCK_S):
        splits = s_start + in_block
        lse = tl.load(Lse + first_slot[:, None] + splits[None, :],
                      mask=row_ok[:, None] & (splits < num_splits)[None, :], other=float("-inf"),
                      cache_modifier=".cg")
        new_best = tl.maximum(best, tl.max(lse, 1))
        shift = tl.where(new_best == float("-inf"), 0.0, new_best)
        weight_sum = weight_sum * tl.exp2(best - shift) + tl.sum(tl.exp2(lse - shift[:, None]), 1)
        best = new_best
    shift = tl.where(best == float("-inf"), 0.0, best)
    scale = 1.0 / tl.where(weight_sum > 0.0, weight_sum, 1.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s_start in range(0, num_splits, MERGE_BLOCK_S):
        for u in tl.static_range(MERGE_BLOCK_S):
            slot = first_slot + s_start + u
            ok = row_ok & (slot < first_slot + num_splits)
            lse = tl.load(Lse + slot, mask=ok, other=float("-inf"), cache_modifier=".cg")
            part = tl.load(Partial + slot[:, None] * HEAD_DIM + dims[None, :], mask=ok[:, None] & dim_ok[None, :],
                           other=0.0, cache_modifier=".cg")
            acc += (tl.exp2(lse - shift) * scale)[:, None] * part  # weight 0 for splits that saw no key
    return acc


@triton.jit
def gqa_decode_combine(
    Partial, Lse, Out,
    stride_ob, stride_oh, stride_om,
    L_q, NUM_SPLITS,
    NUM_HEADS_Q: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr, WAIT_FOR_SPLITS: tl.constexpr = False,
):
    if WAIT_FOR_SPLITS:
        tl.extra.cuda.gdc_wait()
    q_row = tl.program_id(0)
    batch_head = tl.program_id(1)
    batch = (batch_head // NUM_HEADS_Q).to(tl.int64)
    head = (batch_head % NUM_HEADS_Q).to(tl.int64)
    first_slot = (batch_head.to(tl.int64) * L_q + q_row) * NUM_SPLITS

    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    splits_in_block = tl.arange(0, BLOCK_S)
    best = tl.full([1], float("-inf"), tl.float32)
    weight_sum = tl.zeros([1], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    # Online merge over blocks of BLOCK_S splits (one block for the usual counts).
    for s_start in range(0, NUM_SPLITS, BLOCK_S):
        splits = s_start + splits_in_block
        split_ok = splits < NUM_SPLITS
        lse = tl.load(Lse + first_slot + splits, mask=split_ok, other=float("-inf"))
        part = tl.load(Partial + (first_slot + splits)[:, None] * HEAD_DIM + dims[None, :],
                       mask=split_ok[:, None] & dim_ok[None, :], other=0.0)
        new_best = tl.maximum(best, tl.max(lse, 0))
        shift = tl.where(new_best == float("-inf"), 0.0, new_best)
        weights = tl.exp2(lse - shift)  # [BLOCK_S]; 0 for splits that saw no key
        rescale = tl.exp2(best - shift)
        weight_sum = weight_sum * rescale + tl.sum(weights, 0)
        acc = acc * rescale + tl.sum(weights[:, None] * part, 0)
        best = new_best

    out = acc / tl.where(weight_sum > 0.0, weight_sum, 1.0)
    o_row = Out + batch * stride_ob + head * stride_oh + q_row * stride_om
    tl.store(o_row + dims, out.to(Out.dtype.element_ty), mask=dim_ok)


def decode_workspace_shape(batch: int, num_heads_q: int, l_q: int, head_dim: int,
                           num_splits: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the fp32 (Partial, Lse) workspaces gqa_decode_split writes for num_splits > 1.

    Allocate once for the largest problem and split count the program will
    run; any smaller problem uses the leading elements.
    """
    return (batch, num_heads_q, l_q, num_splits, head_dim), (batch, num_heads_q, l_q, num_splits)


def decode_arrivals_count(batch: int, num_heads_kv: int, m_tiles: int = 1) -> int:
    """int32 arrival counters gqa_decode_split with FUSED_COMBINE needs (zeroed before first use)."""
    return batch * num_heads_kv * m_tiles


def decode_split_grid(num_splits: int, batch: int, num_heads_kv: int, group_size: int, l_q: int,
                      block_m: int) -> tuple[int, int, int]:
    """The grid gqa_decode_split expects: (splits, batch * KV heads, M tiles of the packed rows)."""
    return (num_splits, batch * num_heads_kv, triton.cdiv(group_size * l_q, block_m))


def decode_combine_grid(batch: int, num_heads_q: int, l_q: int) -> tuple[int, int, int]:
    """The grid gqa_decode_combine expects: (query rows, batch * query heads)."""
    return (l_q, batch * num_heads_q, 1)
