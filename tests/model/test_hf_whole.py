"""Hugging Face transformers models taken whole: exported with transformers' own ExecuTorch
integration (static cache) at a static token count, lowered with CudaGqaModelPartitioner.

One CudaGqaBackend delegate holds each step (embedding to logits, the StaticCache rows, the RoPE
tables HF builds in the graph from inv_freq). A 4-token prefill program and a 1-token decode
program are lowered separately; their payloads run on the CPU (payload_interpreter.py, kernels
under Triton's interpreter), the decode program starting from the caches the prefill left, and
each call's logits must be the eager HF model's over the same calls.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM  # noqa: E402

from payload_interpreter import recording_compiles, run_in_subprocess  # noqa: E402
from test_hf_transformers import CACHE_LEN, LAYERS, SPECS, TINY, exportable, tiny_model  # noqa: E402
from whole_programs import delegate_input_names, delegates, named_data  # noqa: E402

from cuda_gqa.backends.model.recognize_hf import rope_table  # noqa: E402
from cuda_gqa.backends.partition import CudaGqaModelPartitioner  # noqa: E402

PREFILL, DECODE_STEPS = 4, 2


def lower(module, length: int, kernels: dict):
    """(edge program manager, partitioner): `module`'s step of `length` tokens, exported as the
    integration exports it (input_ids, cache_position) and lowered whole."""
    from executorch.exir import to_edge_transform_and_lower

    program = module.export(input_ids=torch.ones(1, length, dtype=torch.long), cache_position=torch.arange(length))
    partitioner = CudaGqaModelPartitioner(**SPECS)
    with recording_compiles(kernels):
        edge = to_edge_transform_and_lower(program, partitioner=[partitioner])
    return edge, partitioner


def calls_of(lowered, steps) -> list[list[torch.Tensor]]:
    names = delegate_input_names(lowered)
    return [[{"input_ids": tokens, "cache_position": positions}[n] for n in names] for tokens, positions in steps]


def prefill_then_decode(vocab: int):
    """(prefill steps, decode steps): (input_ids, cache_position) of a 4-token prompt, then one token a step."""
    gen = torch.Generator().manual_seed(1)
    prompt = [(torch.randint(0, vocab, (1, PREFILL), generator=gen), torch.arange(PREFILL))]
    decode = [(torch.randint(0, vocab, (1, 1), generator=gen), torch.tensor([PREFILL + i]))
              for i in range(DECODE_STEPS)]
    return prompt, decode


def check_constants_rebuild(plan, module) -> None:
    """Every constant of the plan (weights folded and stacked, RoPE tables made from inv_freq) is made
    again, bit for bit, from the module's parameters and buffers (what a rebuilt .ptd relies on)."""
    from cuda_gqa.backends.model.fuse import derive_constant

    wrapper = module.model  # what the integration exports: FQNs as the program names them
    tensors = dict(wrapper.named_buffers()) | wrapper.state_dict()  # tied weights under both names
    assert any("@rope_cos(" in name for name in plan.constants), list(plan.constants)
    for name, data in plan.constant_data.items():
        derived = derive_constant(name, tensors)
        assert derived.dtype == data.dtype and torch.equal(derived, data), name


def check_whole_and_eager(name: str, tmp_path) -> None:
    module = exportable(name)
    eager = copy.deepcopy(module.model)
    kernels = {}
    (prefill, prefill_partitioner), (decode, decode_partitioner) = (lower(module, n, kernels) for n in (PREFILL, 1))
    for edge, partitioner in ((prefill, prefill_partitioner), (decode, decode_partitioner)):
        assert partitioner.model_report.startswith("whole step"), partitioner.model_report
        calls = [n for n in edge.exported_program().graph.nodes if n.op == "call_function"]
        assert [str(n.target) for n in calls] == ["executorch_call_delegate", "<built-in function getitem>"]
        assert [d.delegated for d in partitioner.report] == [True] * LAYERS
    check_constants_rebuild(prefill_partitioner.plan, module)

    (prefill_delegate,), (decode_delegate,) = delegates(prefill), delegates(decode)
    prompt, steps = prefill_then_decode(TINY["vocab_size"])
    programs = [{"payload": prefill_delegate.processed_bytes, "calls": calls_of(prefill_delegate, prompt),
                 "named_data": named_data(prefill_delegate)},
                {"payload": decode_delegate.processed_bytes, "calls": calls_of(decode_delegate, steps),
                 "named_data": named_data(decode_delegate), "states_from": 0}]
    results = run_in_subprocess({"kernels": kernels, "programs": programs}, tmp_path)
    outputs = results[0]["outputs"] + results[1]["outputs"]
    for (logits,), (tokens, positions) in zip(outputs, prompt + steps):
        with torch.no_grad():
            expected = eager(input_ids=tokens, cache_position=positions)
        assert logits.shape == expected.shape
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_the_rope_tables_made_at_export_are_the_rows_hf_computes_for_each_position(name):
    rotary = tiny_model(name).model.rotary_emb
    positions = torch.arange(CACHE_LEN)[None]
    # One inv_freq per layer type where layers differ (Gemma 3: "sliding_attention_inv_freq").
    kinds = [n.removesuffix("inv_freq").removesuffix("_") for n, _ in rotary.named_buffers()
             if n.endswith("inv_freq") and "original" not in n]
    assert kinds
    for kind in kinds:
        prefix = f"{kind}_" if kind else ""
        with torch.no_grad():
            cos, sin = rotary(torch.zeros(1), positions, **({"layer_type": kind} if kind else {}))
        for fn, expected in (("cos", cos), ("sin", sin)):
            table = rope_table(getattr(rotary, f"{prefix}inv_freq"), fn, CACHE_LEN,
                               getattr(rotary, f"{prefix}attention_scaling"), torch.float32)
            torch.testing.assert_close(table, expected[0], rtol=0, atol=1e-6)


def test_llama_prefill_and_decode_are_one_delegate_each_giving_eager_logits(tmp_path):
    check_whole_and_eager("llama", tmp_path)


# Qwen2: q/k/v biases; Mistral: the sliding-window mask; Qwen3: q/k norms; Gemma 3: the scaled
# embedding, (1 + w) norms, q/k norms, norms after attention and the MLP, GELU-tanh, local RoPE
# tables; Phi-3: qkv_proj sliced and gate_up_proj split into column views of one projection each.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2", "mistral", "qwen3", "gemma3", "phi3"])
def test_each_family_taken_whole_gives_eager_logits(name, tmp_path):
    check_whole_and_eager(name, tmp_path)


def test_gemma2_eager_soft_capped_attention_keeps_attention_only_and_says_why():
    module = exportable("gemma2")
    program = module.export(input_ids=torch.ones(1, 1, dtype=torch.long), cache_position=torch.arange(1))
    partitioner = CudaGqaModelPartitioner(**SPECS)
    program = partitioner.transform_for_pre_decomposition(program)
    partitioner.partition(program.run_decompositions({}))
    assert partitioner.whole is False
    assert partitioner.model_report == (
        "attention only: aten__softmax_default: attention written out as matmul and softmax over tanh "
        "soft-capped scores (eager attention, not one SDPA call): the whole-step plan attends through SDPA only")
    assert [d.delegated for d in partitioner.report] == [True] * LAYERS  # each soft-capped attention, alone


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mistral", "gemma3"])
def test_a_sliding_window_shorter_than_the_cache_reads_as_windowed_attention(name):
    """Window 16 over 32-row caches: the plan (reference.py, no kernels) gives eager's logits step after
    step, past the window, from one decode program."""
    from cuda_gqa.backends.model.reference import evaluate
    from cuda_gqa.backends.partition.whole_model_partitioner import trial_plan

    model = tiny_model(name, sliding_window=16)
    module = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=CACHE_LEN)
    eager = copy.deepcopy(module.model)
    plan = trial_plan(module.export(input_ids=torch.ones(1, 1, dtype=torch.long), cache_position=torch.arange(1)))
    assert [op.attrs["window"] for op in plan.ops if op.kind == "attention"] == [16] * LAYERS
    states = {state: torch.zeros(v.shape, dtype=v.dtype) for state, v in plan.states.items()}
    constants = {constant: plan.constant_data[constant] for constant in plan.constants}
    gen = torch.Generator().manual_seed(2)
    for position in range(24):
        tokens = torch.randint(0, TINY["vocab_size"], (1, 1), generator=gen)
        inputs = {"input_ids": tokens, "cache_position": torch.tensor([position])}
        (logits,) = evaluate(plan, inputs, states, constants)
        with torch.no_grad():
            torch.testing.assert_close(logits, eager(**inputs), rtol=1e-5, atol=1e-5)
