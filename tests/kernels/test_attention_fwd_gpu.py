"""gqa_attention_fwd matches a float32 reference on the GPU (Triton JIT), realistic shapes included."""

import pytest
import torch

from cuda_gqa.backends.kernels.jit_launch import Variant, attention_fwd
from cuda_gqa.backends.kernels.reference import reference_attention

TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 5e-3}  # fp32 dots use TF32


def run(q, k, v, *, causal, scale=None):
    return attention_fwd(q, k, v, Variant(is_causal=causal), scale=scale)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize(
    "b, h_q, h_kv, d, l_q, l_kv, causal",
    [
        (1, 32, 8, 128, 1, 2048, True),   # llama3 decode
        (2, 28, 4, 128, 200, 200, True),  # qwen2 7:1 prefill, ragged length
        (1, 32, 1, 64, 77, 300, True),    # MQA chunk, bottom-right causal
        (1, 16, 4, 80, 100, 100, False),  # padded head dim
        (1, 8, 2, 256, 64, 96, True),     # largest head dim
        (1, 8, 2, 64, 50, 20, True),      # more queries than keys: leading rows are zeros
    ],
)
def test_matches_reference_on_gpu(dtype, b, h_q, h_kv, d, l_q, l_kv, causal):
    torch.manual_seed(0)
    q = torch.randn(b, h_q, l_q, d, device="cuda", dtype=dtype)
    k = torch.randn(b, h_kv, l_kv, d, device="cuda", dtype=dtype)
    v = torch.randn(b, h_kv, l_kv, d, device="cuda", dtype=dtype)
    out = run(q, k, v, causal=causal)
    expected = reference_attention(q, k, v, is_causal=causal)
    err = (out.float() - expected).abs().max().item()
    assert err <= TOLERANCE[dtype], f"max abs error {err:.2e}"


@pytest.mark.gpu
def test_bshd_views_need_no_copy():
    torch.manual_seed(0)
    q = torch.randn(1, 64, 16, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k = torch.randn(1, 64, 4, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    v = torch.randn(1, 64, 4, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    out = run(q, k, v, causal=True)
    assert (out.float() - reference_attention(q, k, v, is_causal=True)).abs().max().item() <= 3e-2
