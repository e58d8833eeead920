"""gqa_decode_split + gqa_decode_combine match a float32 reference (CPU, under TRITON_INTERPRET=1)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

GQA = dict(batch=1, heads_q=8, heads_kv=2, head_dim=64)  # 4:1
MQA = dict(batch=1, heads_q=8, heads_kv=1, head_dim=64)  # 8:1
MHA = dict(batch=1, heads_q=2, heads_kv=2, head_dim=64)
# splits: the requested count; split_plan rounds SPLIT_LEN up to a multiple of
# BLOCK_N (16 here) and launches cdiv(L_kv, SPLIT_LEN). L_kv values are not
# multiples of BLOCK_N nor of SPLIT_LEN.
CASES = {
    "gqa-decode-split": dict(GQA, l_q=1, l_kv=45, causal=False, splits=3),
    "gqa-decode-causal-split": dict(GQA, l_q=1, l_kv=43, causal=True, splits=3),
    "gqa-decode-single-launch": dict(GQA, l_q=1, l_kv=37, causal=True, splits=1),
    # Row 0 sees keys <= 31: the last split [32, 35) holds no key it may see.
    "gqa-lq4-causal-empty-split-for-row": dict(GQA, l_q=4, l_kv=35, causal=True, splits=3),
    "gqa-lq4-single-launch": dict(GQA, l_q=4, l_kv=29, causal=True, splits=1),
    "gqa-lq4-noncausal": dict(GQA, l_q=4, l_kv=45, causal=False, splits=2),
    # PyTorch's is_causal with L_q < L_kv (top-left) as the AOT stage runs it:
    # bottom-right causal over the first L_q keys, one split.
    "gqa-lq4-pytorch-top-left-causal": dict(GQA, l_q=4, l_kv=45, causal=True, splits=1, top_left_causal=True),
    "mqa-decode-split": dict(MQA, l_q=1, l_kv=45, causal=True, splits=2),
    "mqa-lq4-causal-split": dict(MQA, l_q=4, l_kv=45, causal=True, splits=2),
    "mqa-single-launch": dict(MQA, l_q=4, l_kv=21, causal=False, splits=1),
    "mha-lq4-causal-split": dict(MHA, l_q=4, l_kv=61, causal=True, splits=4),
    "mha-decode-single-launch": dict(MHA, l_q=1, l_kv=19, causal=False, splits=1),
    "head-dim-80-split": dict(GQA, head_dim=80, l_q=4, l_kv=41, causal=True, splits=2),
    "head-dim-80-single-launch": dict(GQA, head_dim=80, l_q=1, l_kv=23, causal=False, splits=1),
    "fp32-split": dict(GQA, l_q=4, l_kv=35, causal=True, splits=3),
    "fp32-single-launch": dict(GQA, l_q=1, l_kv=30, causal=False, splits=1),
    # One launched split lies past L_kv: it records no key and weighs nothing.
    "split-past-the-end": dict(GQA, l_q=1, l_kv=33, causal=False, splits=3, extra_splits=1),
    # More queries than keys: rows 0-1 see no key in any split and must be 0.
    "lq-over-lkv-split": dict(GQA, l_q=4, l_kv=2, causal=True, splits=1, extra_splits=1),
    "lq-over-lkv-single-launch": dict(GQA, l_q=4, l_kv=2, causal=True, splits=1),
    # Seven splits merged four at a time: the combine's online merge across blocks.
    "many-splits-blocked-combine": dict(GQA, l_q=1, l_kv=100, causal=True, splits=7, block_s=4),
    # 32 packed rows in tiles of 16: the M-tile fallback, causal per tile.
    "m-tiles": dict(GQA, l_q=4, heads_q=16, heads_kv=2, l_kv=40, causal=True, splits=2, block_m=16),
    "batch-2-bshd-strided": dict(GQA, batch=2, l_q=4, l_kv=39, causal=True, splits=2, bshd=True),
    "explicit-scale": dict(GQA, l_q=1, l_kv=40, causal=False, splits=2, scale=0.3),
}
# bf16 runs on the GPU only (test_attention_decode_gpu.py): Triton 3.9's
# interpreter computes tl.dot on bf16 operands wrongly.
DTYPES = {"fp32-split": "float32", "fp32-single-launch": "float32"}
TOLERANCE = {"float16": 2e-3, "float32": 1e-4}


@pytest.fixture(scope="module")
def results():
    cases = [dict(case, id=name, dtype=DTYPES.get(name, "float16")) for name, case in CASES.items()]
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("interpret_decode.py"))],
                            input=json.dumps(cases), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}


@pytest.mark.parametrize("name", CASES)
def test_matches_float32_reference(results, name):
    err = results[name]["max_abs_err"]
    tolerance = TOLERANCE[DTYPES.get(name, "float16")]
    assert not math.isnan(err) and err <= tolerance, f"{name}: max abs error {err:.2e}"


def test_cases_cover_both_paths(results):
    launched = {name: r["splits"] for name, r in results.items()}
    assert launched["gqa-decode-single-launch"] == 1 and launched["gqa-lq4-single-launch"] == 1
    assert launched["gqa-decode-split"] == 3 and launched["many-splits-blocked-combine"] == 7
    assert launched["split-past-the-end"] == 4
