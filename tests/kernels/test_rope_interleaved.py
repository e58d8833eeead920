"""rope_cache_write with INTERLEAVED does what ExecuTorch llama's apply_rotary_emb does (pairs (x[2j], x[2j+1])
turned by angle j, tables [S, D/2]) and writes k/v into [S, H_kv, D] caches (ExecuTorch's [B, S, H, D]
layout, through the cache strides), under TRITON_INTERPRET=1.

The reference is the executorch wheel's own apply_rotary_emb and precompute_freqs_cis.
"""

import pytest

from interpreted import run_interpreted

pytest.importorskip("executorch.examples.models.llama.rope")

SCRIPT = """
from executorch.examples.models.llama.rope import apply_rotary_emb, precompute_freqs_cis
from cuda_gqa.backends.aot.rope_cache_write import rope_cache_write_grid
from cuda_gqa.backends.kernels.rope_cache_write import rope_cache_write

H, H_KV, S = 4, 2, 16
TOLERANCE = {"float32": 1e-5, "float16": 4e-3}

def run(case):
    dtype = getattr(torch, case["dtype"])
    l, start, D = case["l"], case["start"], case["head_dim"]
    cos, sin = precompute_freqs_cis(D, S)  # [S, D/2] float32
    torch.manual_seed(0)
    qkv = torch.randn(l, (H + 2 * H_KV) * D).to(dtype)
    k_cache = torch.randn(S, H_KV, D).to(dtype)  # [S, H_kv, D]: batch 1 of ExecuTorch's cache
    v_cache = torch.randn(S, H_KV, D).to(dtype)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    q_out = torch.full((H, l, D), float("nan"), dtype=dtype)
    kv_len = torch.full((1,), -7, dtype=torch.int32)
    rope_cache_write[rope_cache_write_grid(l, H, H_KV)](
        qkv, cos, sin, torch.tensor([start]), None, None, q_out, k_cache, v_cache, kv_len,
        l, S, 0.0, qkv.stride(0), q_out.stride(0), q_out.stride(1), k_cache.stride(1), k_cache.stride(0),
        HEADS_Q=H, HEADS_KV=H_KV, HEAD_DIM=D, BLOCK_D=1 << (D - 1).bit_length(), QK_NORM=False, NORM_OFFSET=0.0,
        INTERLEAVED=True)
    q, k, v = qkv.split([H * D, H_KV * D, H_KV * D], dim=-1)
    q_ref, k_ref = apply_rotary_emb(q.reshape(1, l, H, D), k.reshape(1, l, H_KV, D), cos[start:start + l],
                                    sin[start:start + l])
    tol = TOLERANCE[case["dtype"]]
    def worst(got, expected):
        return float(((got.double() - expected.double()).abs() / (tol + tol * expected.double().abs())).max())
    rows = slice(start, start + l)
    others = torch.ones(S, dtype=torch.bool)
    others[rows] = False
    return {
        "q_worst": worst(q_out.transpose(0, 1), q_ref[0]),
        "k_worst": worst(k_cache[rows], k_ref[0]),
        "v_equal": torch.equal(v_cache[rows], v.reshape(l, H_KV, D)),
        "other_rows_untouched": torch.equal(k_cache[others], k_before[others])
                                and torch.equal(v_cache[others], v_before[others]),
        "kv_len": int(kv_len.item()),
    }
"""

CASES = {
    "prefill-fp32": dict(dtype="float32", start=0, l=5, head_dim=32),
    "decode-fp16": dict(dtype="float16", start=9, l=1, head_dim=32),
    "chunk-padded-head-dim-48": dict(dtype="float32", start=3, l=3, head_dim=48),
}


@pytest.fixture(scope="module")
def results():
    return run_interpreted(SCRIPT, CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_executorch_apply_rotary_emb(results, name):
    case, got = CASES[name], results[name]
    assert got["q_worst"] <= 1.0, f"rotated q off by {got['q_worst']:.2f}x the tolerance"
    assert got["k_worst"] <= 1.0, f"cached k off by {got['k_worst']:.2f}x the tolerance"
    assert got["v_equal"], "v rows are copied exactly into the [S, H_kv, D] cache"
    assert got["other_rows_untouched"], "cache rows outside start .. start + L - 1 changed"
    assert got["kv_len"] == case["start"] + case["l"]


def test_the_plan_reference_turns_pairs_as_executorch_does():
    # backends/model/reference.py's interleaved rope (x [B, H, L, D], tables [L, D/2]) against the wheel's.
    import torch
    from executorch.examples.models.llama.rope import apply_rotary_emb, precompute_freqs_cis

    from cuda_gqa.backends.model.reference import _rope_interleaved

    cos, sin = precompute_freqs_cis(16, 8)
    x = torch.randn(1, 3, 5, 16, generator=torch.Generator().manual_seed(0))  # [B, H, L, D]
    expected, _ = apply_rotary_emb(x.transpose(1, 2), x.transpose(1, 2), cos[2:7], sin[2:7])
    torch.testing.assert_close(_rope_interleaved(x, cos[2:7], sin[2:7]), expected.transpose(1, 2))
