"""gqa_attention_fwd matches a float32 reference (CPU, under TRITON_INTERPRET=1), every feature."""

import pytest

from interpreter import assert_close, run_cases

SHAPE = dict(kernel="fwd", batch=1, heads_q=4, heads_kv=2, head_dim=64, l_q=24, l_kv=24, dtype="float16")
CASES = {
    "gqa-2to1": dict(SHAPE, causal=False),
    "gqa-causal-square": dict(SHAPE, causal=True),
    "mqa": dict(SHAPE, heads_q=4, heads_kv=1, causal=False),
    "mha": dict(SHAPE, heads_q=2, heads_kv=2, causal=True),
    "batch-2": dict(SHAPE, batch=2, causal=True),
    "decode-bottom-right": dict(SHAPE, l_q=1, l_kv=37, causal=True),
    "chunk-bottom-right": dict(SHAPE, l_q=5, l_kv=19, causal=True),
    # PyTorch's is_causal with L_q < L_kv (top-left) as the AOT stage runs it:
    # bottom-right causal over the first L_q keys.
    "pytorch-top-left-causal": dict(SHAPE, l_q=20, l_kv=45, causal=True, top_left_causal=True),
    # More queries than keys: the first rows see no key and must be zeros.
    "lq-over-lkv-causal": dict(SHAPE, l_q=20, l_kv=7, causal=True),
    "ragged-lengths": dict(SHAPE, l_q=17, l_kv=29, causal=False),
    "head-dim-80-padded": dict(SHAPE, head_dim=80, causal=True),
    "head-dim-48-padded": dict(SHAPE, head_dim=48, causal=False),
    "explicit-scale": dict(SHAPE, scale=0.3, causal=False),
    "bshd-strided": dict(SHAPE, bshd=True, causal=True),
    "fp32": dict(SHAPE, causal=True, dtype="float32"),
    # Masks: broadcast over heads, per head, 2-D; rows hidden entirely give zeros.
    "bool-mask-b1qk": dict(SHAPE, l_q=20, l_kv=37, causal=False, mask="bool", mask_shape="B1QK", batch=2,
                           hidden_rows=[0, 13]),
    "bool-mask-bhqk": dict(SHAPE, l_q=20, l_kv=37, causal=False, mask="bool", mask_shape="BHQK", hidden_rows=[5]),
    "bool-mask-qk": dict(SHAPE, l_q=20, l_kv=37, causal=False, mask="bool", mask_shape="QK"),
    "additive-mask-b1qk": dict(SHAPE, l_q=20, l_kv=37, causal=False, mask="additive", mask_shape="B1QK",
                               hidden_rows=[2]),
    "additive-fp32-mask-bhqk": dict(SHAPE, l_q=20, l_kv=37, causal=False, mask="additive", mask_shape="BHQK",
                                    mask_dtype="float32"),
    "key-padding-mask-b11k": dict(SHAPE, l_q=20, l_kv=37, causal=False, mask="bool", mask_shape="B11K", batch=2),
    # Sliding window (Mistral/Gemma local layers), with and without causal.
    "window-causal": dict(SHAPE, l_q=50, l_kv=50, causal=True, window_left=9),
    "window-causal-chunk": dict(SHAPE, l_q=20, l_kv=61, causal=True, window_left=16),
    "window-zero-sees-diagonal-only": dict(SHAPE, l_q=20, l_kv=20, causal=True, window_left=0),
    "window-noncausal": dict(SHAPE, l_q=30, l_kv=30, causal=False, window_left=5),
    "softcap": dict(SHAPE, causal=True, softcap=2.0, scale=1.0, dtype="float32"),
    "softcap-window-mask": dict(SHAPE, l_q=20, l_kv=40, causal=False, softcap=30.0, window_left=12,
                                mask="bool", mask_shape="B1QK"),
    # kv_len on the device: only the filled keys exist; causal aligns to them.
    "kv-len-int32": dict(SHAPE, l_q=20, l_kv=64, causal=True, kv_len=41),
    "kv-len-int64-noncausal": dict(SHAPE, l_q=20, l_kv=64, causal=False, kv_len=23, kv_len_dtype="int64"),
    "kv-len-zero": dict(SHAPE, l_q=20, l_kv=64, causal=False, kv_len=0),
    "kv-len-over-l-kv": dict(SHAPE, l_q=20, l_kv=30, causal=True, kv_len=1000),
}


@pytest.fixture(scope="module")
def results():
    return run_cases(CASES)


@pytest.mark.parametrize("name", CASES)
def test_matches_float32_reference(results, name):
    assert_close(results[name], CASES[name]["dtype"])
