"""The main job: `python -m cuda_gqa.export` exports, loads, and without a GPU says so and exits 0."""

import os
import subprocess
import sys

import pytest
import torch

from cuda_gqa.backends.serialization import deserialize_payload
from cuda_gqa.export.attention_demo import make_demo
from cuda_gqa.export.tensor_files import read_tensor
from cuda_gqa.runtime.pte_delegates import cuda_gqa_delegates

EM_CUDA = 190


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        # Two archs keep the test short; the default is every supported arch.
        [sys.executable, "-m", "cuda_gqa.export", "--out", str(out), "--seq-len", "40", "--archs", "sm_80,sm_90"],
        capture_output=True, text=True, timeout=600,
    )
    return out, result


def test_demo_exports_loads_and_reports_no_gpu(demo_run):
    out, result = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert "scaled_dot_product_attention_1: delegated to CudaGqaBackend (GQA 8/2 heads, D=64, float16, causal)" \
        in result.stdout
    assert "program loaded; methods: forward" in result.stdout
    if not torch.cuda.is_available():
        assert "no usable CUDA GPU here" in result.stdout
        assert "fails cleanly" in result.stdout
        # The backend's own log line names the cause of the refused init.
        assert "CudaGqaBackend: " in result.stderr


def test_demo_writes_inputs_and_eager_outputs(demo_run):
    out, _ = demo_run
    model, (x,) = make_demo(seq_len=40)
    assert torch.equal(read_tensor(out / "input_0.bin", x), x)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(read_tensor(out / "expected_0.bin", expected), expected)


def test_demo_pte_carries_cubins_for_sm80_and_sm90(demo_run):
    out, _ = demo_run
    (data,), named_data = cuda_gqa_delegates((out / "model.pte").read_bytes())
    payload = deserialize_payload(data)
    # fp16 D=64 has tuned sm_90 tiles: sm_80's plan lists no arch (it carries the PTX
    # fallback), sm_90's lists sm_90; each is followed by its generic (unaligned) copy,
    # and each kernel has one cubin.
    aligned = [p for p in payload.plans if any(q.divisibility == 16 for q in p.kernels[0].params)]
    kernels = [k for p in aligned for k in p.kernels]
    kernel = aligned[0].kernels[0]
    by_arch = {c.arch: c for k in kernels for c in k.cubins}
    assert sorted(by_arch) == [80, 90] and sum(len(k.cubins) for k in kernels) == 2
    assert [list(p.archs) for p in aligned] in ([[]], [[], [90]])
    assert len(payload.plans) == 2 * len(aligned)
    # The images live in the program's named data, under their content hash.
    for cubin in by_arch.values():
        assert not cubin.image
        image = named_data[cubin.imageKey.decode()]
        assert image[:4] == b"\x7fELF"
        assert int.from_bytes(image[18:20], "little") == EM_CUDA
    assert named_data[kernel.ptxKey.decode()].lstrip().startswith(b"//") and kernel.ptxArch == 80
    assert [list(s.sizes) for s in payload.inputs] == [[1, 8, 40, 64], [1, 2, 40, 64], [1, 2, 40, 64]]
    assert list(payload.outputs[0].sizes) == [1, 8, 40, 64]
