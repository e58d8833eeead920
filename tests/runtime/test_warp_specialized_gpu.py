"""The warp-specialized forward on a GPU: payloads for sm_90 run through CubinLauncher and match the
float32 reference, at ragged lengths, bottom-right causal chunks, MQA, batches, strided views, fp16
and the head dims it pads (80, 96, 112).

Its payloads need Triton 3.9's Gluon to compile. Where the installed Triton is older (the lent GPU
machine has 3.6), they are read from CUDA_GQA_WS_PAYLOADS, a folder this file writes on a build
machine: `python tests/runtime/test_warp_specialized_gpu.py DIR` (make gpu-bundle: .gpu/ws)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

CASES = {  # id: (dtype, batch, H_q, H_kv, L_q, L_kv, head dim, causal)
    "causal-17": (torch.bfloat16, 2, 8, 2, 17, 17, 128, True),  # L_q <= 16 is decode's (split-KV kernels)
    "causal-63": (torch.bfloat16, 2, 8, 2, 63, 63, 128, True),
    "causal-65": (torch.bfloat16, 2, 8, 2, 65, 65, 128, True),
    "causal-1000": (torch.bfloat16, 2, 8, 2, 1000, 1000, 128, True),
    "causal-chunk-300-of-1000": (torch.bfloat16, 1, 8, 2, 300, 1000, 128, True),
    "causal-4096": (torch.bfloat16, 1, 32, 8, 4096, 4096, 128, True),
    "full-77-of-500": (torch.bfloat16, 2, 8, 2, 77, 500, 128, False),
    "mqa-causal-513": (torch.bfloat16, 1, 8, 1, 513, 513, 128, True),
    "fp16-causal-1000": (torch.float16, 1, 8, 2, 1000, 1000, 128, True),
    "d96-causal-1000": (torch.bfloat16, 1, 8, 2, 1000, 1000, 96, True),  # padded to 128 inside
    "d96-fp16-full-200-of-333": (torch.float16, 2, 8, 2, 200, 333, 96, False),
    "d80-causal-1000": (torch.bfloat16, 1, 8, 2, 1000, 1000, 80, True),
    "d112-fp16-full-200-of-333": (torch.float16, 2, 8, 2, 200, 333, 112, False),
}
ARCH = 90


def scale_of(head_dim: int) -> float:
    return 0.9 / head_dim**0.5


def build(case_id: str) -> bytes:
    from cuda_gqa.backends.attention_plan import build_attention_payload

    dtype, b, hq, hkv, lq, lkv, d, causal = CASES[case_id]
    return build_attention_payload(dtype=dtype, batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, l_q=lq,
                                   l_kv=lkv, is_causal=causal, scale=scale_of(d), archs=[ARCH], ptx=False,
                                   generic=True)


def payload(case_id: str) -> bytes:
    from cuda_gqa.backends.heuristics import warp_specialized_compiler_available

    if warp_specialized_compiler_available():
        return build(case_id)
    folder = os.environ.get("CUDA_GQA_WS_PAYLOADS")
    if not folder:
        pytest.fail("this Triton cannot compile the warp-specialized forward: set CUDA_GQA_WS_PAYLOADS to a folder "
                    "written by `python tests/runtime/test_warp_specialized_gpu.py DIR` with Triton 3.9")
    return (Path(folder) / f"{case_id}.cgqa").read_bytes()


def launched_kernels(data: bytes) -> set[str]:
    from cuda_gqa.backends.serialization import deserialize_payload

    return {(k.name.decode() if isinstance(k.name, bytes) else k.name)
            for plan in deserialize_payload(data).plans for k in plan.kernels}


@pytest.mark.parametrize("case_id", list(CASES))
def test_matches_reference(case_id):
    from cuda_gqa.backends.kernels.reference import reference_attention
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher
    from cuda_gqa.runtime.launch_plan import LaunchError

    major, minor = torch.cuda.get_device_capability()
    data = payload(case_id)
    assert "gqa_attention_fwd_ws" in launched_kernels(data)
    if 10 * major + minor != ARCH:
        with pytest.raises(LaunchError, match=f"no cubin for sm_{major}{minor}"):  # nothing for this GPU
            CubinLauncher(data)
        return
    dtype, b, hq, hkv, lq, lkv, d, causal = CASES[case_id]
    tolerance = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=5e-3, rtol=5e-3)
    launcher = CubinLauncher(data)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, lq, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
    expected = reference_attention(q, k, v, is_causal=causal, scale=scale_of(d))

    out = launcher(q, k, v)
    torch.cuda.synchronize()
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), expected, **tolerance)

    # [B, L, H, D] tensors viewed as [B, H, L, D], into a caller's strided output.
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    buffer = torch.full((b, lq, hq, d), float("nan"), device="cuda", dtype=dtype).transpose(1, 2)
    launcher(qt, kt, vt, out=buffer)
    torch.cuda.synchronize()
    torch.testing.assert_close(buffer.float(), expected, **tolerance)


def write_payloads(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for case_id in CASES:
        (folder / f"{case_id}.cgqa").write_bytes(build(case_id))
        print(f"{folder / case_id}.cgqa", flush=True)


if __name__ == "__main__":
    write_payloads(Path(sys.argv[1]))
