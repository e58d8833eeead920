"""Payload constants through CubinLauncher on a real GPU: a kernel reads a weight uploaded once
from the program's named data. Skipped (tests/conftest.py) where torch sees no CUDA device."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def attention_reading_v_from_a_constant(dtype, b, hq, hkv, l, d) -> bytes:
    """An attention payload whose kernels read V from payload constant "v" instead of input 2
    (whose spec still gives the strides and sizes the kernels take)."""
    from cuda_gqa.backends.attention_plan import build_attention_payload
    from cuda_gqa.backends.payload_constants import constant_param
    from cuda_gqa.backends.serialization import deserialize_payload, payload_generated as fb, serialize_payload

    major, minor = torch.cuda.get_device_capability()
    payload = deserialize_payload(build_attention_payload(
        dtype=dtype, batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, l_q=l, l_kv=l, is_causal=False,
        scale=0.125, archs=[10 * major + minor]))
    payload.constants = [fb.ConstantSpecT(name="v", dtype=payload.inputs[2].dtype, sizes=[b, hkv, l, d])]
    for plan in payload.plans:
        for kernel in plan.kernels:
            kernel.params = [constant_param(0, p.divisibility)
                             if p.kind == fb.ParamKind.TensorPointer and p.arg == 2 else p for p in kernel.params]
    return serialize_payload(payload)


def test_kernels_read_a_constant_uploaded_once_for_the_launchers_sharing_it():
    from cuda_gqa.backends.kernels.reference import reference_attention
    from cuda_gqa.backends.payload_constants import constant_bytes
    from cuda_gqa.runtime.cubin_launcher import ConstantBuffers, CubinLauncher

    dtype, b, hq, hkv, l, d = torch.float16, 1, 8, 2, 64, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=dtype, generator=gen) for h in (hq, hkv, hkv))
    constants = ConstantBuffers({"v": constant_bytes(v)})
    payload = attention_reading_v_from_a_constant(dtype, b, hq, hkv, l, d)
    first, second = CubinLauncher(payload, constants=constants), CubinLauncher(payload, constants=constants)
    assert list(constants.tensors) == ["v"] and first.constant_addresses == second.constant_addresses
    garbage = torch.full_like(v, float("nan"))  # input 2: not read, the constant is
    expected = reference_attention(q, k, v, is_causal=False, scale=0.125)
    for launcher in (first, second):
        out = launcher(q, k, garbage)
        torch.cuda.synchronize()
        torch.testing.assert_close(out.float(), expected, atol=5e-3, rtol=5e-3)
