"""cuda_gqa_llm_runner --device-argmax: decode steps through the program's decode_token method (token ids
in and out), refused where the program has none. The program here runs on ExecuTorch's portable kernels
(decode_token is the same Decoder.greedy_token() step export_llm lowers to the GPU), so the runner's loop
is checked on the CPU."""

import contextlib

import pytest
import torch
from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
from executorch.exir.passes import MemoryPlanningPass

from cuda_gqa.export.llm.reference import write_reference

from llm_models import MAX_SEQ_LEN, PREFILL_LEN, one_layer
from test_llm_runner import run


@pytest.fixture(scope="module")
def token_pte(tmp_path_factory):
    """(model, .pte with prefill, decode and decode_token on the CPU, sharing their caches)."""
    model = one_layer("tiny-llama3")
    methods = (("prefill", PREFILL_LEN, model.last_row_logits), ("decode", 1, contextlib.nullcontext),
               ("decode_token", 1, model.greedy_token))
    programs = {}
    with torch.no_grad():
        for method, length, context in methods:
            with context():
                programs[method] = torch.export.export(model, (torch.zeros(1, length, dtype=torch.long),
                                                               torch.tensor([0])))
    metadata = {"get_max_seq_len": MAX_SEQ_LEN, "get_prefill_len": PREFILL_LEN, "get_vocab_size": 256}
    program = to_edge_transform_and_lower(programs, constant_methods=metadata).to_executorch(
        ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=True)))
    pte = tmp_path_factory.mktemp("device_argmax") / "model.pte"
    pte.write_bytes(program.buffer)
    return model, pte


def test_generation_through_decode_token_matches_eager(token_pte):
    model, pte = token_pte
    write_reference(model, pte, 6, 11)
    folder = pte.parent
    result = run(pte, "--prompt", folder / "prompt.bin", "--new-tokens", 6, "--expected-tokens",
                 folder / "expected_tokens.bin", "--device-argmax", "--tokens-out", folder / "tokens.bin")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tokens: 6 of 6 match eager before the first difference PASS" in result.stdout
    assert "decode (decode_token): 5 steps" in result.stdout


def test_decode_at_times_decode_token_steps(token_pte):
    _, pte = token_pte
    result = run(pte, "--decode-at", 4, "--steps", 3, "--warmup", 1, "--device-argmax")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "decode-at (decode_token): 3 steps at positions 4..6" in result.stdout


def test_a_program_without_decode_token_is_refused(cpu_pte, tmp_path):
    _, _, pte = cpu_pte
    (tmp_path / "prompt.bin").write_bytes(torch.zeros(3, dtype=torch.int64).numpy().tobytes())
    result = run(pte, "--prompt", tmp_path / "prompt.bin", "--device-argmax")
    assert result.returncode == 2
    assert "has no decode_token method: export it with --decode-token-method" in result.stderr


def test_device_argmax_excludes_what_needs_logits(token_pte, tmp_path):
    _, pte = token_pte
    result = run(pte, "--prompt", tmp_path / "p.bin", "--device-argmax", "--logits-out", tmp_path / "l.bin")
    assert result.returncode == 2 and "--device-argmax: decode steps return token ids, no logits" in result.stderr
