"""Every kernel feature on the GPU (Triton JIT) against the float32 reference: odd lengths, every
supported head dim, masks that hide every key from some rows, window, soft-cap, device kv_len."""

import pytest
import torch

from cuda_gqa.backends.kernels.jit_launch import attention
from cuda_gqa.backends.kernels.reference import reference_attention

TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 5e-3}  # fp32 dots use TF32
HEAD_DIMS = [64, 80, 96, 112, 128, 160, 192, 256]
ODD_LENGTHS = [1, 7, 63, 65, 1000]


def qkv(b, h_q, h_kv, d, l_q, l_kv, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=g)
            for h, n in ((h_q, l_q), (h_kv, l_kv), (h_kv, l_kv))]


def check(out, expected, dtype):
    assert not out.isnan().any(), "NaN in the output"
    err = (out.float() - expected).abs().max().item()
    assert err <= TOLERANCE[dtype], f"max abs error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("l_q", ODD_LENGTHS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_head_dims_and_odd_lengths(d, l_q, causal):
    q, k, v = qkv(1, 8, 2, d, l_q, 1000, torch.bfloat16)
    check(attention(q, k, v, is_causal=causal), reference_attention(q, k, v, is_causal=causal), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("l_q, l_kv", [(1, 4000), (4, 777), (65, 65), (300, 1000)])
@pytest.mark.parametrize("kind, shape", [("bool", "B1QK"), ("bool", "BHQK"), ("additive", "B1QK"),
                                         ("additive", "BHQK"), ("bool", "11QK"), ("additive", "B11K")])
def test_masks_hiding_every_key_of_some_rows_give_zeros_there(dtype, l_q, l_kv, kind, shape):
    b, h_q, h_kv, d = 2, 16, 4, 128
    q, k, v = qkv(b, h_q, h_kv, d, l_q, l_kv, dtype)
    dims = {"B": b, "H": h_q, "Q": l_q, "K": l_kv}
    mask_shape = [dims[c] if c in dims else 1 for c in shape]
    g = torch.Generator(device="cuda").manual_seed(1)
    keep = torch.rand(mask_shape, device="cuda", generator=g) > 0.3
    hidden_row = l_q // 2
    if shape[2] == "Q":
        keep[..., hidden_row, :] = False
    if kind == "bool":
        mask = keep
    else:
        mask = torch.randn(mask_shape, device="cuda", generator=g).masked_fill(~keep, float("-inf")).to(dtype)
    out = attention(q, k, v, attn_mask=mask)
    check(out, reference_attention(q, k, v, attn_mask=mask), dtype)
    if shape[2] == "Q":
        assert torch.all(out[:, :, hidden_row] == 0)


@pytest.mark.gpu
@pytest.mark.parametrize("l_q, l_kv", [(1, 8192), (16, 8192), (1000, 1000), (63, 4096)])
@pytest.mark.parametrize("window_left", [0, 127, 4095])
def test_sliding_window(l_q, l_kv, window_left):
    q, k, v = qkv(1, 32, 8, 128, l_q, l_kv, torch.bfloat16)
    out = attention(q, k, v, is_causal=True, window_left=window_left)
    check(out, reference_attention(q, k, v, is_causal=True, window_left=window_left), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("l_q, l_kv", [(1, 4096), (200, 200)])
def test_softcap_with_window_like_gemma2(l_q, l_kv):
    q, k, v = qkv(1, 16, 8, 256, l_q, l_kv, torch.bfloat16)
    q = q * 4  # large logits, so the cap matters
    for window_left in (-1, 63):
        out = attention(q, k, v, is_causal=True, scale=256**-0.5, softcap=50.0, window_left=window_left)
        expected = reference_attention(q, k, v, is_causal=True, scale=256**-0.5, softcap=50.0,
                                       window_left=window_left)
        check(out, expected, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("l_q", [1, 4, 100])
def test_kv_len_bounds_a_cache_without_host_sync(kv_dtype, l_q):
    cache = 16384
    q, k, v = qkv(1, 32, 8, 128, l_q, cache, torch.float16)
    k[:, :, 5000:] = float("nan")  # the unfilled part of the cache is never read
    v[:, :, 5000:] = float("nan")
    kv_len = torch.tensor(5000, device="cuda", dtype=kv_dtype)
    out = attention(q, k, v, is_causal=True, kv_len=kv_len)
    check(out, reference_attention(q, k, v, is_causal=True, kv_len=5000), torch.float16)
    kv_len.fill_(123)  # the same launch, a new length: read on the device
    out = attention(q, k, v, is_causal=True, kv_len=kv_len)
    check(out, reference_attention(q, k, v, is_causal=True, kv_len=123), torch.float16)


@pytest.mark.gpu
def test_bshd_views_with_mask_and_window():
    q = torch.randn(1, 300, 32, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k = torch.randn(1, 300, 8, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    v = torch.randn(1, 300, 8, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    mask = torch.rand(1, 1, 300, 300, device="cuda") > 0.2
    out = attention(q, k, v, attn_mask=mask, window_left=50)
    check(out, reference_attention(q, k, v, attn_mask=mask, window_left=50), torch.bfloat16)
