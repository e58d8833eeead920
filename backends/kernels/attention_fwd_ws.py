"""GQA attention forward for Hopper (sm_90a), warp-specialized, in Gluon.

The same problem and parameters as attention_fwd.gqa_attention_fwd, for the
variant that dominates prefill: no mask, window, soft-cap or kv_len; 16-bit
inputs; head dims up to 128 (padded to 64 or 128, the padding loaded as zeros
by TMA and masked on Q and the output); a positive scale. heuristics (its docstring and
warp_specialized_forward_applies) decides when the AOT stage compiles it.

One CTA takes 128 query rows of one head, in three partitions:
  * a 1-warp producer streams K and V blocks by TMA into a NUM_STAGES ring
    (device-side tensor descriptors over this head's rows: rows past L_kv
    arrive as zeros);
  * two 4-warp consumers own 64 rows each, with Q in registers. Iteration j
    issues S_j = Q K_j^T and O += P_{j-1} V_{j-1} back to back and waits only
    for S_j, so block j's softmax runs while the second wgmma is in flight;
    then a consumer hands slot j-1 back to the producer.
Why: in Triton's own pipelining the score wgmma always completes before the
softmax starts (an async wgmma result may only feed another accumulator), and
every warp spends issue slots on cp.async addresses. Here the consumers issue
only wgmma, softmax and barrier waits (bench/results/h100_prefill_ws.md).

Worker partitions take no constexpr arguments (they arrive as tensors), so
the tile sizes are read back from the ring's shape, the head dim travels as
a runtime value (for the descriptors and masks) and causality is folded into
mask_diagonal: a key j is visible from row i when j <= i + mask_diagonal
(L_kv - L_q when causal, L_kv otherwise).
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

# Scalar @triton.jit helpers: a Gluon kernel can call them (tensor ones need Gluon layouts).
from .attention_fwd import program_tile
from .online_softmax import fully_visible_end, visible_key_range

LOG2E: gl.constexpr = gl.constexpr(1.4426950408889634)
CONSUMER_ROWS: gl.constexpr = gl.constexpr(64)  # one warpgroup's wgmma M
# Within the kernel's register cap (heuristics.WS_MAX_REGISTERS per thread of
# three warpgroups), setmaxnreg moves the producer's spare registers to the consumers.
CONSUMER_REGISTERS: gl.constexpr = gl.constexpr(240)
PRODUCER_REGISTERS: gl.constexpr = gl.constexpr(24)


@gluon.constexpr_function
def _mma_layout(n):
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])


@gluon.constexpr_function
def _operand_a_layout(n):
    """A wgmma A operand in registers whose product has n columns."""
    return gl.DotOperandLayout(operand_index=0, parent=_mma_layout(n), k_width=2)


@gluon.constexpr_function
def _rows_layout(block_d):
    """16-byte vectors along the (padded) head dim, for the output store."""
    threads_d = min(block_d // 8, 32)
    return gl.BlockedLayout([1, 8], [32 // threads_d, threads_d], [4, 1], [1, 0])


@gluon.constexpr_function
def _tile_layout():
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)


@gluon.jit
def _softmax_block(s, row_max, row_sum, kv_start, rows, mask_diagonal, kv_hi, qk_scale, ON_EDGE: gl.constexpr):
    """Scores of one key block -> (p, rescale of the running sums, row_max, row_sum), base 2."""
    s_layout: gl.constexpr = s.type.layout
    if ON_EDGE:
        cols = kv_start + gl.arange(0, s.type.shape[1], layout=gl.SliceLayout(0, s_layout))
        visible = (gl.expand_dims(cols < kv_hi, 0)
                   & (gl.expand_dims(cols, 0) <= gl.expand_dims(rows + mask_diagonal, 1)))
        s = gl.where(visible, s, float("-inf"))
    new_max = gl.maximum(row_max, gl.max(s, 1) * qk_scale)
    # A row with no visible key so far keeps max -inf: shift by 0 so exp2 gives 0, not NaN.
    shift = gl.where(new_max == float("-inf"), 0.0, new_max)
    p = gl.exp2(s * qk_scale - gl.expand_dims(shift, 1))
    rescale = gl.exp2(row_max - shift)
    row_sum = row_sum * rescale + gl.sum(p, 1)
    return p, rescale, new_max, row_sum


@gluon.jit
def _attend_block(s, row_max, row_sum, kv_start, rows, mask_diagonal, kv_hi, full_end, qk_scale):
    """Per-key tests only where some key of the block may be hidden."""
    if kv_start + s.type.shape[1] > full_end:
        return _softmax_block(s, row_max, row_sum, kv_start, rows, mask_diagonal, kv_hi, qk_scale, True)
    return _softmax_block(s, row_max, row_sum, kv_start, rows, mask_diagonal, kv_hi, qk_scale, False)


@gluon.jit
def _consume(part: gl.constexpr, Q, Out, sm_scale, q_off, o_off, stride_qm, stride_om, L_q, L_kv, mask_diagonal,
             head_dim, first_row, num_blocks, k_ring, v_ring, k_ready, v_ready, kv_empty):
    """Consumer `part`: query rows first_row + 64 * part + [0, 64) against every key block of the CTA."""
    NUM_STAGES: gl.constexpr = k_ring.type.shape[0]
    BLOCK_N: gl.constexpr = k_ring.type.shape[1]
    BLOCK_D: gl.constexpr = k_ring.type.shape[2]
    dtype: gl.constexpr = Q.dtype.element_ty
    s_layout: gl.constexpr = _mma_layout(BLOCK_N)
    o_layout: gl.constexpr = _mma_layout(BLOCK_D)
    q_layout: gl.constexpr = _operand_a_layout(BLOCK_N)
    p_layout: gl.constexpr = _operand_a_layout(BLOCK_D)

    my_first = first_row + CONSUMER_ROWS * part
    q_rows = my_first + gl.arange(0, CONSUMER_ROWS, layout=gl.SliceLayout(1, q_layout))
    q_dims = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, q_layout))
    q = gl.load(Q + q_off + gl.expand_dims(q_rows * stride_qm, 1) + gl.expand_dims(q_dims, 0),
                mask=gl.expand_dims(q_rows < L_q, 1) & gl.expand_dims(q_dims < head_dim, 0), other=0.0)

    # Keys this consumer's rows may see, and the end of the blocks all of them see
    # (online_softmax's ranges, with causality folded into mask_diagonal).
    _, kv_hi = visible_key_range(my_first, my_first + CONSUMER_ROWS - 1, mask_diagonal, L_kv, BLOCK_N, True, -1)
    full_end = fully_visible_end(my_first, mask_diagonal, 0, kv_hi, BLOCK_N, True, -1)

    rows = my_first + gl.arange(0, CONSUMER_ROWS, layout=gl.SliceLayout(1, s_layout))
    qk_scale = sm_scale * LOG2E
    row_max = gl.full([CONSUMER_ROWS], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
    row_sum = gl.zeros([CONSUMER_ROWS], gl.float32, layout=gl.SliceLayout(1, s_layout))
    acc = gl.zeros([CONSUMER_ROWS, BLOCK_D], gl.float32, layout=o_layout)
    s_zero = gl.zeros([CONSUMER_ROWS, BLOCK_N], gl.float32, layout=s_layout)

    mbarrier.wait(k_ready.index(0), 0)
    s = warpgroup_mma(q, k_ring.index(0).permute((1, 0)), s_zero, use_acc=False)
    p, rescale, row_max, row_sum = _attend_block(s, row_max, row_sum, 0, rows, mask_diagonal, kv_hi, full_end,
                                                 qk_scale)
    p_prev = gl.convert_layout(p.to(dtype), p_layout)

    for block in range(1, num_blocks):
        slot = block % NUM_STAGES
        prev_slot = (block - 1) % NUM_STAGES
        mbarrier.wait(k_ready.index(slot), (block // NUM_STAGES) & 1)
        s_token = warpgroup_mma(q, k_ring.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev_slot), ((block - 1) // NUM_STAGES) & 1)
        acc_token = warpgroup_mma(p_prev, v_ring.index(prev_slot), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=[s_token])  # S_j done; P_{j-1} V_{j-1} may still run
        p, rescale, row_max, row_sum = _attend_block(s, row_max, row_sum, block * BLOCK_N, rows, mask_diagonal,
                                                     kv_hi, full_end, qk_scale)
        acc, p_prev = warpgroup_mma_wait(0, deps=[acc_token, p_prev])
        mbarrier.arrive(kv_empty.index(prev_slot), count=1)
        acc = acc * gl.expand_dims(gl.convert_layout(rescale, gl.SliceLayout(1, o_layout)), 1)
        p_prev = gl.convert_layout(p.to(dtype), p_layout)

    last = num_blocks - 1
    mbarrier.wait(v_ready.index(last % NUM_STAGES), (last // NUM_STAGES) & 1)
    acc = warpgroup_mma(p_prev, v_ring.index(last % NUM_STAGES), acc)
    mbarrier.arrive(kv_empty.index(last % NUM_STAGES), count=1)

    # A row that saw no key has row_sum 0 and writes zeros.
    row_sum = gl.convert_layout(row_sum, gl.SliceLayout(1, o_layout))
    out = acc / gl.expand_dims(gl.where(row_sum == 0.0, 1.0, row_sum), 1)
    store_layout: gl.constexpr = _rows_layout(BLOCK_D)
    out = gl.convert_layout(out.to(dtype), store_layout)
    o_rows = my_first + gl.arange(0, CONSUMER_ROWS, layout=gl.SliceLayout(1, store_layout))
    o_dims = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, store_layout))
    gl.store(Out + o_off + gl.expand_dims(o_rows * stride_om, 1) + gl.expand_dims(o_dims, 0), out,
             mask=gl.expand_dims(o_rows < L_q, 1) & gl.expand_dims(o_dims < head_dim, 0))


@gluon.jit
def _first_consumer(Q, Out, sm_scale, q_off, o_off, stride_qm, stride_om, L_q, L_kv, mask_diagonal, head_dim,
                    first_row, num_blocks, k_ring, v_ring, k_ready, v_ready, kv_empty):
    _consume(0, Q, Out, sm_scale, q_off, o_off, stride_qm, stride_om, L_q, L_kv, mask_diagonal, head_dim, first_row,
             num_blocks, k_ring, v_ring, k_ready, v_ready, kv_empty)


@gluon.jit
def _second_consumer(Q, K, V, Out, sm_scale, q_off, k_off, v_off, o_off, stride_qm, stride_kn, stride_vn, stride_om,
                     L_q, L_kv, mask_diagonal, head_dim, first_row, num_blocks, k_ring, v_ring, k_ready, v_ready,
                     kv_empty):
    _consume(1, Q, Out, sm_scale, q_off, o_off, stride_qm, stride_om, L_q, L_kv, mask_diagonal, head_dim, first_row,
             num_blocks, k_ring, v_ring, k_ready, v_ready, kv_empty)


@gluon.jit
def _producer(Q, K, V, Out, sm_scale, q_off, k_off, v_off, o_off, stride_qm, stride_kn, stride_vn, stride_om,
              L_q, L_kv, mask_diagonal, head_dim, first_row, num_blocks, k_ring, v_ring, k_ready, v_ready, kv_empty):
    """K and V blocks 0..num_blocks-1 into the ring, each slot once both consumers gave it back.

    The descriptors span this head's L_kv x head_dim: rows past L_kv and the
    columns padding head_dim to BLOCK_D arrive as zeros."""
    NUM_STAGES: gl.constexpr = k_ring.type.shape[0]
    BLOCK_N: gl.constexpr = k_ring.type.shape[1]
    BLOCK_D: gl.constexpr = k_ring.type.shape[2]
    tile_bytes: gl.constexpr = BLOCK_N * BLOCK_D * 2  # whole boxes, zero fill included
    k_desc = tma.make_tensor_descriptor(K + k_off, shape=[L_kv, head_dim], strides=[stride_kn, 1],
                                        block_shape=[BLOCK_N, BLOCK_D], layout=_tile_layout())
    v_desc = tma.make_tensor_descriptor(V + v_off, shape=[L_kv, head_dim], strides=[stride_vn, 1],
                                        block_shape=[BLOCK_N, BLOCK_D], layout=_tile_layout())
    for block in range(num_blocks):
        slot = block % NUM_STAGES
        # A fresh mbarrier counts as having completed the phase before 0, so the first pass does not wait.
        mbarrier.wait(kv_empty.index(slot), ((block // NUM_STAGES) & 1) ^ 1)
        mbarrier.expect(k_ready.index(slot), tile_bytes)
        tma.async_load(k_desc, [block * BLOCK_N, 0], k_ready.index(slot), k_ring.index(slot))
        mbarrier.expect(v_ready.index(slot), tile_bytes)
        tma.async_load(v_desc, [block * BLOCK_N, 0], v_ready.index(slot), v_ring.index(slot))


@gluon.jit
def gqa_attention_fwd_ws(
    Q, K, V, Out, Mask, KvLen,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_mb, stride_mh, stride_mm, stride_mn,
    L_q, L_kv,
    NUM_HEADS_Q: gl.constexpr, GROUP_SIZE: gl.constexpr,
    HEAD_DIM: gl.constexpr, BLOCK_D: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    IS_CAUSAL: gl.constexpr, WINDOW_LEFT: gl.constexpr, MASK_KIND: gl.constexpr, SOFTCAP: gl.constexpr,
    L2_SECTION_BYTES: gl.constexpr, NUM_STAGES: gl.constexpr,
):
    gl.static_assert(MASK_KIND == "none", "the warp-specialized forward takes no mask")
    gl.static_assert(WINDOW_LEFT < 0, "the warp-specialized forward takes no window")
    gl.static_assert(SOFTCAP == 0.0, "the warp-specialized forward takes no soft-cap")
    gl.static_assert((BLOCK_D == 64) | (BLOCK_D == 128), "the warp-specialized forward takes head dims up to 128")
    gl.static_assert(BLOCK_M == 2 * CONSUMER_ROWS, "two consumers of 64 rows each")
    dtype: gl.constexpr = Q.dtype.element_ty

    block_m, batch_head = program_tile(L_kv, GROUP_SIZE, HEAD_DIM, K.dtype.element_ty.primitive_bitwidth // 8,
                                       L2_SECTION_BYTES)
    batch = (batch_head // NUM_HEADS_Q).to(gl.int64)
    head = (batch_head % NUM_HEADS_Q).to(gl.int64)
    kv_head = head // GROUP_SIZE
    q_off = batch * stride_qb + head * stride_qh
    k_off = batch * stride_kb + kv_head * stride_kh
    v_off = batch * stride_vb + kv_head * stride_vh
    o_off = batch * stride_ob + head * stride_oh

    gl.static_assert(KvLen is None, "the warp-specialized forward takes no kv_len")
    first_row = block_m * BLOCK_M
    mask_diagonal = L_kv
    if IS_CAUSAL:
        mask_diagonal = L_kv - L_q
    _, kv_hi = visible_key_range(first_row, first_row + BLOCK_M - 1, mask_diagonal, L_kv, BLOCK_N, True, -1)
    # At least one block, so every partition agrees on the ring's phases; a
    # block past kv_hi is all zeros and hidden.
    num_blocks = gl.maximum(gl.cdiv(kv_hi, BLOCK_N), 1)

    k_ring = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, BLOCK_D], _tile_layout())
    v_ring = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, BLOCK_D], _tile_layout())
    k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)  # both consumers give a slot back

    worker_args = (Q, K, V, Out, sm_scale, q_off, k_off, v_off, o_off, stride_qm, stride_kn, stride_vn, stride_om,
                   L_q, L_kv, mask_diagonal, HEAD_DIM, first_row, num_blocks, k_ring, v_ring, k_ready, v_ready,
                   kv_empty)
    gl.warp_specialize([
        (_first_consumer, (Q, Out, sm_scale, q_off, o_off, stride_qm, stride_om, L_q, L_kv, mask_diagonal,
                           HEAD_DIM, first_row, num_blocks, k_ring, v_ring, k_ready, v_ready, kv_empty)),
        (_second_consumer, worker_args),
        (_producer, worker_args),
    ], [4, 1], [CONSUMER_REGISTERS, PRODUCER_REGISTERS])
