"""gqa_decode_split + gqa_decode_combine match a float32 reference (CPU, under TRITON_INTERPRET=1)."""

import pytest

from interpreter import assert_close, run_cases

GQA = dict(kernel="decode", batch=1, heads_q=8, heads_kv=2, head_dim=64, dtype="float16")  # 4:1
MQA = dict(GQA, heads_q=8, heads_kv=1)  # 8:1
MHA = dict(GQA, heads_q=2, heads_kv=2)
# splits: the requested count; split_plan caps it so no split is shorter than
# BLOCK_N (16 here). L_kv values are not multiples of BLOCK_N.
CASES = {
    "gqa-decode-split": dict(GQA, l_q=1, l_kv=45, causal=False, splits=3),
    "gqa-decode-causal-split": dict(GQA, l_q=1, l_kv=43, causal=True, splits=3),
    "gqa-decode-single-launch": dict(GQA, l_q=1, l_kv=37, causal=True, splits=1),
    # Row 0 sees keys <= 31: the last split holds no key it may see.
    "gqa-lq4-causal-empty-split-for-row": dict(GQA, l_q=4, l_kv=35, causal=True, splits=3),
    "gqa-lq4-single-launch": dict(GQA, l_q=4, l_kv=29, causal=True, splits=1),
    "gqa-lq4-noncausal": dict(GQA, l_q=4, l_kv=45, causal=False, splits=2),
    "gqa-lq4-pytorch-top-left-causal": dict(GQA, l_q=4, l_kv=45, causal=True, splits=2, top_left_causal=True),
    "mqa-decode-split": dict(MQA, l_q=1, l_kv=45, causal=True, splits=2),
    "mqa-lq4-causal-split": dict(MQA, l_q=4, l_kv=45, causal=True, splits=2),
    "mqa-single-launch": dict(MQA, l_q=4, l_kv=21, causal=False, splits=1),
    "mha-lq4-causal-split": dict(MHA, l_q=4, l_kv=61, causal=True, splits=4),
    "mha-decode-single-launch": dict(MHA, l_q=1, l_kv=19, causal=False, splits=1),
    "head-dim-80-split": dict(GQA, head_dim=80, l_q=4, l_kv=41, causal=True, splits=2),
    "head-dim-80-single-launch": dict(GQA, head_dim=80, l_q=1, l_kv=23, causal=False, splits=1),
    "fp32-split": dict(GQA, l_q=4, l_kv=35, causal=True, splits=3, dtype="float32"),
    "fp32-single-launch": dict(GQA, l_q=1, l_kv=30, causal=False, splits=1, dtype="float32"),
    # More queries than keys: rows 0-1 see no key in any split and must be 0.
    "lq-over-kv-len-split": dict(GQA, l_q=4, l_kv=40, causal=True, splits=2, kv_len=2),
    "lq-over-lkv-single-launch": dict(GQA, l_q=4, l_kv=2, causal=True, splits=1),
    # Seven splits merged four at a time: the combine's online merge across blocks.
    "many-splits-blocked-combine": dict(GQA, l_q=1, l_kv=112, causal=True, splits=7, block_s=4),
    # 32 packed rows in tiles of 16: the M-tile fallback, causal per tile.
    "m-tiles": dict(GQA, l_q=4, heads_q=16, heads_kv=2, l_kv=40, causal=True, splits=2, block_m=16),
    "batch-2-bshd-strided": dict(GQA, batch=2, l_q=4, l_kv=39, causal=True, splits=2, bshd=True),
    "explicit-scale": dict(GQA, l_q=1, l_kv=40, causal=False, splits=2, scale=0.3),
    # kv_len: the grid is planned for L_kv; the filled keys are divided among the splits.
    "kv-len-splits": dict(GQA, l_q=1, l_kv=200, causal=True, splits=4, kv_len=77),
    "kv-len-fewer-keys-than-splits": dict(GQA, l_q=2, l_kv=200, causal=True, splits=4, kv_len=9,
                                          kv_len_dtype="int64"),
    "kv-len-single-launch": dict(GQA, l_q=1, l_kv=64, causal=False, splits=1, kv_len=50),
    "kv-len-zero": dict(GQA, l_q=1, l_kv=64, causal=True, splits=2, kv_len=0),
    # Masks over the packed rows, window, soft-cap.
    "bool-mask-bhqk-split": dict(GQA, batch=2, l_q=3, l_kv=50, causal=False, splits=2, mask="bool",
                                 mask_shape="BHQK", hidden_rows=[1]),
    "bool-mask-b1qk-single": dict(GQA, l_q=2, l_kv=30, causal=False, splits=1, mask="bool", mask_shape="B1QK"),
    "additive-mask-b11k-split": dict(GQA, l_q=1, l_kv=60, causal=False, splits=3, mask="additive",
                                     mask_shape="B11K", hidden_rows=[0]),
    "window-split": dict(GQA, l_q=2, l_kv=90, causal=True, splits=3, window_left=20),
    "window-kv-len-split": dict(GQA, l_q=1, l_kv=128, causal=True, splits=3, window_left=30, kv_len=100),
    "softcap-split": dict(GQA, l_q=1, l_kv=50, causal=True, splits=2, softcap=3.0, scale=1.0, dtype="float32"),
    # Fused: the last split program of each (batch, KV head, M tile) merges in the split kernel.
    "fused-gqa-decode": dict(GQA, l_q=1, l_kv=45, causal=False, splits=3, fused=True),
    # Five splits whose log-sum-exps are read two at a time (MERGE_BLOCK_S for 64 rows x 64 dims), batch 2.
    "fused-many-splits-batch-2": dict(GQA, batch=2, l_q=1, l_kv=80, causal=True, splits=5, fused=True,
                                      block_m=64),
    "fused-mqa-lq4-causal": dict(MQA, l_q=4, l_kv=45, causal=True, splits=2, fused=True),
    # Rows 0-1 see no key in any split; kv_len leaves splits with no key at all.
    "fused-lq-over-kv-len": dict(GQA, l_q=4, l_kv=40, causal=True, splits=2, kv_len=2, fused=True),
    "fused-kv-len-fewer-keys-than-splits": dict(GQA, l_q=2, l_kv=200, causal=True, splits=4, kv_len=9,
                                                fused=True),
    "fused-kv-len-zero": dict(GQA, l_q=1, l_kv=64, causal=True, splits=2, kv_len=0, fused=True),
    "fused-m-tiles": dict(GQA, l_q=4, heads_q=16, heads_kv=2, l_kv=40, causal=True, splits=2, block_m=16,
                          fused=True),
    "fused-bool-mask-bhqk": dict(GQA, batch=2, l_q=3, l_kv=50, causal=False, splits=2, mask="bool",
                                 mask_shape="BHQK", hidden_rows=[1], fused=True),
    "fused-additive-mask-window": dict(GQA, l_q=2, l_kv=90, causal=True, splits=3, window_left=20,
                                       mask="additive", mask_shape="B11K", fused=True),
    "fused-head-dim-80-fp32": dict(GQA, head_dim=80, l_q=2, l_kv=41, causal=True, splits=2, fused=True,
                                   dtype="float32"),
}


@pytest.fixture(scope="module")
def results():
    return run_cases(CASES)


@pytest.mark.parametrize("name", CASES)
def test_matches_float32_reference(results, name):
    assert_close(results[name], CASES[name]["dtype"])


def test_cases_cover_both_paths(results):
    launched = {name: r["splits"] for name, r in results.items()}
    assert launched["gqa-decode-single-launch"] == 1 and launched["gqa-lq4-single-launch"] == 1
    assert launched["gqa-decode-split"] == 3 and launched["many-splits-blocked-combine"] == 7
    assert launched["kv-len-fewer-keys-than-splits"] == 4 and launched["lq-over-kv-len-split"] == 2
    assert launched["fused-many-splits-batch-2"] == 5 and launched["fused-kv-len-fewer-keys-than-splits"] == 4


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.get("fused")])
def test_fused_merge_leaves_arrival_counters_zero(results, name):
    # Two launches ran on one workspace: the second relied on the first having reset them.
    assert results[name]["arrivals_left"] == 0
