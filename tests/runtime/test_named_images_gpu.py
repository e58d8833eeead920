"""CubinLauncher on a real GPU with a payload whose cubin and PTX live in named data, as in a
.pte: same output as the inline payload, and the PTX fallback JIT-compiles from named data too.
Skipped (tests/conftest.py) where torch sees no CUDA device; needs no executorch."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


class NamedData(dict):
    """key -> bytes, filled the way NamedDataStore is (the GPU machine has no executorch)."""

    def add_named_data(self, key, data, alignment=1):
        self[key] = bytes(data)


def device_arch() -> int:
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def payloads(arch: int):
    """(inline payload, the same with its images moved into named data, the named data)."""
    from cuda_gqa.backends.attention_plan import build_attention_payload
    from cuda_gqa.backends.named_images import move_images_to_named_data
    from cuda_gqa.backends.serialization import deserialize_payload, serialize_payload

    inline = build_attention_payload(dtype=torch.float16, batch=1, num_heads_q=8, num_heads_kv=2, head_dim=64,
                                     l_q=96, l_kv=96, is_causal=True, archs=[arch], ptx=True)
    payload = deserialize_payload(inline)
    named = NamedData()
    move_images_to_named_data(payload, named)
    return inline, serialize_payload(payload), named


def qkv():
    gen = torch.Generator(device="cuda").manual_seed(0)
    return tuple(torch.randn(1, h, 96, 64, device="cuda", dtype=torch.float16, generator=gen) for h in (8, 2, 2))


def test_named_images_run_like_inline_ones():
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher
    from cuda_gqa.runtime.launch_plan import LaunchError

    inline, keyed, named = payloads(device_arch())
    q, k, v = qkv()
    launcher = CubinLauncher(keyed, named_data=named)
    assert not launcher.images[0][0].is_ptx and launcher.images[0][0].image in named.values()
    out = launcher(q, k, v)
    expected = CubinLauncher(inline)(q, k, v)
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
    with pytest.raises(LaunchError, match="is missing from the program"):
        CubinLauncher(keyed, named_data={})


def test_ptx_fallback_from_named_data():
    from cuda_gqa.backends.kernels.reference import reference_attention
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    if device_arch() < 90:
        pytest.skip("needs a GPU of a newer major arch than sm_80 to take the PTX fallback")
    _, keyed, named = payloads(80)  # an sm_80 cubin does not run on sm_90+: the PTX does
    launcher = CubinLauncher(keyed, named_data=named)
    assert launcher.images[0][0].is_ptx
    q, k, v = qkv()
    out = launcher(q, k, v)
    torch.cuda.synchronize()
    torch.testing.assert_close(out.float(), reference_attention(q, k, v, is_causal=True), atol=5e-3, rtol=5e-3)
