"""Split-KV decode (gqa_decode_split + gqa_decode_combine, or the split kernel merging itself) matches a
float32 reference on the GPU (Triton JIT)."""

import pytest
import torch

from cuda_gqa.backends.kernels.attention_decode import decode_workspace_shape
from cuda_gqa.backends.kernels.jit_launch import Variant, attention_decode, decode_workspace
from cuda_gqa.backends.kernels.reference import reference_attention

TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 5e-3}  # fp32 dots use TF32
MAX_SPLITS = 128


def decode(q, k, v, *, causal, num_splits=None, workspace=None):
    return attention_decode(q, k, v, Variant(is_causal=causal), num_splits=num_splits, workspace=workspace)


def inputs(b, h_q, h_kv, d, l_q, l_kv, dtype):
    torch.manual_seed(0)
    q = torch.randn(b, h_q, l_q, d, device="cuda", dtype=dtype)
    k = torch.randn(b, h_kv, l_kv, d, device="cuda", dtype=dtype)
    v = torch.randn(b, h_kv, l_kv, d, device="cuda", dtype=dtype)
    return q, k, v


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(
    "b, h_q, h_kv, d, l_q, l_kv",
    [
        (1, 32, 8, 128, 1, 8192),   # llama3-8b decode
        (1, 32, 8, 128, 4, 8190),   # llama3-8b speculative verify, ragged length
        (1, 16, 2, 256, 1, 8192),   # qwen 16/2 D256 decode
        (1, 16, 2, 256, 16, 4000),  # qwen verifying 16 tokens: 128 packed rows in M tiles
        (1, 32, 1, 128, 1, 32768),  # MQA, long context
        (8, 32, 8, 128, 1, 8192),   # batched decode
        (1, 32, 8, 128, 1, 300),    # short context: single launch
        (1, 16, 4, 80, 3, 2000),    # padded head dim
    ],
)
def test_matches_reference_on_gpu(dtype, causal, b, h_q, h_kv, d, l_q, l_kv):
    q, k, v = inputs(b, h_q, h_kv, d, l_q, l_kv, dtype)
    out, _ = decode(q, k, v, causal=causal)
    expected = reference_attention(q, k, v, is_causal=causal)
    err = (out.float() - expected).abs().max().item()
    assert err <= TOLERANCE[dtype], f"max abs error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("num_splits", [1, 2, 7, 40])
def test_split_counts_agree(num_splits):
    q, k, v = inputs(1, 32, 8, 128, 4, 5000, torch.bfloat16)
    out, launched = decode(q, k, v, causal=True, num_splits=num_splits)
    assert (launched == 1) == (num_splits == 1)
    expected = reference_attention(q, k, v, is_causal=True)
    assert (out.float() - expected).abs().max().item() <= TOLERANCE[torch.bfloat16]


@pytest.mark.gpu
def test_one_workspace_serves_every_step():
    """The workspace is allocated once, for the largest problem, and reused as the context grows."""
    shapes = decode_workspace_shape(1, 32, 4, 128, MAX_SPLITS)
    workspace = [torch.full(s, float("nan"), device="cuda") for s in shapes]
    for l_q, l_kv in [(1, 3000), (4, 3001), (1, 9000), (2, 600)]:
        q, k, v = inputs(1, 32, 8, 128, l_q, l_kv, torch.float16)
        out, _ = decode(q, k, v, causal=True, workspace=workspace)
        expected = reference_attention(q, k, v, is_causal=True)
        assert (out.float() - expected).abs().max().item() <= TOLERANCE[torch.float16]


@pytest.mark.gpu
def test_rows_that_see_no_key_are_zero():
    # l_q > l_kv with causal: the first rows see nothing in any split.
    q, k, v = inputs(1, 8, 2, 64, 16, 10, torch.bfloat16)
    out, _ = decode(q, k, v, causal=True, num_splits=1)
    assert torch.all(out[:, :, :6] == 0)
    assert (out.float() - reference_attention(q, k, v, is_causal=True)).abs().max().item() <= 3e-2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "b, h_q, h_kv, d, l_q, l_kv, num_splits",
    [
        (1, 32, 8, 128, 1, 2048, 8),    # llama3-8b short decode
        (1, 32, 8, 128, 4, 4001, 13),   # verify, ragged length
        (1, 32, 1, 128, 1, 32768, 64),  # MQA: 32 packed rows, many splits
        (4, 16, 2, 256, 1, 3000, 5),    # D256, batch 4
        (1, 16, 4, 80, 3, 2000, 7),     # padded head dim
    ],
)
def test_fused_merge_matches_reference_and_leaves_counters_zero(dtype, b, h_q, h_kv, d, l_q, l_kv, num_splits):
    """FUSED_COMBINE: the last split program of each KV head merges; 20 launches on one workspace."""
    q, k, v = inputs(b, h_q, h_kv, d, l_q, l_kv, dtype)
    workspace = decode_workspace(q, num_splits, h_kv)
    workspace[0].fill_(float("nan"))
    expected = reference_attention(q, k, v, is_causal=True)
    for _ in range(20):
        out, launched = attention_decode(q, k, v, Variant(is_causal=True), num_splits=num_splits,
                                         workspace=workspace, fused=True)
        assert launched > 1
    torch.cuda.synchronize()
    assert (out.float() - expected).abs().max().item() <= TOLERANCE[dtype]
    assert int(workspace[2].abs().sum()) == 0


@pytest.mark.gpu
def test_fused_merge_in_a_cuda_graph_with_a_growing_kv_len():
    """Graph replays reuse the counters; kv_len leaves whole splits without keys at first."""
    q, k, v = inputs(1, 32, 8, 128, 1, 4096, torch.bfloat16)
    kv_len = torch.tensor(5, device="cuda", dtype=torch.int32)
    workspace = decode_workspace(q, 16, 8)
    out = torch.empty_like(q)
    run = lambda: attention_decode(q, k, v, Variant(kv_len=kv_len), out=out, num_splits=16, workspace=workspace,
                                   fused=True)
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for filled in (5, 700, 4096, 1):
        kv_len.fill_(filled)
        graph.replay()
        torch.cuda.synchronize()
        expected = reference_attention(q, k, v, kv_len=filled)
        assert (out.float() - expected).abs().max().item() <= TOLERANCE[torch.bfloat16], filled
    assert int(workspace[2].abs().sum()) == 0


@pytest.mark.gpu
def test_fused_merge_with_a_mask_hiding_rows():
    q, k, v = inputs(2, 8, 2, 64, 3, 1500, torch.float16)
    mask = torch.rand(2, 8, 3, 1500, device="cuda") > 0.3
    mask[:, :, 1] = False  # row 1 sees no key in any split: zeros
    out, _ = attention_decode(q, k, v, Variant(attn_mask=mask), num_splits=6, fused=True)
    expected = reference_attention(q, k, v, attn_mask=mask)
    assert torch.all(out[:, :, 1] == 0)
    assert (out.float() - expected).abs().max().item() <= TOLERANCE[torch.float16]
