"""Launch heuristics for the attention kernels: pure functions, decided ahead of time.

Until the GPU-measured tuning table lands, the config is the largest tile
whose estimated shared memory fits every target arch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

# sm_86/sm_89 allow 99 KiB of shared memory per block, the least of the
# target archs; keep a margin for Triton's own layout conversions.
SHARED_MEMORY_BUDGET = 96 * 1024
NUM_STAGES = 2
NUM_WARPS = 4
# Largest first: bigger tiles reuse each K/V load across more queries.
TILE_CANDIDATES = ((64, 64), (64, 32), (32, 32), (16, 16))


@dataclass(frozen=True)
class AttentionConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def estimated_shared_bytes(block_m: int, block_n: int, head_dim: int, dtype: torch.dtype,
                           num_stages: int = NUM_STAGES) -> int:
    """Q tile plus num_stages buffered K and V tiles, at the padded head dim."""
    padded = triton.next_power_of_2(head_dim)
    return (block_m + 2 * num_stages * block_n) * padded * dtype.itemsize


def attention_config(head_dim: int, dtype: torch.dtype) -> AttentionConfig:
    for block_m, block_n in TILE_CANDIDATES:
        if estimated_shared_bytes(block_m, block_n, head_dim, dtype) <= SHARED_MEMORY_BUDGET:
            return AttentionConfig(block_m, block_n, NUM_WARPS, NUM_STAGES)
    raise ValueError(f"no tile fits {SHARED_MEMORY_BUDGET} bytes of shared memory for head dim {head_dim}, {dtype}")

# SM count the ahead-of-time split-KV decode plan assumes (the H100 SXM's
# 132). Payload shapes are static and the target GPU is unknown at export, so
# decode_split_count is evaluated for this nominal device; on GPUs with fewer
# SMs the chosen split count still fills them, on larger ones it leaves a
# little occupancy unused.
NOMINAL_SMS = 132
