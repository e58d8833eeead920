"""CubinLauncher on a real GPU: payloads compiled by the local Triton for this
device's arch, launched on torch tensors, compared to the float32 reference.
Skipped (tests/conftest.py) where torch sees no CUDA device."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

CASES = [  # dtype, batch, H_q, H_kv, L_q, L_kv, D, causal
    (torch.float16, 2, 8, 2, 128, 128, 64, False),     # GQA 4:1
    (torch.bfloat16, 2, 8, 2, 128, 128, 64, False),
    (torch.float16, 1, 8, 1, 77, 77, 128, False),      # MQA, ragged length
    (torch.bfloat16, 1, 8, 1, 64, 64, 128, True),
    (torch.float16, 2, 16, 4, 40, 200, 64, True),      # causal, L_q < L_kv (bottom-right)
    (torch.bfloat16, 1, 4, 1, 1, 333, 128, True),      # decode step, MQA
]


def device_arch() -> int:
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def build(dtype, b, hq, hkv, lq, lkv, d, causal, scale, generic=True):
    from cuda_gqa.backends.attention_plan import build_attention_payload

    return build_attention_payload(dtype=dtype, batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, l_q=lq,
                                   l_kv=lkv, is_causal=causal, scale=scale, archs=[device_arch()], generic=generic)


def tolerance(dtype):
    return dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{str(c[0])[6:]}-{c[2]}q{c[3]}kv-{c[4]}x{c[5]}-d{c[6]}"
                                                      f"{'-causal' if c[7] else ''}")
def test_matches_reference(case):
    from cuda_gqa.backends.kernels.reference import reference_attention
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    dtype, b, hq, hkv, lq, lkv, d, causal = case
    scale = 0.9 / d**0.5
    launcher = CubinLauncher(build(dtype, b, hq, hkv, lq, lkv, d, causal, scale))
    assert not launcher.images[0][0].is_ptx
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, lq, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
    out = launcher(q, k, v)
    torch.cuda.synchronize()
    expected = reference_attention(q, k, v, is_causal=causal, scale=scale)
    assert out.dtype == dtype and out.shape == (b, hq, lq, d)
    torch.testing.assert_close(out.float(), expected, **tolerance(dtype))

    # Same result through strided [B, L, H, D] views and a caller-provided output.
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    buffer = torch.full((b, lq, hq, d), float("nan"), device="cuda", dtype=dtype).transpose(1, 2)
    result = launcher(qt, kt, vt, out=buffer)
    torch.cuda.synchronize()
    assert result is buffer
    torch.testing.assert_close(buffer.float(), expected, **tolerance(dtype))


def test_refusals_launch_nothing():
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher
    from cuda_gqa.runtime.launch_plan import LaunchError

    b, hq, hkv, l, d = 1, 8, 2, 64, 64
    launcher = CubinLauncher(build(torch.float16, b, hq, hkv, l, l, d, False, None, generic=False))
    q = torch.randn(b, hq, l, d, device="cuda", dtype=torch.float16)
    k = torch.randn(b, hkv, l, d, device="cuda", dtype=torch.float16)
    v = torch.randn(b, hkv, l, d, device="cuda", dtype=torch.float16)
    sentinel = torch.full((b, hq, l, d), 7.0, device="cuda", dtype=torch.float16)

    with pytest.raises(LaunchError, match="input 1 has dtype bfloat16, the kernels were compiled for float16"):
        launcher(q, k.bfloat16(), v, out=sentinel)
    raw = torch.empty(q.numel() * 2 + 8, device="cuda", dtype=torch.uint8)
    misaligned = raw[2:2 + q.numel() * 2].view(torch.float16).view(q.shape)
    misaligned.copy_(q)
    with pytest.raises(LaunchError, match="address of arg 0 is not a multiple of"):
        launcher(misaligned, k, v, out=sentinel)
    with pytest.raises(LaunchError, match="last dimension has stride"):
        launcher(q.transpose(2, 3).contiguous().transpose(2, 3), k, v, out=sentinel)
    with pytest.raises(LaunchError, match="is on cpu"):
        launcher(q.cpu(), k, v, out=sentinel)
    torch.cuda.synchronize()
    assert bool((sentinel == 7.0).all()), "a refused call must not have launched"


DECODE_CASES = [  # dtype, batch, H_q, H_kv, L_q, L_kv, D, causal, kernels
    (torch.bfloat16, 1, 32, 8, 1, 8192, 128, False, ["gqa_decode_split", "gqa_decode_combine"]),  # llama decode
    (torch.float16, 1, 32, 1, 1, 4096, 128, True, ["gqa_decode_split", "gqa_decode_combine"]),    # MQA
    (torch.float16, 1, 32, 8, 4, 8190, 128, True, ["gqa_decode_split", "gqa_decode_combine"]),    # verify 4
    (torch.bfloat16, 1, 32, 8, 1, 128, 128, True, ["gqa_decode_split"]),                          # single split
]


@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"{str(c[0])[6:]}-{c[2]}q{c[3]}kv-{c[4]}x{c[5]}"
                                                             f"{'-causal' if c[7] else ''}")
def test_decode_payloads_match_reference(case):
    """Split-KV decode payloads through CubinLauncher, workspace allocated once and reused."""
    from cuda_gqa.backends.kernels.reference import reference_attention
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    dtype, b, hq, hkv, lq, lkv, d, causal, names = case
    scale = 0.9 / d**0.5
    launcher = CubinLauncher(build(dtype, b, hq, hkv, lq, lkv, d, causal, scale))
    assert launcher.plan.names(0) == names
    assert bool(launcher.workspace_address) == (len(names) == 2)
    workspace = launcher.workspace_address
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(2):  # a second call reuses the same workspace
        q = torch.randn(b, hq, lq, d, device="cuda", dtype=dtype, generator=gen)
        k = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
        v = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
        out = launcher(q, k, v)
        torch.cuda.synchronize()
        assert launcher.workspace_address == workspace
        expected = reference_attention(q, k, v, is_causal=causal, scale=scale)
        torch.testing.assert_close(out.float(), expected, **tolerance(dtype))


@pytest.mark.parametrize("l_q", [4, 40])
def test_pytorch_top_left_causal_matches_torch(l_q):
    """The payload the AOT stage builds for SDPA(is_causal=True) with L_q < L_kv
    (keys cut to the first L_q) equals PyTorch's own top-left result."""
    from cuda_gqa.backends.attention_plan import build_attention_payload
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    b, hq, hkv, lkv, d, dtype = 1, 16, 4, 1000, 128, torch.float16
    launcher = CubinLauncher(build_attention_payload(
        dtype=dtype, batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, l_q=l_q, l_kv=lkv, is_causal=True,
        attended_keys=l_q, archs=[device_arch()]))
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, l_q, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
    out = launcher(q, k, v)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True,
                                                                enable_gqa=True)
    torch.testing.assert_close(out.float(), expected, **tolerance(dtype))


@pytest.mark.parametrize("l_q, mask_shape, mask_dtype", [
    (1, (1, 1, 1, 6000), torch.bool),           # decode over a padded cache: key padding mask
    (4, (1, 32, 4, 6000), torch.bfloat16),      # per-head additive mask, speculative verify
    (100, (100, 6000), torch.float32),          # 2-D additive fp32 mask, prefill chunk
], ids=["decode-bool-b11k", "verify-additive-bhqk", "chunk-additive-fp32-qk"])
def test_mask_and_kv_len_payloads_match_reference(l_q, mask_shape, mask_dtype):
    """A mask input and a device kv_len input, through the AOT payload, as the runtime sees them."""
    from cuda_gqa.backends.attention_plan import AttentionArgs, build_attention_payload
    from cuda_gqa.backends.kernels.reference import reference_attention
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    b, hq, hkv, lkv, d, dtype = 1, 32, 8, 6000, 128, torch.bfloat16
    launcher = CubinLauncher(build_attention_payload(
        dtype=dtype, batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, l_q=l_q, l_kv=lkv, is_causal=True,
        mask_shape=mask_shape, mask_dtype=mask_dtype, kv_len_dtype=torch.int64, archs=[device_arch()],
        args=AttentionArgs(query=0, key=1, value=2, mask=3, kv_len=4, out=5)))
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, l_q, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
    keep = torch.rand(mask_shape, device="cuda", generator=gen) > 0.25
    mask = keep if mask_dtype == torch.bool else torch.zeros(mask_shape, device="cuda", dtype=mask_dtype).masked_fill(
        ~keep, float("-inf"))
    for filled in (4321, 777):
        kv_len = torch.tensor(filled, device="cuda", dtype=torch.int64)
        out = launcher(q, k, v, mask, kv_len)
        expected = reference_attention(q, k, v, attn_mask=mask, is_causal=True, kv_len=filled)
        torch.testing.assert_close(out.float(), expected, **tolerance(dtype))


def test_misaligned_tensors_run_the_generic_plan():
    """A payload with generic plans computes on tensors that break the 16-byte alignment."""
    from cuda_gqa.backends.kernels.reference import reference_attention
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher, arg_info

    b, hq, hkv, l, d, dtype = 1, 8, 2, 64, 64, torch.float16
    launcher = CubinLauncher(build(dtype, b, hq, hkv, l, l, d, False, None))
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, l, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(b, hkv, l, d, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(b, hkv, l, d, device="cuda", dtype=dtype, generator=gen)
    raw = torch.empty(q.numel() * 2 + 8, device="cuda", dtype=torch.uint8)
    misaligned = raw[2:2 + q.numel() * 2].view(dtype).view(q.shape)
    misaligned.copy_(q)
    out = torch.empty_like(q)
    (launch,) = launcher.plan_launches([arg_info(t) for t in (misaligned, k, v, out)])
    assert launch.plan_index == 1  # the generic plan, after the aligned one
    launcher(misaligned, k, v, out=out)
    torch.cuda.synchronize()
    torch.testing.assert_close(out.float(), reference_attention(q, k, v, is_causal=False), **tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_one_dynamic_payload_serves_every_length_in_its_range(dtype):
    """L_q in [1, 64] and L_kv in [1, 1024]: decode rows, split counts and the forward
    kernel all from one payload, each call matching PyTorch's SDPA."""
    from cuda_gqa.backends.attention_plan import build_attention_payload
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher
    from cuda_gqa.runtime.launch_plan import LaunchError

    b, hq, hkv, d = 2, 8, 2, 64
    launcher = CubinLauncher(build_attention_payload(
        dtype=dtype, batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, l_q=(1, 64), l_kv=(1, 1024),
        is_causal=False, archs=[device_arch()]))
    workspace = launcher.workspace_address
    gen = torch.Generator(device="cuda").manual_seed(0)
    plans_used = set()
    for l_q, l_kv in [(1, 1), (1, 700), (1, 1024), (3, 5), (4, 513), (16, 1024), (17, 17), (40, 900), (64, 1)]:
        q = torch.randn(b, hq, l_q, d, device="cuda", dtype=dtype, generator=gen)
        k = torch.randn(b, hkv, l_kv, d, device="cuda", dtype=dtype, generator=gen)
        v = torch.randn(b, hkv, l_kv, d, device="cuda", dtype=dtype, generator=gen)
        out = launcher(q, k, v)
        torch.cuda.synchronize()
        assert out.shape == (b, hq, l_q, d)
        expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                                    enable_gqa=True)
        torch.testing.assert_close(out.float(), expected, **tolerance(dtype))
        from cuda_gqa.runtime.cubin_launcher import arg_info
        plans_used.add(launcher.plan_launches([arg_info(t) for t in (q, k, v, out)])[0].plan_index)
    assert len(plans_used) >= 4 and launcher.workspace_address == workspace
    q = torch.randn(b, hq, 65, d, device="cuda", dtype=dtype)
    with pytest.raises(LaunchError, match="input 0 has size 65 at dim 2, above its bound 64"):
        launcher(q, k, v)


def test_dynamic_causal_self_attention_matches_torch():
    """One dynamic length for queries and keys (a prefill chunk of any size up to 256)."""
    from cuda_gqa.backends.attention_plan import build_attention_payload
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    b, hq, hkv, d, dtype = 1, 16, 4, 128, torch.bfloat16
    launcher = CubinLauncher(build_attention_payload(
        dtype=dtype, batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, l_q=(1, 256), l_kv=(1, 256),
        kv_follows_query=True, is_causal=True, archs=[device_arch()]))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for length in (1, 7, 16, 17, 100, 256):
        q = torch.randn(b, hq, length, d, device="cuda", dtype=dtype, generator=gen)
        k = torch.randn(b, hkv, length, d, device="cuda", dtype=dtype, generator=gen)
        v = torch.randn(b, hkv, length, d, device="cuda", dtype=dtype, generator=gen)
        out = launcher(q, k, v)
        expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                                    is_causal=True, enable_gqa=True)
        torch.testing.assert_close(out.float(), expected, **tolerance(dtype))


def test_a_mask_over_dynamic_lengths_matches_torch():
    """A bool [1, 1, L_q, L_kv] mask whose last two dims follow the dynamic lengths."""
    from cuda_gqa.backends.attention_plan import AttentionArgs, build_attention_payload
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    b, hq, hkv, d, dtype = 1, 8, 2, 64, torch.float16
    launcher = CubinLauncher(build_attention_payload(
        dtype=dtype, batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, l_q=(1, 64), l_kv=(1, 512),
        is_causal=False, mask_shape=(1, 1, -1, -1), mask_dtype=torch.bool, args=AttentionArgs(mask=3, out=4),
        archs=[device_arch()]))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for l_q, l_kv in [(1, 300), (5, 512), (40, 77)]:
        q = torch.randn(b, hq, l_q, d, device="cuda", dtype=dtype, generator=gen)
        k = torch.randn(b, hkv, l_kv, d, device="cuda", dtype=dtype, generator=gen)
        v = torch.randn(b, hkv, l_kv, d, device="cuda", dtype=dtype, generator=gen)
        mask = torch.rand(1, 1, l_q, l_kv, device="cuda", generator=gen) > 0.3
        mask[..., 0] = True  # every query sees a key (PyTorch gives NaN for rows that see none)
        out = launcher(q, k, v, mask)
        expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                                    enable_gqa=True)
        torch.testing.assert_close(out.float(), expected, **tolerance(dtype))


def test_the_combine_runs_as_a_programmatic_dependent_on_sm90_and_matches_back_to_back():
    """On sm_90+ the combine is launched with programmatic stream serialization (it waits for the
    split kernel itself); many decode steps queued back to back, each over new K/V, give the
    same outputs as plain launches and as the reference: no step reads another's partials."""
    from cuda_gqa.backends.kernels.reference import reference_attention
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    payload = build(torch.bfloat16, 1, 32, 8, 1, 2048, 128, False, 128**-0.5, generic=False)  # one plan
    programmatic, plain = CubinLauncher(payload), CubinLauncher(payload, programmatic_launch=False)
    assert plain.programmatic == [[False, False]]
    assert programmatic.programmatic == [[False, device_arch() >= 90]]
    gen = torch.Generator(device="cuda").manual_seed(0)
    steps = [[torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
              for shape in ((1, 32, 1, 128), (1, 8, 2048, 128), (1, 8, 2048, 128))] for _ in range(16)]
    outs = [programmatic(*step) for step in steps]  # no synchronisation in between
    plain_outs = [plain(*step) for step in steps]
    torch.cuda.synchronize()
    for step, out, plain_out in zip(steps, outs, plain_outs):
        torch.testing.assert_close(out, plain_out, atol=0, rtol=0)
        torch.testing.assert_close(out.float(), reference_attention(*step, scale=128**-0.5), **tolerance(torch.bfloat16))
