"""export_llm(greedy_token_method=True): a `decode_token` method (one token in, its greedy next token id out,
the argmax in the whole-step delegate) sharing the KV caches with prefill and decode."""

import sys
from pathlib import Path

import pytest
import torch
from executorch.runtime import Runtime

from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.export.llm.pipeline import export_llm
from cuda_gqa.runtime.launch_plan import LaunchPlan
from cuda_gqa.runtime.pte_delegates import cuda_gqa_delegates

from llm_models import PREFILL_LEN, one_layer

sys.path.insert(0, str(Path(__file__).parents[1] / "partition"))
from payload_interpreter import recording_compiles, run_in_subprocess  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = one_layer("tiny-llama3")
    kernels = {}
    with recording_compiles(kernels):
        result = export_llm(model, prefill_len=PREFILL_LEN, archs=["sm_90"], cpu_partitioner=None,
                            greedy_token_method=True, out=tmp_path_factory.mktemp("decode_token") / "llama.pte")
    return model, result, kernels


def test_the_program_has_a_decode_token_method_taken_whole(exported):
    _, result, _ = exported
    assert {"prefill", "decode", "decode_token"} <= set(Runtime.get().load_program(result.pte).method_names)
    assert result.model_reports["decode_token"].startswith("whole step on the GPU: ")
    assert "decode_token: whole step on the GPU: " in result.summary()


def _whole_step_payloads(pte: Path) -> tuple[dict, dict]:
    """{output dtype: payload} of the program's whole-step delegates (tokens [1, 1] and input_pos [1]
    in, one output: decode's and decode_token's), and the program's named data."""
    payloads, named_data = cuda_gqa_delegates(pte.read_bytes())
    by_output = {}
    for data in payloads:
        plan = LaunchPlan(data, named_data=named_data)
        if sorted(tuple(sizes) for _, sizes, _ in plan.specs[:plan.num_inputs]) == [(1,), (1, 1)]:
            by_output[plan.specs[plan.num_inputs][0]] = data
    return by_output, named_data


def _call(payload: bytes, named_data: dict, token: torch.Tensor, pos: torch.Tensor) -> list:
    """The delegate's inputs in its own order: input_pos is the [1] one, the token the [1, 1] one."""
    plan = LaunchPlan(payload, named_data=named_data)
    return [pos if tuple(sizes) == (1,) else token for _, sizes, _ in plan.specs[:plan.num_inputs]]


def test_decode_token_after_decode_returns_eager_greedy_tokens(exported, tmp_path):
    # A prompt fed through decode's payload, then decode_token's steps: the interpreter shares
    # states by name, as the runtimes share a program's caches between its methods.
    model, result, kernels = exported
    by_output, named_data = _whole_step_payloads(result.pte)
    decode, decode_token = by_output[fb.DType.Float32], by_output[fb.DType.Int64]
    prompt = [5, 77, 130, 9]
    model.reset_buffers()
    with torch.no_grad():
        for pos, token in enumerate(prompt):
            logits = model(torch.tensor([[token]]), torch.tensor([pos]))
        token = logits[:, -1].argmax(-1, keepdim=True)
        steps, expected = [], []
        for pos in range(len(prompt), len(prompt) + 3):
            steps.append((token, torch.tensor([pos])))
            token = model(token, torch.tensor([pos]))[:, -1].argmax(-1, keepdim=True)
            expected.append(token)
    prompt_calls = [_call(decode, named_data, torch.tensor([[t]]), torch.tensor([p])) for p, t in enumerate(prompt)]
    token_calls = [_call(decode_token, named_data, *step) for step in steps]
    programs = [{"payload": decode, "calls": prompt_calls, "named_data": named_data},
                {"payload": decode_token, "calls": token_calls, "named_data": named_data}]
    _, tokens = run_in_subprocess({"kernels": kernels, "programs": programs, "shared_states": True}, tmp_path)
    assert all(ids.dtype == torch.int64 and ids.shape == (1, 1) for (ids,) in tokens["outputs"])
    assert [ids.tolist() for (ids,) in tokens["outputs"]] == [t.tolist() for t in expected]


def test_greedy_token_method_needs_the_whole_step_lowering():
    model = one_layer("tiny-llama3")
    with pytest.raises(ValueError, match="greedy_token_method needs the whole-step lowering"):
        export_llm(model, archs=None, greedy_token_method=True)
    with pytest.raises(ValueError, match="greedy_token_method needs the whole-step lowering"):
        export_llm(model, archs=["sm_90"], whole_model=False, greedy_token_method=True)
    not_a_decoder = torch.nn.Linear(2, 2)
    not_a_decoder.max_seq_len = 8
    with pytest.raises(ValueError, match=r"greedy_token\(\).*not Linear"):
        export_llm(not_a_decoder, greedy_token_method=True)
