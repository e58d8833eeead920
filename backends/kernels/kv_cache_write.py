"""kv_cache_write: scatters a call's new K/V rows into the delegate's device KV cache.

Program (row, b * H_kv + h) copies row `row` of head h of K_new/V_new
[B, H_kv, L_new, D] to position Positions[row] of K_cache/V_cache
[B, H_kv, S, D] (torch's `cache.index_copy_(2, positions, new)`). A position
outside [0, S) is skipped (eager index_copy_ would raise; a kernel cannot).

Program (0, 0) also stores kv_len = min(max(Positions) + 1, S) (int32) at
KvLen: the attention kernel launched next on the same stream reads it and
attends only keys [0, kv_len). That is exact for models whose mask hides
every key after a query's own position (all causal decoders): keys past the
last written position are masked anyway, and rows left there by an earlier,
longer sequence are never read.

FROM_START: Positions holds one position, the first row's; row r goes to
Positions[0] + r (ExecuTorch's `llama::update_cache(value, cache, start_pos)`,
whose caches are [B, S, H_kv, D]: the strides say which dim is which), and
kv_len = min(Positions[0] + L_new, S).

kv_len_from_start stores only that kv_len, for attention over caches the
delegate does not write (`llama::custom_sdpa` attends keys [0, start_pos + L_q)).
"""

import triton
import triton.language as tl


@triton.jit
def kv_cache_write(
    K_new, V_new, Positions, K_cache, V_cache, KvLen,
    L_new, S,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_kcb, stride_kch, stride_kcs,
    stride_vcb, stride_vch, stride_vcs,
    NUM_HEADS_KV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    FROM_START: tl.constexpr = False,
):
    row = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // NUM_HEADS_KV).to(tl.int64)
    h = (bh % NUM_HEADS_KV).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    if FROM_START:
        pos = tl.load(Positions).to(tl.int64) + row
    else:
        pos = tl.load(Positions + row).to(tl.int64)
    if (pos >= 0) & (pos < S):
        k = tl.load(K_new + b * stride_kb + h * stride_kh + row * stride_kl + d, mask=d_ok)
        tl.store(K_cache + b * stride_kcb + h * stride_kch + pos * stride_kcs + d, k, mask=d_ok)
        v = tl.load(V_new + b * stride_vb + h * stride_vh + row * stride_vl + d, mask=d_ok)
        tl.store(V_cache + b * stride_vcb + h * stride_vch + pos * stride_vcs + d, v, mask=d_ok)
    if (row == 0) & (bh == 0):
        if FROM_START:
            last = tl.load(Positions).to(tl.int64) + L_new - 1
        else:
            rows = tl.arange(0, BLOCK_L)
            positions = tl.load(Positions + rows, mask=rows < L_new, other=-1).to(tl.int64)
            last = tl.max(positions, axis=0)
        kv_len = tl.minimum(tl.maximum(last + 1, 0), S)
        tl.store(KvLen, kv_len.to(tl.int32))


@triton.jit
def kv_len_from_start(Start, KvLen, L_q, S):
    """One program: kv_len = min(max(Start[0] + L_q, 0), S) (int32) at KvLen."""
    kv_len = tl.load(Start).to(tl.int64) + L_q
    tl.store(KvLen, tl.minimum(tl.maximum(kv_len, 0), S).to(tl.int32))


def kv_cache_write_grid(l_new: int, batch: int, num_heads_kv: int) -> tuple[int, int, int]:
    return (l_new, batch * num_heads_kv, 1)
