"""rope_cache_write does what export/llm/decoder.py's Attention does to q, k and v (q/k norm, rotate-half
RoPE, index_copy_ into the caches at input_pos onwards) and stores kv_len, under TRITON_INTERPRET=1.

The reference is the decoder itself: a one-layer Decoder's attention runs its
own forward on the same projections, and the q it hands to SDPA and the
caches it leaves are what the kernel must produce.
"""

import pytest

from interpreted import run_interpreted

SCRIPT = """
from torch.nn import functional as F
from cuda_gqa.backends.aot.rope_cache_write import rope_cache_write_grid
from cuda_gqa.backends.kernels.rope_cache_write import rope_cache_write
from cuda_gqa.export.llm.decoder import Decoder, DecoderConfig

H, H_KV, S, HIDDEN, EPS = 4, 2, 16, 24, 1e-6
# The kernel rotates in float32 once; the decoder rounds after each op in its dtype.
TOLERANCE = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}

def decoder_attention(case, dtype, D):
    config = DecoderConfig(vocab_size=8, hidden_size=HIDDEN, intermediate_size=8, num_layers=1, num_heads=H,
                           num_kv_heads=H_KV, head_dim=D, rms_norm_eps=EPS, qk_norm=case["qk_norm"],
                           norm_weight_offset=case["offset"])
    torch.manual_seed(0)
    model = Decoder(config, max_seq_len=S, dtype=dtype)
    attn = model.layers[0].self_attn
    with torch.no_grad():
        if case["qk_norm"]:
            attn.q_norm.weight.normal_(0.0, 0.5)
            attn.k_norm.weight.normal_(0.0, 0.5)
        attn.k_cache.normal_()  # rows the call must leave as they are
        attn.v_cache.normal_()
    return model, attn

def decoder_step(model, attn, x, start):
    # The decoder's own forward on the rows inside the cache; returns the q it gives SDPA.
    inside = max(0, min(x.shape[1], S - start))
    captured = {}
    sdpa = F.scaled_dot_product_attention
    def capture(q, *args, **kwargs):
        captured["q"] = q
        return sdpa(q, *args, **kwargs)
    F.scaled_dot_product_attention = capture
    try:
        if inside:
            positions = start + torch.arange(inside)
            with torch.no_grad():
                attn(x[:, :inside], positions, model.rope_cos[positions], model.rope_sin[positions],
                     model.attention_mask(positions, None))
    finally:
        F.scaled_dot_product_attention = sdpa
    return captured.get("q"), inside

def run(case):
    dtype = getattr(torch, case["dtype"])
    l, start = case["l"], case["start"]
    D = case.get("head_dim", 32)
    model, attn = decoder_attention(case, dtype, D)
    k_cache, v_cache = attn.k_cache[0].clone(), attn.v_cache[0].clone()  # the kernel's caches, [H_kv, S, D]
    k_before = k_cache.clone()
    x = torch.randn(1, l, HIDDEN).to(dtype)
    inside = max(0, min(l, S - start))
    with torch.no_grad():  # rows inside / past the cache projected apart, as decoder_step projects the former
        qkv = torch.cat([torch.cat([attn.q_proj(part), attn.k_proj(part), attn.v_proj(part)], dim=-1)[0]
                         for part in (x[:, :inside], x[:, inside:])])
    width = qkv.shape[1]
    qkv = torch.cat([qkv, torch.zeros(l, 16, dtype=dtype)], dim=1)[:, :width]  # row stride != width
    q_out = torch.full((H, l, D), float("nan"), dtype=dtype)
    kv_len = torch.full((1,), -7, dtype=torch.int32)
    input_pos = torch.tensor([start], dtype=getattr(torch, case["position_dtype"]))
    norms = (attn.q_norm.weight, attn.k_norm.weight) if case["qk_norm"] else (None, None)
    rope_cache_write[rope_cache_write_grid(l, H, H_KV)](
        qkv, model.rope_cos, model.rope_sin, input_pos, *norms, q_out, k_cache, v_cache, kv_len,
        l, S, EPS, qkv.stride(0), q_out.stride(0), q_out.stride(1), k_cache.stride(0), k_cache.stride(1),
        HEADS_Q=H, HEADS_KV=H_KV, HEAD_DIM=D, BLOCK_D=1 << (D - 1).bit_length(), QK_NORM=case["qk_norm"], NORM_OFFSET=case["offset"])

    q_expected, inside = decoder_step(model, attn, x, start)
    tol = TOLERANCE[case["dtype"]]
    def worst(got, expected):
        return float(((got.double() - expected.double()).abs() / (tol + tol * expected.double().abs())).max())
    written = slice(start, start + inside)
    untouched = torch.ones(S, dtype=torch.bool)
    untouched[written] = False
    return {
        "q_worst": worst(q_out[:, :inside], q_expected[0]) if inside else 0.0,
        "q_rows_past_cache_untouched": bool(q_out[:, inside:].isnan().all()),
        "k_worst": worst(k_cache[:, written], attn.k_cache[0, :, written]) if inside else 0.0,
        "k_other_rows_untouched": torch.equal(k_cache[:, untouched], k_before[:, untouched]),
        "v_equal": torch.equal(v_cache, attn.v_cache[0]),
        "rows_written": inside,
        "kv_len": int(kv_len.item()),
    }
"""

CASES = {  # S = 16; kv_len = clamp(start + L, 0, S)
    "prefill-llama-fp32": dict(dtype="float32", position_dtype="int64", start=0, l=5, qk_norm=False, offset=0.0),
    "prefill-chunk-fp16-int32": dict(dtype="float16", position_dtype="int32", start=3, l=4, qk_norm=False,
                                     offset=0.0),
    "decode-qwen3-qk-norm": dict(dtype="float32", position_dtype="int32", start=9, l=1, qk_norm=True, offset=0.0),
    "decode-gemma3-bf16": dict(dtype="bfloat16", position_dtype="int64", start=7, l=1, qk_norm=True, offset=1.0),
    "prefill-qk-norm-offset": dict(dtype="float32", position_dtype="int64", start=2, l=3, qk_norm=True, offset=1.0),
    "padded-head-dim-48": dict(dtype="float16", position_dtype="int64", start=5, l=2, qk_norm=True, offset=1.0,
                               head_dim=48),
    "rows-past-the-cache-skipped": dict(dtype="float32", position_dtype="int64", start=14, l=4, qk_norm=False,
                                        offset=0.0),
    "decode-past-the-cache": dict(dtype="float32", position_dtype="int32", start=16, l=1, qk_norm=True, offset=0.0),
}
ROWS_WRITTEN = {"rows-past-the-cache-skipped": 2, "decode-past-the-cache": 0}


@pytest.fixture(scope="module")
def results():
    return run_interpreted(SCRIPT, CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_decoders_attention(results, name):
    case, got = CASES[name], results[name]
    assert got["rows_written"] == ROWS_WRITTEN.get(name, case["l"])
    assert got["q_worst"] <= 1.0, f"rotated q off by {got['q_worst']:.2f}x the tolerance"
    assert got["k_worst"] <= 1.0, f"cached k off by {got['k_worst']:.2f}x the tolerance"
    assert got["v_equal"], "V cache differs from the decoder's (v rows are copied exactly)"
    assert got["k_other_rows_untouched"], "K cache rows outside input_pos .. input_pos + L - 1 changed"
    assert got["q_rows_past_cache_untouched"], "a q row of a position past the cache was written"
    assert got["kv_len"] == min(case["start"] + case["l"], 16)
