"""Every launch heuristic of the attention and linear kernels, in one pure module (no GPU needed).

The linear kernels' heuristics are at the end of the module, with their own notes.

The AOT stage (attention_plan), the JIT launcher (kernels/jit_launch), the
benchmarks and the tests all call these functions, so a payload and a JIT
launch of one problem on one arch make the same choices.

Tiles (BLOCK_M, BLOCK_N, warps, stages): the GPU-measured tuning table
backends/tuning/sm_<arch>.json (written by bench/tune_attention.py) where it
has an entry for the kernel, dtype and head dim, and the tile fits that arch's
shared memory; else a conservative default that fits every target arch.

Split count of the split-KV decode (after FlashAttention-3's rule, restated):
  * ctas = batch * num_heads_kv * m_tiles programs exist before splitting. If
    they already fill at least 80% of the SMs, splitting only adds the combine
    launch and a workspace round trip: use 1 split.
  * A candidate count s gives SPLIT_LEN = round_up(cdiv(l_kv, s), block_n) and
    really launches cdiv(l_kv, SPLIT_LEN) splits; only counts that survive this
    rounding are candidates, so each candidate is a distinct launch.
  * Candidates are capped by MAX_SPLITS and by MIN_SPLIT_LEN: a split never
    covers fewer keys, since a split that short costs more in workspace
    traffic and merge than it saves.
  * The wave efficiency of s is w / ceil(w) with w = ctas * s / num_sms (the
    fraction of the SM-slots of the last wave that do work). The pick is the
    smallest candidate within 85% of the best candidate's efficiency: fewer
    splits means less merge work.

A tuning-table entry may cap the wave rule's split count (max_splits,
raised to keep at least half the SMs busy); a capped count takes as many
splits as the cap allows. At D=256 on the H100 the wave rule fills the SMs
with splits whose fp32 partials cost more than the extra CTAs gain: capped
at 32 (64 for one KV head), qwen3.5-moe 16/2 decode ran 20% faster at 2K
and 4K and 3% at 32K, and D=256 MQA 25 to 29% faster at 4K and 8K; from
four programs a split (batch * KV heads) on, the wave rule's count is within
the cap (bench/results/h100_decode_d256_splits.md).

Short contexts (after measuring on the H100): a split's time is mostly
latency (the launch, one round trip to DRAM, the partial's store) until it
covers a few hundred keys, so where splits of one BLOCK_N block each would
not fill FILLED_FRACTION of the SMs, BLOCK_N is halved (down to
MIN_BLOCK_N) and splits may be as short as one such block. Longer contexts
keep the tuned BLOCK_N and MIN_SPLIT_LEN.

Warp-specialized forward on sm_90 (kernels/attention_fwd_ws.py): where the
tuning table has an attention_fwd_ws entry for the dtype and head dim and
the call is the plain variant that kernel takes (no mask, window, soft-cap
or kv_len; a positive scale, since its row maxima are taken before scaling),
the AOT stage compiles it for aligned inputs instead of gqa_attention_fwd:
on the H100 it took llama3-8b causal prefill at 4K/8K from 349/1282 to
260/996 us, and D=96 at 4K from 346 to 268 us (bench/results/h100_prefill_ws.md).
Head dims up to 128 are padded to 64 or 128 inside; entries exist where it
measured faster than the Triton forward (80, 96, 112 and 128; not 64, and at
256 a variant lost: bench/results/h100_tune_ws_d256.json; D=80 242 against
309 us, D=112 256 against 333, bench/results/h100_tune_order_bf16.json). It needs the Gluon API of Triton
3.9 (the pinned compiler); with an older Triton, and for the generic
(unaligned) variant, gqa_attention_fwd keeps the call.

Launch order of the forward kernels (kernels/attention_fwd.program_tile):
query blocks longest first across the heads of an L2 section, sections of
heads whose K and V fit L2_SECTION_BYTES. On the H100 it took causal prefill
of qwen3.5-moe D=256 at 4K from 342 to 269 us, llama3-8b 4K from 277 to
250 us (bench/results/h100_prefill_order.md); without sections (all heads at
once) llama3-8b 8K and B=4 ran 5-10% slower than with them.

Dynamic L_kv (one payload for a range of lengths): the decode is planned per
bucket of kv_length_buckets, each for its longest length, so a bucket's
split count and workspace hold for every length in it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import triton

# Default tiles fit this much shared memory: sm_86/sm_89 allow 99 KiB per
# block, the least of the target archs; the margin is for Triton's own
# layout conversions.
SHARED_MEMORY_BUDGET = 96 * 1024
# Opt-in shared memory per block of each arch, less 1 KiB the driver reserves;
# tuned tiles must fit their arch's.
SHARED_MEMORY_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}
# SM count the ahead-of-time split-KV decode plan assumes (the H100 SXM's
# 132): the target GPU is unknown at export. Fewer SMs are still filled by
# the chosen count; more are left a little idle.
NOMINAL_SMS = 132

# Forward kernel defaults, largest tile first: bigger tiles reuse each K/V load across more queries.
FWD_TILE_CANDIDATES = ((64, 64), (64, 32), (32, 32), (16, 16))
FWD_NUM_WARPS, FWD_NUM_STAGES = 4, 2
# Decode defaults, (BLOCK_N, stages) preferred first: long key blocks, deep pipelining.
DECODE_TILE_CANDIDATES = ((64, 3), (64, 2), (32, 2), (16, 2), (16, 1))
# A packed decode tile holds at most this many fp32 accumulator elements
# (64 rows of a 256-wide head): beyond it the packed rows are split in M tiles.
MAX_ACC_ELEMENTS = 64 * 256

# The fused merge reads at most this many fp32 partial bytes per merging
# program (splits * packed rows * head dim * 4). On the H200 (AOT cubins,
# bench/results/h200_decode_merge.md) the fused launch won only for 2 splits
# of 4 rows (llama3-8b B=8: 65.9 against 66.4 us) and lost from 4 splits of 4
# rows on (llama3-8b 1K: 7.1 against 6.5 us): its last program's serial merge
# costs more than the combine launch, which a CUDA graph or a busy stream
# hides. In eager execution it still saves the host a launch (C API enqueue
# 4.9 against 8.7 us at llama3-8b 2K, the same wall time).
MAX_FUSED_MERGE_BYTES = 4 * 1024
# Elements of one block of partials the fused merge loads at once, for 4 warps.
MERGE_BLOCK_ELEMENTS = 8192

# Down to 128 keys a split (one BLOCK_N block of the tuned D128 tiles): short
# contexts then fill the GPU (llama3-8b 2K: 16 splits, 6.3 against 7.0 us;
# MQA 2K 7.0 against 8.1 us on the H200, bench/results/h200_decode_merge.md).
MIN_SPLIT_LEN = 128
# The H100 sweep (bench/results) found 16 to 64 splits best at 8K-32K keys
# for 2 to 8 KV heads; MQA (1 KV head) at 32K keys is fastest with 128 on the
# H200 (bench/tune_decode_merge.py): 64 leave half the SMs idle.
MAX_SPLITS = 128
# Shortest key block (and split) of a short context: 16 splits of 32 keys
# at llama3-8b 512 keys ran in 5.25 us against 5.81 for 4 of 128, 16 of 64
# at 1K in 5.54 against 6.03, and MQA 2K's 64 of 32 in 5.93 against 6.61
# (H100, Triton JIT, CUDA-graph timing; bench/results/h100_decode_short.md).
MIN_BLOCK_N = 32
FILLED_FRACTION = 0.8
EFFICIENCY_FRACTION = 0.85

TUNING_DIR = Path(__file__).with_name("tuning")

# The forward's programs take their query blocks longest first across all
# heads (a causal launch then ends on its shortest blocks, not on one head's
# longest), in sections of heads whose K and V together fit this much L2: the
# blocks running at once share K/V from L2 rather than DRAM. 16 MiB is a
# third of the H100's L2 and under half of the A100's 40 MiB; on an H200 it
# was faster than 8 and 32 MiB, or within run-to-run noise of them, on every
# prefill benchmark shape (bench/results/h100_prefill_order.md).
L2_SECTION_BYTES = 16 << 20


# The warp-specialized forward: 128 query rows per CTA (two consumer
# warpgroups of 64), 4 warps in the first consumer (the kernel's num_warps),
# and a per-thread register cap that lets its 4 + 4 + 1 warps (three
# warpgroups) fit one SM's registers.
WS_BLOCK_M, WS_NUM_WARPS, WS_MAX_REGISTERS = 128, 4, 168
WS_HEAD_DIMS = (64, 80, 96, 112, 128)  # padded to 64 or 128 inside
WS_DTYPES = (torch.float16, torch.bfloat16)
WS_ARCH = 90  # wgmma and setmaxnreg: sm_90a only
WS_MIN_TRITON = (3, 9)  # the Gluon API the kernel is written against


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    warp_specialized: bool = False  # kernels/attention_fwd_ws.py instead of gqa_attention_fwd


def estimated_shared_bytes(block_m: int, block_n: int, head_dim: int, dtype: torch.dtype, num_stages: int) -> int:
    """Q tile plus num_stages buffered K and V tiles, at the padded head dim."""
    return (block_m + 2 * num_stages * block_n) * triton.next_power_of_2(head_dim) * dtype.itemsize


@functools.lru_cache(maxsize=None)
def tuning_table(arch: int) -> dict:
    """The measured table of an arch ({} when none was measured)."""
    path = TUNING_DIR / f"sm_{arch}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _tuned(kernel: str, arch: Optional[int], dtype: torch.dtype, head_dim: int) -> Optional[dict]:
    if arch is None:
        return None
    return tuning_table(arch).get(kernel, {}).get(f"{str(dtype).removeprefix('torch.')}/{head_dim}")


def _fits(arch: Optional[int], block_m: int, block_n: int, head_dim: int, dtype: torch.dtype, stages: int) -> bool:
    limit = SHARED_MEMORY_PER_BLOCK.get(arch, SHARED_MEMORY_BUDGET)
    return estimated_shared_bytes(block_m, block_n, head_dim, dtype, stages) <= limit


def warp_specialized_compiler_available() -> bool:
    """Whether the installed Triton has the Gluon API the warp-specialized forward is written against."""
    major, minor = triton.__version__.split(".")[:2]
    return (int(major), int(minor)) >= WS_MIN_TRITON


def warp_specialized_forward_applies(*, arch: Optional[int], dtype: torch.dtype, head_dim: int, scale: float,
                                     masked: bool, window_left: int, softcap: float, has_kv_len: bool,
                                     min_l_kv: int) -> bool:
    """Whether the warp-specialized forward can take this call on `arch` (its tuning entry aside).

    min_l_kv: the fewest keys a launch may see; its TMA descriptors need at least one key row."""
    return (arch == WS_ARCH and dtype in WS_DTYPES and head_dim in WS_HEAD_DIMS and scale > 0 and not masked
            and window_left < 0 and softcap == 0 and not has_kv_len and min_l_kv >= 1
            and warp_specialized_compiler_available())


def attention_config(head_dim: int, dtype: torch.dtype, arch: Optional[int] = None,
                     warp_specialized: bool = False) -> KernelConfig:
    """Tiles of the forward kernel on `arch` (None: any target arch).

    warp_specialized: the call may take the warp-specialized forward
    (warp_specialized_forward_applies); its tuned entry then wins."""
    tuned_ws = _tuned("attention_fwd_ws", arch, dtype, head_dim) if warp_specialized else None
    if tuned_ws:
        return KernelConfig(WS_BLOCK_M, tuned_ws["block_n"], WS_NUM_WARPS, tuned_ws["num_stages"],
                            warp_specialized=True)
    tuned = _tuned("attention_fwd", arch, dtype, head_dim)
    if tuned and _fits(arch, tuned["block_m"], tuned["block_n"], head_dim, dtype, tuned["num_stages"]):
        return KernelConfig(tuned["block_m"], tuned["block_n"], tuned["num_warps"], tuned["num_stages"])
    for block_m, block_n in FWD_TILE_CANDIDATES:
        if estimated_shared_bytes(block_m, block_n, head_dim, dtype, FWD_NUM_STAGES) <= SHARED_MEMORY_BUDGET:
            return KernelConfig(block_m, block_n, FWD_NUM_WARPS, FWD_NUM_STAGES)
    raise ValueError(f"no tile fits {SHARED_MEMORY_BUDGET} bytes of shared memory for head dim {head_dim}, {dtype}")


def decode_config(head_dim: int, dtype: torch.dtype, group_size: int, l_q: int,
                  arch: Optional[int] = None) -> KernelConfig:
    """Tiles of gqa_decode_split on `arch`: BLOCK_M packs all group_size * l_q rows when they fit."""
    block_d = triton.next_power_of_2(head_dim)
    block_m = max(16, triton.next_power_of_2(group_size * l_q))
    block_m = min(block_m, max(16, MAX_ACC_ELEMENTS // block_d))
    tuned = _tuned("decode_split", arch, dtype, head_dim)
    if tuned and _fits(arch, block_m, tuned["block_n"], head_dim, dtype, tuned["num_stages"]):
        return KernelConfig(block_m, tuned["block_n"], tuned["num_warps"], tuned["num_stages"])
    while True:
        for block_n, num_stages in DECODE_TILE_CANDIDATES:
            if estimated_shared_bytes(block_m, block_n, head_dim, dtype, num_stages) <= SHARED_MEMORY_BUDGET:
                num_warps = 4 if block_m * block_d <= 64 * 128 else 8
                return KernelConfig(block_m, block_n, num_warps, num_stages)
        if block_m == 16:
            raise ValueError(f"no decode tile fits {SHARED_MEMORY_BUDGET} bytes of shared memory "
                             f"for head dim {head_dim}, {dtype}")
        block_m //= 2  # more M tiles, each reading K/V again


def decode_launch(head_dim: int, dtype: torch.dtype, group_size: int, l_q: int, batch: int, num_heads_kv: int,
                  l_kv: int, num_sms: int, arch: Optional[int] = None) -> tuple[KernelConfig, int]:
    """(tiles, splits to launch) of gqa_decode_split for l_kv keys: decode_config's tiles, with
    BLOCK_N shortened at short contexts (see the module docstring), and decode_split_count's
    count for them."""
    config = decode_config(head_dim, dtype, group_size, l_q, arch)
    m_tiles = triton.cdiv(group_size * l_q, config.block_m)
    ctas = batch * num_heads_kv * m_tiles
    block_n = config.block_n
    if l_kv >= 2 * MIN_SPLIT_LEN:  # shorter contexts are never split
        while block_n > MIN_BLOCK_N and ctas * triton.cdiv(l_kv, block_n) < FILLED_FRACTION * num_sms:
            block_n //= 2
    config = KernelConfig(config.block_m, block_n, config.num_warps, config.num_stages)
    splits = decode_split_count(batch, num_heads_kv, l_kv, num_sms, block_n,
                                min_split_len=min(MIN_SPLIT_LEN, block_n), m_tiles=m_tiles)
    cap = decode_split_cap(head_dim, dtype, ctas, num_sms, arch)
    if cap is not None:
        splits = min(splits, split_plan(l_kv, cap, block_n)[1])
    return config, splits


def decode_split_cap(head_dim: int, dtype: torch.dtype, ctas: int, num_sms: int,
                     arch: Optional[int] = None) -> Optional[int]:
    """The tuning table's max_splits for the decode kernel on `arch` (None where it has none),
    raised where it would leave fewer CTAs (ctas programs per split) than half the SMs."""
    tuned = _tuned("decode_split", arch, dtype, head_dim)
    if not tuned or "max_splits" not in tuned:
        return None
    return max(tuned["max_splits"], triton.cdiv(num_sms // 2, ctas))


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


def fused_combine_for(num_splits: int, group_size: int, l_q: int, head_dim: int) -> bool:
    """Whether several splits merge inside the split kernel (one launch) rather than in
    gqa_decode_combine (see the module docstring)."""
    merge_bytes = num_splits * group_size * l_q * triton.next_power_of_2(head_dim) * 4
    return num_splits > 1 and merge_bytes <= MAX_FUSED_MERGE_BYTES


def merge_block_s(block_m: int, head_dim: int) -> int:
    """Splits the fused merge loads per step (a power of 2, at least 1)."""
    per_split = block_m * triton.next_power_of_2(head_dim)
    return max(1, min(16, triton.next_power_of_2(MERGE_BLOCK_ELEMENTS // per_split + 1) // 2))


def combine_block_s(num_splits: int, head_dim: int) -> int:
    """Splits gqa_decode_combine merges per step: all of them at once where a
    [BLOCK_S, BLOCK_D] fp32 block stays within MERGE_BLOCK_ELEMENTS, so its
    L2 round trips are not serialised."""
    cap = max(1, MERGE_BLOCK_ELEMENTS // triton.next_power_of_2(head_dim))
    return max(1, min(triton.next_power_of_2(num_splits), cap))


def kv_length_buckets(lo: int, hi: int) -> list[tuple[int, int]]:
    """Inclusive L_kv ranges covering [lo, hi] that a dynamic decode plans one by one:
    below 2 * MIN_SPLIT_LEN (never split), then up to 4 * MIN_SPLIT_LEN, and
    doubling from there up to hi. Planned for its longest length, a range's splits are at
    most half as long as planned at its shortest."""
    if lo > hi:
        raise ValueError(f"empty L_kv range [{lo}, {hi}]")
    unsplit = 2 * MIN_SPLIT_LEN - 1
    buckets, start, edge = [], lo, unsplit
    while start <= hi:
        while edge < start:
            edge = 4 * MIN_SPLIT_LEN if edge == unsplit else 2 * edge
        end = min(hi, edge)
        buckets.append((start, end))
        start = end + 1
    return buckets


# --- Linear layers (kernels/linear.py) -------------------------------------------------------------------
#
# Which kernel: linear_gemv up to GEMV_MAX_M rows (decode, speculative
# verify), where one program streams its weight rows once for all of them;
# tensor-core tiles of linear_gemm beyond.
#
# GEMV tiles (a step is bound by streaming W): BLOCK_K spans one 16-byte
# vector per thread across the program (1024 bf16 elements at 4 warps), so
# each row's loads are wide and contiguous; the accumulator holds
# BLOCK_M * BLOCK_N * BLOCK_K fp32 values (GEMV_ACC_ELEMENTS, 32 a thread, per
# accumulator: gated linears keep two); BLOCK_N then shrinks (to 1) until at
# least GEMV_MIN_PROGRAMS programs stream W, so the SMs each have several
# programs' loads in flight (and the warps down to one 16-byte vector of the
# W tile per thread).
#
# GEMM tiles: 128 x 128 x 64 with 8 warps for 16-bit inputs (half the K for
# fp32), BLOCK_N halved for gated linears (two W tiles a step) and BLOCK_M
# down to the rows there are; then BLOCK_N and BLOCK_M halve (down to
# GEMM_MIN_TILE) while the grid has fewer programs than NOMINAL_SMS; stages
# as many (up to 3) as fit the arch's shared memory (SHARED_MEMORY_BUDGET
# for an unknown arch).
#
# A tuning-table entry (bench/bench_linear.py measures them) wins where it
# exists: section "linear_gemv" or "linear_gemm" of tuning/sm_<arch>.json,
# key linear_table_key(): "<dtype>/m<M>/n<N>/k<K>" with each size rounded up
# to a power of two (M to BLOCK_M's), "/gated" appended for gated linears;
# the entry holds block_m, block_n, block_k, num_warps, num_stages and
# optionally split_k.

GEMV_MAX_M = 8
GEMV_NUM_WARPS = 4
GEMV_ACC_ELEMENTS = 32 * 32 * GEMV_NUM_WARPS
GEMV_MIN_PROGRAMS = 3 * NOMINAL_SMS
GEMM_TILE = (128, 128, 64)  # BLOCK_M, BLOCK_N, BLOCK_K for 2-byte inputs
GEMM_MAX_STAGES = 3
GEMM_MIN_TILE = 64  # BLOCK_M / BLOCK_N shrink to fill the SMs, not below this
LINEAR_KINDS = ("gemv", "gemm")
VECTOR_BYTES = 16


@dataclass(frozen=True)
class LinearConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int = 1  # K split across programs: only 1 is implemented (compile_linear refuses others)


def linear_kind(m_max: int) -> str:
    """"gemv" for up to GEMV_MAX_M rows of X, else "gemm"."""
    if m_max < 1:
        raise ValueError(f"a linear needs at least one row of input, not m_max={m_max}")
    return "gemv" if m_max <= GEMV_MAX_M else "gemm"


def linear_table_key(m: int, n: int, k: int, dtype: torch.dtype, gated: bool = False) -> str:
    """The tuning-table key of a linear problem (sizes rounded up to powers of two)."""
    p2 = triton.next_power_of_2
    key = f"{str(dtype).removeprefix('torch.')}/m{p2(m)}/n{p2(n)}/k{p2(k)}"
    return key + "/gated" if gated else key


def _check_linear_problem(kind: str, m: int, n: int, k: int) -> None:
    if kind not in LINEAR_KINDS:
        raise ValueError(f"linear kind {kind!r} is not one of {LINEAR_KINDS}")
    if min(m, n, k) < 1:
        raise ValueError(f"linear sizes must be positive: m={m}, n={n}, k={k}")


def _gemv_default(m: int, n: int, k: int, dtype: torch.dtype, gated: bool) -> LinearConfig:
    block_m = triton.next_power_of_2(m)
    tile = max(1, GEMV_ACC_ELEMENTS // block_m // (2 if gated else 1))  # BLOCK_N * BLOCK_K
    vector = VECTOR_BYTES // dtype.itemsize
    block_k = min(triton.next_power_of_2(k), 32 * GEMV_NUM_WARPS * vector, tile)
    block_n = max(1, min(tile // block_k, triton.next_power_of_2(n)))
    while block_n > 1 and triton.cdiv(n, block_n) < GEMV_MIN_PROGRAMS:
        block_n //= 2
    # Fewer warps where the W tile is short of a whole vector per thread: its loads stay 16 bytes wide.
    num_warps = max(1, min(GEMV_NUM_WARPS, block_n * block_k // (32 * vector)))
    return LinearConfig(block_m, block_n, block_k, num_warps, 1)


def linear_gemm_shared_bytes(config: LinearConfig, dtype: torch.dtype, gated: bool = False) -> int:
    """X tile plus one or two W tiles, per stage."""
    w_tiles = 2 if gated else 1
    return (config.block_m + w_tiles * config.block_n) * config.block_k * dtype.itemsize * config.num_stages


def _gemm_default(m: int, n: int, k: int, dtype: torch.dtype, arch: Optional[int], gated: bool) -> LinearConfig:
    block_m, block_n, block_k = GEMM_TILE
    block_m = max(16, min(block_m, triton.next_power_of_2(m)))
    block_n = max(16, min(block_n // (2 if gated else 1), triton.next_power_of_2(n)))
    block_k = max(16, min(block_k * 2 // dtype.itemsize, triton.next_power_of_2(k)))
    # Smaller tiles where the big ones would leave SMs idle (llama3.2-1b's o at M = 512: 64 programs of 128 x 128).
    while block_n > GEMM_MIN_TILE and triton.cdiv(m, block_m) * triton.cdiv(n, block_n) < NOMINAL_SMS:
        block_n //= 2
    while block_m > GEMM_MIN_TILE and triton.cdiv(m, block_m) * triton.cdiv(n, block_n) < NOMINAL_SMS:
        block_m //= 2
    num_warps = 8 if block_m * block_n >= 128 * 128 else 4
    limit = SHARED_MEMORY_PER_BLOCK.get(arch, SHARED_MEMORY_BUDGET)
    for stages in range(GEMM_MAX_STAGES, 0, -1):
        config = LinearConfig(block_m, block_n, block_k, num_warps, stages)
        if linear_gemm_shared_bytes(config, dtype, gated) <= min(limit, SHARED_MEMORY_BUDGET):
            return config
    raise ValueError(f"no linear_gemm tile fits {SHARED_MEMORY_BUDGET} bytes of shared memory for {dtype}")


def linear_config(kind: str, m: int, n: int, k: int, dtype: torch.dtype, arch: Optional[int] = None, *,
                  gated: bool = False) -> LinearConfig:
    """Tiles of linear_<kind> for m rows of X, output width n (gate/up each n wide when gated), input
    width k, on `arch` (None: any target arch). For a gemv, m is the most rows a launch may have."""
    _check_linear_problem(kind, m, n, k)
    if kind == "gemv" and m > GEMV_MAX_M:
        raise ValueError(f"linear_gemv takes up to {GEMV_MAX_M} rows, not {m}: use linear_kind({m})")
    if arch is not None:
        tuned = tuning_table(arch).get(f"linear_{kind}", {}).get(linear_table_key(m, n, k, dtype, gated))
        if tuned:
            config = LinearConfig(tuned["block_m"], tuned["block_n"], tuned["block_k"], tuned["num_warps"],
                                  tuned["num_stages"], tuned.get("split_k", 1))
            limit = SHARED_MEMORY_PER_BLOCK.get(arch, SHARED_MEMORY_BUDGET)
            if kind == "gemv" or linear_gemm_shared_bytes(config, dtype, gated) <= limit:
                return config
    if kind == "gemv":
        return _gemv_default(m, n, k, dtype, gated)
    return _gemm_default(m, n, k, dtype, arch, gated)


def linear_grid(kind: str, m: int, n: int, config: LinearConfig) -> tuple[int, int, int]:
    """The grid linear_<kind> expects for m rows of X and output width n."""
    _check_linear_problem(kind, m, n, 1)
    if kind == "gemv":
        return (triton.cdiv(n, config.block_n), triton.cdiv(m, config.block_m), 1)
    return (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n), 1)
