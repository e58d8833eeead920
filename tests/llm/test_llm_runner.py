"""build/cuda_gqa_llm_runner: the greedy generate loop in C++ reproduces eager PyTorch's tokens and logits."""

import subprocess
from pathlib import Path

import pytest
import torch

from cuda_gqa.export.llm.__main__ import write_reference

LLM_RUNNER = Path(__file__).resolve().parents[2] / "build" / "cuda_gqa_llm_runner"


def run(*args):
    if not LLM_RUNNER.is_file():
        pytest.fail(f"{LLM_RUNNER} not found: run `make build` first")
    return subprocess.run([str(LLM_RUNNER), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("prompt_len", [5, 11])  # one padded chunk; two overlapping chunks (prefill_len 8)
def test_generation_matches_eager(cpu_pte, tmp_path, prompt_len):
    _, model, pte = cpu_pte
    copy = tmp_path / "model.pte"
    copy.write_bytes(pte.read_bytes())
    command = write_reference(model, copy, 6, prompt_len)
    assert command.startswith("build/cuda_gqa_llm_runner")
    result = run(*command.split()[1:], "--tokens-out", tmp_path / "tokens.bin", "--logits-out",
                 tmp_path / "logits.bin")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tokens: 6 of 6 match eager before the first difference PASS" in result.stdout
    assert "over 6 rows, 0 elements outside" in result.stdout
    assert "decode: 5 steps" in result.stdout and "tokens/s" in result.stdout
    written = torch.frombuffer(bytearray((tmp_path / "tokens.bin").read_bytes()), dtype=torch.int64)
    assert written.tolist() == torch.frombuffer(bytearray((tmp_path / "expected_tokens.bin").read_bytes()),
                                                dtype=torch.int64).tolist()
    # The logits rows it compared, as written: eager's within the runner's tolerance.
    logits = torch.frombuffer(bytearray((tmp_path / "logits.bin").read_bytes()), dtype=torch.float32)
    eager = torch.frombuffer(bytearray((tmp_path / "expected_logits.bin").read_bytes()), dtype=torch.float32)
    assert logits.shape == eager.shape
    torch.testing.assert_close(logits, eager, atol=2e-2, rtol=1.6e-2)


def test_a_different_generation_fails(cpu_pte, tmp_path):
    _, model, pte = cpu_pte
    write_reference(model, tmp_path / "model.pte", 4, 5)
    tokens = torch.frombuffer(bytearray((tmp_path / "expected_tokens.bin").read_bytes()), dtype=torch.int64).clone()
    tokens[2] += 1
    (tmp_path / "expected_tokens.bin").write_bytes(tokens.numpy().tobytes())
    result = run(pte, "--prompt", tmp_path / "prompt.bin", "--new-tokens", 4,
                 "--expected-tokens", tmp_path / "expected_tokens.bin")
    assert result.returncode == 1
    assert "tokens: 2 of 4 match eager before the first difference FAIL" in result.stdout


@pytest.mark.parametrize("args, message", [
    ((), "a model and --prompt are needed"),
    (("--prompt", "missing.bin"), "prompt: cannot open missing.bin"),
    (("--new-tokens", "x"), "bad --new-tokens"),
])
def test_bad_usage_exits_2_with_a_message(cpu_pte, args, message):
    _, _, pte = cpu_pte
    result = run(pte, *args) if args != () else run()
    assert result.returncode == 2 and message in result.stderr


def test_a_prompt_past_the_cache_is_refused(cpu_pte, tmp_path):
    _, _, pte = cpu_pte
    (tmp_path / "prompt.bin").write_bytes(torch.zeros(20, dtype=torch.int64).numpy().tobytes())
    result = run(pte, "--prompt", tmp_path / "prompt.bin", "--new-tokens", 10)
    assert result.returncode == 2 and "exceed the program's max_seq_len 24" in result.stderr
