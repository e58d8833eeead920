"""The 1B benchmark's verdict on a float16 program: as close to float32 eager as the same export
with attention on the CPU (bench/llm_decode_speed.py, half_precision_verdict)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from llm_decode_speed import HALF_MAX_SLACK, HALF_MEAN_SLACK, half_precision_verdict  # noqa: E402


def _logits(seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    eager = torch.randn(65 * 512, generator=generator) * 2
    return eager, eager + noise * torch.randn(eager.shape, generator=generator)


def test_a_program_as_far_from_eager_as_the_cpu_one_passes():
    eager, cpu = _logits(0, 0.05)
    gpu = eager + (cpu - eager).flip(0)  # the same errors, elsewhere
    code, lines = half_precision_verdict(gpu, cpu, eager)
    assert code == 0 and lines[-1].endswith("PASS")


def test_a_program_farther_from_eager_fails_on_the_mean():
    eager, cpu = _logits(1, 0.05)
    gpu = eager + (cpu - eager) * (HALF_MEAN_SLACK + 0.05)
    code, lines = half_precision_verdict(gpu, cpu, eager)
    assert code == 1 and lines[-1].endswith("FAIL")


def test_one_wrong_logit_fails_on_the_max():
    eager, cpu = _logits(2, 0.05)
    gpu = cpu.clone()
    gpu[7] = eager[7] + (cpu - eager).abs().max() * (HALF_MAX_SLACK + 0.1)  # the mean barely moves
    assert (gpu - eager).abs().mean() <= HALF_MEAN_SLACK * (cpu - eager).abs().mean()
    code, lines = half_precision_verdict(gpu, cpu, eager)
    assert code == 1 and lines[-1].endswith("FAIL")


def test_missing_rows_fail():
    eager, cpu = _logits(3, 0.05)
    code, lines = half_precision_verdict(cpu[:-512], cpu, eager)
    assert code == 1 and "did not write every row" in lines[0]
