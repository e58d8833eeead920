"""cuda_gqa_runner runs the programs users lower: XNNPACK delegates beside (or instead of)
CudaGqaBackend's, and methods taking bool tensors and int, float or bool scalars."""

import subprocess

import numpy as np
import pytest
import torch
from executorch.exir import to_edge_transform_and_lower
from torch import nn

from fake_programs import RUNNER


def _runner():
    if not RUNNER.is_file():
        pytest.fail(f"{RUNNER} not found: run `make build` first")
    return RUNNER


def _save_program(model, inputs, path, partitioners=()):
    program = to_edge_transform_and_lower(torch.export.export(model, inputs), partitioner=list(partitioners))
    path.write_bytes(program.to_executorch().buffer)
    return path


def _run(pte, inputs, expected, tmp_path):
    """Runs pte on the input files and checks its one output against `expected`."""
    args = [str(_runner()), str(pte)]
    for i, data in enumerate(inputs):
        path = tmp_path / f"input{i}.bin"
        path.write_bytes(data)
        args += ["--input", str(path)]
    want = tmp_path / "expected.bin"
    want.write_bytes(expected.detach().numpy().tobytes())
    return subprocess.run(args + ["--expected", str(want), "--atol", "1e-5"], capture_output=True, text=True,
                          timeout=120)


def test_a_program_lowered_to_xnnpack_runs(tmp_path):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    torch.manual_seed(0)
    model = nn.Linear(16, 8).eval()
    x = torch.randn(2, 16)
    pte = _save_program(model, (x,), tmp_path / "linear.pte", [XnnpackPartitioner()])
    result = _run(pte, [x.numpy().tobytes()], model(x), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "XnnpackBackend is not registered" not in result.stderr


class Gated(nn.Module):
    """A bool tensor input and int, float and bool scalar inputs."""

    def forward(self, x, keep, shift: int, scale: float, negate: bool):
        y = torch.where(keep, x, torch.zeros_like(x)) * scale + shift
        return -y if negate else y


def test_bool_tensors_and_scalar_inputs_are_taken(tmp_path):
    x, keep = torch.randn(4, 8), torch.rand(4, 8) > 0.5
    pte = tmp_path / "gated.pte"
    pte.write_bytes(to_edge_transform_and_lower(torch.export.export(Gated(), (x, keep, 3, 0.5, True)))
                    .to_executorch().buffer)
    inputs = [x.numpy().tobytes(), keep.numpy().tobytes(), np.int64(3).tobytes(), np.float64(0.5).tobytes(),
              bytes([1])]
    result = _run(pte, inputs, Gated()(x, keep, 3, 0.5, True), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_scalar_input_file_of_the_wrong_size_is_refused_by_name(tmp_path):
    x, keep = torch.randn(4, 8), torch.rand(4, 8) > 0.5
    pte = tmp_path / "gated.pte"
    pte.write_bytes(to_edge_transform_and_lower(torch.export.export(Gated(), (x, keep, 3, 0.5, True)))
                    .to_executorch().buffer)
    inputs = [x.numpy().tobytes(), keep.numpy().tobytes(), np.int32(3).tobytes(), np.float64(0.5).tobytes(),
              bytes([1])]
    result = _run(pte, inputs, Gated()(x, keep, 3, 0.5, True), tmp_path)
    assert result.returncode == 2
    assert "input2.bin (input 2): has 4 bytes; an int (int64) input needs 8" in result.stderr, result.stderr
