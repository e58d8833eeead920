"""Launch heuristics (pure host code): the decode split count, tiles, and the tuning table."""

import pytest
import torch
import triton

from cuda_gqa.backends.heuristics import (
    EFFICIENCY_FRACTION, MAX_FUSED_MERGE_BYTES, MAX_SPLITS, MIN_BLOCK_N, MIN_SPLIT_LEN, SHARED_MEMORY_BUDGET,
    SHARED_MEMORY_PER_BLOCK, attention_config, combine_block_s, decode_config, decode_launch, decode_split_cap,
    decode_split_count, estimated_shared_bytes, fused_combine_for, merge_block_s, split_plan, tuning_table,
    wave_efficiency)
from cuda_gqa.backends import heuristics
from cuda_gqa.backends.heuristics import (
    GEMV_ACC_ELEMENTS, GEMV_MAX_M, GEMV_MIN_PROGRAMS, LinearConfig, linear_config, linear_gemm_shared_bytes,
    linear_grid, linear_kind, linear_table_key)

SMS = 132
BLOCK_N = 64
# (batch, kv heads, L_kv): the decode table's shapes.
DECODE_TABLE = [
    (1, 8, 2048), (1, 8, 8192), (1, 8, 32768),  # llama3-8b 32/8
    (1, 2, 8192),                               # qwen 16/2, D 256
    (1, 1, 32768),                              # MQA
    (8, 8, 8192),                               # batched llama3-8b
]


@pytest.mark.parametrize("batch, heads_kv, l_kv", DECODE_TABLE)
def test_split_count_fills_the_sms_or_hits_the_minimum_split(batch, heads_kv, l_kv):
    splits = decode_split_count(batch, heads_kv, l_kv, SMS, BLOCK_N)
    split_len, launched = split_plan(l_kv, splits, BLOCK_N)
    assert launched == splits  # the count is exact: the host launches exactly this many
    assert splits == 1 or split_len >= MIN_SPLIT_LEN
    ctas = batch * heads_kv * splits
    assert ctas <= 2 * SMS
    # Either at least 80% of the SMs get work (85% of the best wave efficiency,
    # itself at most 1), or the minimum split length or MAX_SPLITS caps the count.
    cap = min(l_kv // MIN_SPLIT_LEN, MAX_SPLITS)
    assert ctas >= 0.8 * SMS or splits >= EFFICIENCY_FRACTION * cap - 1


def test_decode_table_picks():
    picks = {shape: decode_split_count(*shape, SMS, BLOCK_N) for shape in DECODE_TABLE}
    # Whole-wave fill for the llama contexts, short ones too (16 splits of 128 keys at 2K).
    assert picks[(1, 8, 8192)] * 8 >= 0.85 * SMS
    assert picks[(1, 8, 2048)] == 16 and split_plan(2048, 16, BLOCK_N)[0] == MIN_SPLIT_LEN == 128
    assert picks[(1, 2, 8192)] == 64 and split_plan(8192, 64, BLOCK_N)[0] == 128
    assert EFFICIENCY_FRACTION * MAX_SPLITS <= picks[(1, 1, 32768)] <= MAX_SPLITS
    assert picks[(8, 8, 8192)] == 2  # 64 CTAs -> 128 of 132 SMs


@pytest.mark.parametrize("batch, heads_kv", [(32, 8), (4, 32), (16, 8)])
def test_one_split_when_batch_and_heads_fill_the_sms(batch, heads_kv):
    assert decode_split_count(batch, heads_kv, 32768, SMS, BLOCK_N) == 1


@pytest.mark.parametrize("l_kv", [1, 100, 200, 255])
def test_short_contexts_are_not_split(l_kv):
    assert decode_split_count(1, 8, l_kv, SMS, BLOCK_N) == 1


def test_pick_is_the_smallest_within_85_percent_of_the_best():
    splits = decode_split_count(1, 8, 8192, SMS, BLOCK_N)
    candidates = {split_plan(8192, s, BLOCK_N)[1] for s in range(1, 33)}
    best = max(wave_efficiency(8 * s, SMS) for s in candidates)
    assert wave_efficiency(8 * splits, SMS) >= EFFICIENCY_FRACTION * best
    assert all(wave_efficiency(8 * s, SMS) < EFFICIENCY_FRACTION * best for s in candidates if s < splits)


def test_only_small_merges_are_fused():
    """The split kernel merges its splits itself only where each merging program reads at most
    MAX_FUSED_MERGE_BYTES of partials: llama3-8b B=8 (2 splits of 4 rows), not B=1's 16 splits."""
    assert fused_combine_for(2, 4, 1, 128) and 2 * 4 * 128 * 4 <= MAX_FUSED_MERGE_BYTES
    assert not fused_combine_for(16, 4, 1, 128)
    assert not fused_combine_for(1, 4, 1, 128)  # one split writes Out directly
    assert not fused_combine_for(2, 32, 1, 128)  # MQA: 32 rows per KV head


def test_merge_blocks_stay_within_the_register_budget():
    assert combine_block_s(128, 128) == 64 and combine_block_s(16, 128) == 16 and combine_block_s(57, 256) == 32
    assert combine_block_s(1, 64) == 1
    assert merge_block_s(16, 128) == 4 and merge_block_s(32, 128) == 2 and merge_block_s(64, 256) == 1


def test_max_splits_is_respected():
    assert decode_split_count(1, 1, 1 << 20, SMS, BLOCK_N, max_splits=16) <= 16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
@pytest.mark.parametrize("group, l_q", [(1, 1), (4, 1), (8, 1), (32, 1), (4, 16), (8, 16)])
def test_config_packs_rows_and_fits_shared_memory(dtype, head_dim, group, l_q):
    config = decode_config(head_dim, dtype, group, l_q)
    assert estimated_shared_bytes(config.block_m, config.block_n, head_dim, dtype,
                                  config.num_stages) <= SHARED_MEMORY_BUDGET
    assert config.block_m >= 16 and config.block_n >= 16
    packed = triton.next_power_of_2(group * l_q)
    if head_dim <= 128 and dtype != torch.float32:
        assert config.block_m >= packed  # one M tile: K/V read once per split


def test_sm90_table_was_measured_and_fits():
    table = tuning_table(90)
    assert table["arch"] == 90 and "H100" in table["measured_on"]
    for kernel, entries in (("attention_fwd", table["attention_fwd"]), ("decode_split", table["decode_split"])):
        for key, entry in entries.items():
            dtype, head_dim = getattr(torch, key.split("/")[0]), int(key.split("/")[1])
            block_m = entry.get("block_m", 16)
            assert estimated_shared_bytes(block_m, entry["block_n"], head_dim, dtype,
                                          entry["num_stages"]) <= SHARED_MEMORY_PER_BLOCK[90], (kernel, key)


def test_tuned_tiles_apply_on_their_arch_only():
    tuned = tuning_table(90)["attention_fwd"]["bfloat16/128"]
    on_h100 = attention_config(128, torch.bfloat16, 90)
    assert (on_h100.block_m, on_h100.block_n, on_h100.num_warps, on_h100.num_stages) == (
        tuned["block_m"], tuned["block_n"], tuned["num_warps"], tuned["num_stages"])
    # No table for sm_80, none without an arch: the default, which fits every arch.
    for config in (attention_config(128, torch.bfloat16, 80), attention_config(128, torch.bfloat16)):
        assert config != on_h100
        assert estimated_shared_bytes(config.block_m, config.block_n, 128, torch.bfloat16,
                                      config.num_stages) <= SHARED_MEMORY_BUDGET
    # Nor for an unmeasured dtype and head dim on sm_90.
    assert "float32/80" not in tuning_table(90)["attention_fwd"]
    assert attention_config(80, torch.float32, 90) == attention_config(80, torch.float32)


def test_tuned_decode_keeps_the_packed_rows():
    tuned = tuning_table(90)["decode_split"]["bfloat16/128"]
    for group in (4, 8, 32):
        config = decode_config(128, torch.bfloat16, group, 1, 90)
        assert config.block_m == max(16, group)  # all packed rows in one M tile
        assert (config.block_n, config.num_warps, config.num_stages) == (
            tuned["block_n"], tuned["num_warps"], tuned["num_stages"])
    assert decode_config(128, torch.bfloat16, 4, 1, 86) == decode_config(128, torch.bfloat16, 4, 1)


# --------------------------------------------------------------------------
# short contexts: shorter key blocks and splits until the splits fill the SMs


@pytest.mark.parametrize("heads_kv, l_kv, block_n, splits", [
    (8, 512, 32, 16),   # llama3-8b: 16 splits of 32 keys
    (8, 1024, 64, 16),  # 16 of 64
    (8, 2048, 128, 16),  # 16 of 128: already filled, the tuned block
    (1, 2048, 32, 64),  # MQA: as short as MIN_BLOCK_N allows
])
def test_short_contexts_get_short_blocks_and_splits(heads_kv, l_kv, block_n, splits):
    config, count = decode_launch(128, torch.bfloat16, 32 // heads_kv, 1, 1, heads_kv, l_kv, SMS, 90)
    assert (config.block_n, count) == (block_n, splits)
    assert split_plan(l_kv, count, config.block_n) == (l_kv // splits, splits)


@pytest.mark.parametrize("batch, heads_kv, l_kv", [(1, 8, 8192), (1, 8, 32768), (1, 1, 32768), (8, 8, 8192),
                                                    (1, 8, 200)])
def test_long_contexts_keep_the_tuned_block_and_split_count(batch, heads_kv, l_kv):
    tuned = decode_config(128, torch.bfloat16, 32 // heads_kv, 1, 90)
    config, count = decode_launch(128, torch.bfloat16, 32 // heads_kv, 1, batch, heads_kv, l_kv, SMS, 90)
    assert config == tuned
    assert count == decode_split_count(batch, heads_kv, l_kv, SMS, tuned.block_n)


def test_short_blocks_stop_at_the_minimum():
    config, count = decode_launch(128, torch.bfloat16, 32, 1, 1, 1, 512, SMS, 90)
    assert config.block_n == MIN_BLOCK_N and count == 512 // MIN_BLOCK_N


# --------------------------------------------------------------------------
# a tuned split cap (sm_90, D=256), raised to keep half the SMs busy


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads_q, heads_kv, l_kv, wave_rule, capped", [
    (16, 2, 8192, 64, 32),    # qwen3.5-moe: the cap
    (16, 2, 32768, 57, 32),
    (16, 1, 8192, 128, 64),   # MQA: 32 splits would be 32 CTAs, under half the SMs
    (16, 1, 32768, 128, 64),
    (8, 4, 32768, 29, 29),    # four KV heads: the wave rule's count is within the cap
    (16, 8, 8192, 15, 15),
])
def test_d256_decode_on_sm90_caps_its_splits(dtype, heads_q, heads_kv, l_kv, wave_rule, capped):
    config, count = decode_launch(256, dtype, heads_q // heads_kv, 1, 1, heads_kv, l_kv, SMS, 90)
    assert count == capped
    assert decode_split_count(1, heads_kv, l_kv, SMS, config.block_n, min_split_len=config.block_n) == wave_rule
    cap = decode_split_cap(256, dtype, heads_kv, SMS, 90)
    assert count == min(wave_rule, split_plan(l_kv, cap, config.block_n)[1])


def test_split_cap_applies_where_the_table_sets_one():
    assert tuning_table(90)["decode_split"]["bfloat16/256"]["max_splits"] == 32
    assert decode_split_cap(256, torch.bfloat16, 2, SMS, 90) == 33  # half of 132 SMs over 2 CTAs a split
    assert decode_split_cap(256, torch.bfloat16, 8, SMS, 90) == 32
    # D=128 has no cap on sm_90; no arch has a table but sm_90.
    assert decode_split_cap(128, torch.bfloat16, 1, SMS, 90) is None
    assert decode_split_cap(256, torch.bfloat16, 2, SMS, 80) is None
    assert decode_split_cap(256, torch.bfloat16, 2, SMS) is None


# --- Linear layers -------------------------------------------------------------------------------------------

# llama3.2-1b's decode linears: (n, k, gated); lm_head is 128256 wide.
LLAMA_1B_LINEARS = [(3072, 2048, False), (2048, 2048, False), (8192, 2048, True), (2048, 8192, False),
                    (128256, 2048, False)]


@pytest.mark.parametrize("m_max, kind", [(1, "gemv"), (4, "gemv"), (GEMV_MAX_M, "gemv"), (GEMV_MAX_M + 1, "gemm"),
                                         (512, "gemm")])
def test_linear_kind_takes_the_gemv_up_to_its_row_limit(m_max, kind):
    assert linear_kind(m_max) == kind


@pytest.mark.parametrize("m", [1, 4, 8])
@pytest.mark.parametrize("n, k, gated", LLAMA_1B_LINEARS)
def test_gemv_tiles_stream_whole_vectors_from_enough_programs(m, n, k, gated):
    config = linear_config("gemv", m, n, k, torch.bfloat16, 90, gated=gated)
    vector = 8  # bf16 elements in 16 bytes
    assert config.block_m >= m and config.split_k == 1
    assert config.block_k % vector == 0 and k % config.block_k == 0
    assert config.block_n * config.block_k >= 32 * config.num_warps * vector  # a whole vector per thread
    accumulators = 2 if gated else 1
    assert accumulators * config.block_m * config.block_n * config.block_k <= GEMV_ACC_ELEMENTS
    assert linear_grid("gemv", m, n, config)[0] >= GEMV_MIN_PROGRAMS  # every SM has several programs
    assert linear_grid("gemv", m, n, config)[1] == 1  # one program reads its W rows for all m rows


def test_gemv_decode_picks():
    """M = 1: 1024-wide K blocks (4 warps of 16-byte vectors), 4 rows a program (2 per gate and up)."""
    assert linear_config("gemv", 1, 2048, 2048, torch.bfloat16, 90) == LinearConfig(1, 4, 1024, 4, 1)
    assert linear_config("gemv", 1, 8192, 2048, torch.bfloat16, 90, gated=True) == LinearConfig(1, 2, 1024, 4, 1)
    assert linear_config("gemv", 1, 2048, 2048, torch.float32, 90).block_k == 512  # 4 fp32 a vector
    narrow = linear_config("gemv", 1, 256, 512, torch.bfloat16, 90, gated=True)
    assert narrow.num_warps * 32 * 8 <= narrow.block_n * narrow.block_k  # fewer warps, loads still 16 bytes


@pytest.mark.parametrize("arch", [None, 80, 86, 90])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("gated", [False, True])
def test_gemm_tiles_fit_shared_memory_and_tensor_cores(arch, dtype, gated):
    config = linear_config("gemm", 512, 2048, 2048, dtype, arch, gated=gated)
    assert min(config.block_m, config.block_n, config.block_k) >= 16
    assert linear_gemm_shared_bytes(config, dtype, gated) <= SHARED_MEMORY_BUDGET
    assert config.num_stages >= 2  # loads of the next K block overlap the dot


def test_gemm_tiles_shrink_to_the_rows_there_are():
    assert linear_config("gemm", 17, 2048, 2048, torch.bfloat16, 90).block_m == 32
    assert linear_config("gemm", 4096, 2048, 2048, torch.bfloat16, 90).block_m == 128


@pytest.mark.parametrize("m, n", [(512, 2048), (512, 3072), (128, 2048), (4096, 2048), (512, 128256)])
def test_gemm_tiles_shrink_to_fill_the_sms(m, n):
    config = linear_config("gemm", m, n, 2048, torch.bfloat16, 90)
    programs = linear_grid("gemm", m, n, config)
    if config.block_m > 64 or config.block_n > 64:  # tiles stay big where that already fills the SMs
        assert programs[0] * programs[1] >= SMS
    if (m, n) in ((4096, 2048), (512, 128256)):
        assert (config.block_m, config.block_n) == (128, 128)


def test_linear_grids_cover_the_output():
    gemv = LinearConfig(4, 8, 256, 4, 1)
    assert linear_grid("gemv", 3, 40, gemv) == (5, 1, 1)
    assert linear_grid("gemv", 5, 40, gemv) == (5, 2, 1)  # more rows than BLOCK_M: another row block
    gemm = LinearConfig(64, 128, 64, 4, 3)
    assert linear_grid("gemm", 130, 300, gemm) == (3, 3, 1)


def test_linear_table_key_buckets_sizes_to_powers_of_two():
    assert linear_table_key(1, 3072, 2048, torch.bfloat16) == "bfloat16/m1/n4096/k2048"
    assert linear_table_key(3, 8192, 2048, torch.float16, gated=True) == "float16/m4/n8192/k2048/gated"


def test_tuned_linear_tiles_apply_on_their_arch_and_bucket_only(monkeypatch):
    tuned = {"block_m": 1, "block_n": 8, "block_k": 512, "num_warps": 8, "num_stages": 2}
    huge = {"block_m": 256, "block_n": 256, "block_k": 128, "num_warps": 8, "num_stages": 4}
    table = {"linear_gemv": {"bfloat16/m1/n2048/k2048": tuned}, "linear_gemm": {"bfloat16/m512/n2048/k2048": huge}}
    monkeypatch.setattr(heuristics, "tuning_table", lambda arch: table if arch == 90 else {})
    assert linear_config("gemv", 1, 2048, 2048, torch.bfloat16, 90) == LinearConfig(1, 8, 512, 8, 2)
    assert linear_config("gemv", 1, 1900, 2048, torch.bfloat16, 90) == LinearConfig(1, 8, 512, 8, 2)  # same bucket
    assert linear_config("gemv", 1, 2048, 2048, torch.bfloat16, 80) != LinearConfig(1, 8, 512, 8, 2)
    assert linear_config("gemv", 1, 2048, 2048, torch.bfloat16, None) != LinearConfig(1, 8, 512, 8, 2)
    assert linear_config("gemv", 1, 4096, 2048, torch.bfloat16, 90) != LinearConfig(1, 8, 512, 8, 2)
    # A tuned GEMM tile beyond the arch's shared memory is not taken.
    assert linear_config("gemm", 512, 2048, 2048, torch.bfloat16, 90) == \
        linear_config("gemm", 512, 2048, 2048, torch.bfloat16, None)


@pytest.mark.parametrize("call, message", [
    (lambda: linear_kind(0), "at least one row"),
    (lambda: linear_config("gemv", GEMV_MAX_M + 1, 64, 64, torch.bfloat16), "takes up to 8 rows"),
    (lambda: linear_config("matmul", 1, 64, 64, torch.bfloat16), "linear kind 'matmul'"),
    (lambda: linear_config("gemm", 16, 0, 64, torch.bfloat16), "must be positive"),
])
def test_bad_linear_problems_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
