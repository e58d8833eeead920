"""Launch heuristics for the split-KV decode kernels (attention_decode.py): pure, no GPU.

Split count rule (after FlashAttention-3's, restated here):
  * ctas = batch * num_heads_kv * m_tiles programs exist before splitting. If
    they already fill at least 80% of the SMs, splitting only adds the combine
    launch and a workspace round trip: use 1 split.
  * A candidate count s gives SPLIT_LEN = round_up(cdiv(l_kv, s), block_n) and
    really launches cdiv(l_kv, SPLIT_LEN) splits; only counts that survive this
    rounding are candidates, so each candidate is a distinct launch.
  * Candidates are capped by max_splits and by min_split_len: a split never
    covers fewer than min_split_len keys (SPLIT_LEN >= min_split_len), since a
    split that short costs more in workspace traffic and merge than it saves.
  * The wave efficiency of s is w / ceil(w) with w = ctas * s / num_sms (the
    fraction of the SM-slots of the last wave that do work, counting full
    waves as full). The pick is the smallest candidate whose efficiency is
    >= 85% of the best candidate's: fewer splits means less merge work, and
    near-equal occupancy is not worth more of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

SHARED_MEMORY_BUDGET = 96 * 1024  # the least of the target archs, less a margin
MIN_SPLIT_LEN = 256
MAX_SPLITS = 128
FILLED_FRACTION = 0.8
EFFICIENCY_FRACTION = 0.85
# A packed tile holds at most this many fp32 accumulator elements per row
# block (64 rows of a 256-wide head): beyond it the M rows are tiled.
MAX_ACC_ELEMENTS = 64 * 256
# (BLOCK_N, num_stages), preferred first: long key blocks, deep pipelining.
KV_TILE_CANDIDATES = ((64, 3), (64, 2), (32, 2), (16, 2), (16, 1))


@dataclass(frozen=True)
class DecodeConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def split_len_for(l_kv: int, num_splits: int, block_n: int) -> int:
    """SPLIT_LEN for about num_splits splits: a multiple of block_n covering l_kv in num_splits pieces."""
    return max(block_n, triton.cdiv(triton.cdiv(l_kv, max(num_splits, 1)), block_n) * block_n)


def split_plan(l_kv: int, num_splits: int, block_n: int) -> tuple[int, int]:
    """(SPLIT_LEN, splits to launch = cdiv(l_kv, SPLIT_LEN)) for a requested split count."""
    split_len = split_len_for(l_kv, num_splits, block_n)
    return split_len, max(1, triton.cdiv(l_kv, split_len))


def wave_efficiency(ctas: int, num_sms: int) -> float:
    waves = ctas / num_sms
    return waves / -(-ctas // num_sms)


def decode_split_count(batch: int, num_heads_kv: int, l_kv: int, num_sms: int, block_n: int,
                       max_splits: int = MAX_SPLITS, min_split_len: int = MIN_SPLIT_LEN,
                       m_tiles: int = 1) -> int:
    """Number of KV splits to launch (see the module docstring); 1 means the single-launch path.

    The returned count is exact: split_plan(l_kv, count, block_n) gives it back.
    """
    ctas = batch * num_heads_kv * m_tiles
    if ctas >= FILLED_FRACTION * num_sms or l_kv < 2 * min_split_len:
        return 1
    candidates = {}
    for requested in range(1, max_splits + 1):
        split_len, launched = split_plan(l_kv, requested, block_n)
        if launched > 1 and split_len < min_split_len:
            break  # more splits only shorten them further
        candidates[launched] = wave_efficiency(ctas * launched, num_sms)
    best = max(candidates.values())
    return min(s for s, eff in candidates.items() if eff >= EFFICIENCY_FRACTION * best)


def estimated_shared_bytes(block_m: int, block_n: int, head_dim: int, dtype: torch.dtype, num_stages: int) -> int:
    """Q tile plus num_stages buffered K and V tiles, at the padded head dim."""
    return (block_m + 2 * num_stages * block_n) * triton.next_power_of_2(head_dim) * dtype.itemsize


def decode_config(head_dim: int, dtype: torch.dtype, group_size: int, l_q: int) -> DecodeConfig:
    """Tiles for gqa_decode_split: BLOCK_M packs all group_size * l_q rows when they fit."""
    block_d = triton.next_power_of_2(head_dim)
    block_m = max(16, triton.next_power_of_2(group_size * l_q))
    block_m = min(block_m, max(16, MAX_ACC_ELEMENTS // block_d))
    while True:
        for block_n, num_stages in KV_TILE_CANDIDATES:
            if estimated_shared_bytes(block_m, block_n, head_dim, dtype, num_stages) <= SHARED_MEMORY_BUDGET:
                num_warps = 4 if block_m * block_d <= 64 * 128 else 8
                return DecodeConfig(block_m, block_n, num_warps, num_stages)
        if block_m == 16:
            raise ValueError(f"no decode tile fits {SHARED_MEMORY_BUDGET} bytes of shared memory "
                             f"for head dim {head_dim}, {dtype}")
        block_m //= 2  # more M tiles, each reading K/V again
