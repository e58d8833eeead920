"""The small-op kernels (rmsnorm, rope_cache_write, embedding, argmax_rows + argmax_merge, add) match torch on
the GPU (Triton JIT) at a 1B model's sizes: hidden 2048, 32 q / 8 kv heads of 64, a 4096-row cache, a
128256-token vocabulary. Block sizes and warps are the AOT compile functions'."""

import pytest
import torch
import triton

from cuda_gqa.backends.aot import add as aot_add
from cuda_gqa.backends.aot import argmax_rows as aot_argmax
from cuda_gqa.backends.aot.embedding import (BLOCK_L, embedding_block_d, embedding_grid, embedding_num_warps,
                                             embedding_scale)
from cuda_gqa.backends.aot.rmsnorm import rmsnorm_block, rmsnorm_grid, rmsnorm_num_warps
from cuda_gqa.backends.aot.rope_cache_write import rope_cache_write_grid, rope_cache_write_num_warps
from cuda_gqa.backends.kernels.add import add
from cuda_gqa.backends.kernels.argmax_rows import argmax_merge, argmax_rows
from cuda_gqa.backends.kernels.embedding import embedding
from cuda_gqa.backends.kernels.rmsnorm import rmsnorm
from cuda_gqa.backends.kernels.rope_cache_write import rope_cache_write
from cuda_gqa.export.llm.decoder import rotate_half

HIDDEN, H, H_KV, D, S, VOCAB, EPS = 2048, 32, 8, 64, 4096, 128256, 1e-5
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# Relative (and as much absolute): one rounding to the dtype, two with a residual add.
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}


def worst(got: torch.Tensor, expected: torch.Tensor, tol: float) -> float:
    return float(((got.double() - expected.double()).abs() / (tol + tol * expected.double().abs())).max())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, offset, residual", [(1, 0.0, False), (7, 1.0, False), (1, 1.0, True),
                                                   (5, 0.0, True)])
def test_rmsnorm(dtype, rows, offset, residual):
    torch.manual_seed(0)
    x = 3 * torch.randn(rows, HIDDEN, device="cuda").to(dtype)
    w = 0.5 * torch.randn(HIDDEN, device="cuda").to(dtype)
    x64 = x.double()
    expected = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + EPS) * (offset + w.double())
    if residual:
        out = torch.randn(rows, HIDDEN, device="cuda").to(dtype)  # in place: out = out + norm(x)
        expected = expected + out.double()
    else:
        out = torch.full((rows, HIDDEN), float("nan"), device="cuda", dtype=dtype)
    block = rmsnorm_block(HIDDEN)
    rmsnorm[rmsnorm_grid(rows)](x, w, out if residual else None, out, EPS, x.stride(0),
                                out.stride(0) if residual else 0, out.stride(0), N_COLS=HIDDEN, BLOCK=block,
                                WEIGHT_OFFSET=offset, HAS_RESIDUAL=residual, num_warps=rmsnorm_num_warps(block))
    assert worst(out, expected, TOLERANCE[dtype]) <= 1.0


def rope_reference(qkv, cos, sin, positions, q_norm_w, k_norm_w, offset):
    """decoder.py's Attention on the fused projection rows, in float64 (q/k norm rounded to the dtype)."""
    l = qkv.shape[0]
    q = qkv[:, :H * D].view(l, H, D).transpose(0, 1)
    k = qkv[:, H * D:(H + H_KV) * D].view(l, H_KV, D).transpose(0, 1)
    v = qkv[:, (H + H_KV) * D:].view(l, H_KV, D).transpose(0, 1)

    def norm(x, w):
        x64 = x.double()
        return (x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + EPS) * (offset + w.double())).to(x.dtype)

    if q_norm_w is not None:
        q, k = norm(q, q_norm_w), norm(k, k_norm_w)
    c, s = cos[positions].double(), sin[positions].double()
    rotate = lambda x: x.double() * c + rotate_half(x.double()) * s
    return rotate(q), rotate(k), v


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("position_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("start, l, qk_norm", [(4000, 1, False), (0, 128, False), (1234, 1, True),
                                               (4090, 16, True)])
def test_rope_cache_write(dtype, position_dtype, start, l, qk_norm):
    torch.manual_seed(0)
    offset = 1.0 if qk_norm else 0.0
    qkv = torch.randn(l, (H + 2 * H_KV) * D, device="cuda").to(dtype)
    angles = torch.outer(torch.arange(S, dtype=torch.float64), 1.0 / 1e4 ** (torch.arange(0, D, 2) / D))
    angles = torch.cat((angles, angles), dim=-1).cuda()
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    norms = (0.5 * torch.randn(2, D, device="cuda")).to(dtype) if qk_norm else (None, None)
    k_cache = torch.randn(H_KV, S, D, device="cuda").to(dtype)
    v_cache = torch.randn(H_KV, S, D, device="cuda").to(dtype)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    q_out = torch.full((H, l, D), float("nan"), device="cuda", dtype=dtype)
    kv_len = torch.full((1,), -7, device="cuda", dtype=torch.int32)
    input_pos = torch.tensor([start], device="cuda", dtype=position_dtype)
    rope_cache_write[rope_cache_write_grid(l, H, H_KV)](
        qkv, cos, sin, input_pos, norms[0], norms[1], q_out, k_cache, v_cache, kv_len, l, S, EPS, qkv.stride(0),
        q_out.stride(0), q_out.stride(1), k_cache.stride(0), k_cache.stride(1), HEADS_Q=H, HEADS_KV=H_KV,
        HEAD_DIM=D, BLOCK_D=D, QK_NORM=qk_norm, NORM_OFFSET=offset, num_warps=rope_cache_write_num_warps(D))

    inside = min(l, S - start)  # rows past the cache are skipped
    positions = torch.arange(start, start + inside, device="cuda")
    q, k, v = rope_reference(qkv[:inside], cos, sin, positions, norms[0], norms[1], offset)
    tol = 2 * TOLERANCE[dtype]
    assert worst(q_out[:, :inside], q, tol) <= 1.0
    assert q_out[:, inside:].isnan().all()
    assert worst(k_cache[:, start:start + inside], k, tol) <= 1.0
    assert torch.equal(v_cache[:, start:start + inside], v)
    kept = torch.ones(S, dtype=torch.bool, device="cuda")
    kept[start:start + inside] = False
    assert torch.equal(k_cache[:, kept], k_before[:, kept]) and torch.equal(v_cache[:, kept], v_before[:, kept])
    assert kv_len.item() == min(start + l, S)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("token_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("scale", [1.0, HIDDEN ** 0.5], ids=["copy", "gemma-scale"])
def test_embedding(dtype, token_dtype, scale):
    torch.manual_seed(0)
    table = torch.randn(VOCAB, HIDDEN, device="cuda").to(dtype)
    tokens = torch.tensor([0, 17, VOCAB - 1, 128000, 5], device="cuda", dtype=token_dtype)
    block_d = embedding_block_d(HIDDEN)

    def embed(ids):
        out = torch.full((ids.numel(), HIDDEN), float("nan"), device="cuda", dtype=dtype)
        error = torch.full((1,), -1, device="cuda", dtype=torch.int32)
        embedding[embedding_grid(ids.numel())](ids, table, out, error, ids.numel(), VOCAB, out.stride(0), D=HIDDEN,
                                               BLOCK_D=block_d, SCALE=embedding_scale(scale, dtype), BLOCK_L=BLOCK_L,
                                               num_warps=embedding_num_warps(block_d))
        return out, error.item()

    out, error = embed(tokens)
    # decoder.py: embed_tokens(tokens) * torch.tensor(hidden ** 0.5, dtype=x.dtype)
    assert torch.equal(out, table[tokens.long()] * torch.tensor(scale, dtype=dtype)) and error == 0
    bad = tokens.clone()
    bad[3] = VOCAB
    out, error = embed(bad)
    assert error == 1 and out[3].eq(0).all() and not out.isnan().any()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("l", [1, 4])
@pytest.mark.parametrize("two_stage", [True, False], ids=["splits", "one-program-per-row"])
def test_argmax_rows(dtype, l, two_stage):
    torch.manual_seed(0)
    logits = torch.randn(l, VOCAB, device="cuda").to(dtype)
    logits[0, 70000] = logits[0, 90000] = 100.0  # a tie across splits: the lower index wins
    if l > 1:
        logits[1] = float("-inf")
        logits[2, 5000] = float("nan")
    out = torch.full((l,), -5, device="cuda", dtype=torch.int64)
    splits = aot_argmax.argmax_num_splits(VOCAB) if two_stage else 1
    common = dict(V=VOCAB, NUM_SPLITS=splits, SPLIT=aot_argmax.argmax_split(VOCAB, splits), BLOCK=aot_argmax.BLOCK,
                  num_warps=aot_argmax.NUM_WARPS)
    if two_stage:
        partials = torch.empty(aot_argmax.argmax_workspace_shape(l, splits), device="cuda", dtype=torch.int32)
        argmax_rows[aot_argmax.argmax_rows_grid(l, splits)](logits, None, partials, logits.stride(0), **common)
        argmax_merge[aot_argmax.argmax_merge_grid(l)](partials, out, NUM_SPLITS=splits,
                                                      BLOCK_S=triton.next_power_of_2(splits), num_warps=1)
    else:
        argmax_rows[aot_argmax.argmax_rows_grid(l, 1)](logits, out, None, logits.stride(0), **common)
    assert torch.equal(out, torch.argmax(logits, dim=-1))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add(dtype):
    torch.manual_seed(0)
    a, b = torch.randn(7, HIDDEN, device="cuda").to(dtype), torch.randn(7, HIDDEN, device="cuda").to(dtype)
    expected = a + b
    add[aot_add.add_grid(7, HIDDEN)](a, b, a, a.stride(0), b.stride(0), a.stride(0), N_COLS=HIDDEN,
                                     BLOCK=aot_add.BLOCK, num_warps=aot_add.NUM_WARPS)  # in place: a residual add
    assert torch.equal(a, expected)
