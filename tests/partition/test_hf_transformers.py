"""Hugging Face models as users export them: transformers' own modeling code, exported with
transformers' ExecuTorch integration (static cache), lowered with CudaGqaPartitioner.

Tiny randomly initialised configs (2 layers, 8 query / 2 KV heads, head dim 64) of each
architecture, exported at a static token count and with a dynamic one (torch.export.Dim on
the sequence length: one program for prefill and decode). Every attention call must be
delegated with its KV cache owned by the delegate, and the program as the partitioner
rewrote it (taken ops on their CPU references) must compute what the eager model computes.
The payloads' kernels are run on the CPU against the eager model in the slow test below.
"""

from __future__ import annotations

import copy

import pytest
import torch

from cuda_gqa.backends.partition import CudaGqaPartitioner

transformers = pytest.importorskip("transformers")
from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM  # noqa: E402

LAYERS, HEADS, KV_HEADS, HEAD_DIM, CACHE_LEN, PROMPT, MAX_TOKENS = 2, 8, 2, 64, 32, 4, 8
TINY = dict(vocab_size=64, hidden_size=128, intermediate_size=64, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=64,
            pad_token_id=0)  # within the tiny vocabulary (Phi-3's default is 32000)
SPECS = dict(archs=["sm_90"], ptx=False, generic_plans=False)
# (config class, model class): transformers' names; Gemma 2 attends eagerly (soft-capped logits).
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
}


def tiny_model(name: str, **config) -> torch.nn.Module:
    """`name`'s tiny model; `config` overrides TINY's settings (or adds some: sliding_window)."""
    config_class, model_class = (getattr(transformers, n) for n in MODELS[name])
    torch.manual_seed(0)
    model = model_class(config_class(**{**TINY, **config})).eval()
    model.generation_config.cache_implementation = "static"
    return model


def exportable(name: str) -> torch.nn.Module:
    return TorchExportableModuleForDecoderOnlyLM(tiny_model(name), batch_size=1, max_cache_len=CACHE_LEN)


def export(module, dynamic: bool) -> torch.export.ExportedProgram:
    """As transformers' integration exports: input_ids and cache_position, dynamic in the token count or not."""
    tokens = torch.arange(PROMPT).unsqueeze(0) + 1
    shapes = None
    if dynamic:
        length = torch.export.Dim("tokens", min=1, max=MAX_TOKENS)
        shapes = {"input_ids": {1: length}, "cache_position": {0: length}}
    return module.export(input_ids=tokens, cache_position=torch.arange(PROMPT), dynamic_shapes=shapes)


def partition(program: torch.export.ExportedProgram):
    """(partitioner, rewritten module): the partitioner's rewrite, then its partition() over the
    functionalised program (what to_edge_transform_and_lower runs, less the kernel compiles)."""
    partitioner = CudaGqaPartitioner(**SPECS)
    program = partitioner.transform_for_pre_decomposition(program)
    rewritten = copy.deepcopy(program.module())  # runs the taken ops on their CPU references
    partitioner.partition(program.run_decompositions({}))
    return partitioner, rewritten


def steps(dynamic: bool) -> list[int]:
    """Token counts of the calls a test makes: a prompt then decode steps (dynamic), or equal chunks."""
    return [PROMPT, 1, 1, 3] if dynamic else [PROMPT, PROMPT]


# Llama's attention path (SDPA over repeat_kv, a bool mask) is also Qwen2's, Qwen3's, Mistral's
# and Phi-3's: those run with the slow tests (each export takes seconds).
FAST = ("llama", "gemma2", "gemma3")


@pytest.fixture(scope="module", params=[name if name in FAST else pytest.param(name, marks=pytest.mark.slow)
                                        for name in sorted(MODELS)])
def model_name(request):
    return request.param


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_every_attention_call_is_delegated_with_its_cache_owned(model_name, dynamic):
    module = exportable(model_name)
    # What the integration exports (its outer forward drops cache_position, transformers 5.25).
    eager = copy.deepcopy(module.model)
    partitioner, rewritten = partition(export(module, dynamic))

    report = partitioner.report
    assert len(report) == LAYERS, report
    for layer, decision in enumerate(report):
        assert decision.delegated, decision
        assert decision.module.endswith(f"layers.{layer}.self_attn")
        assert decision.reason.startswith(f"GQA {HEADS}/{KV_HEADS} heads, D={HEAD_DIM}, float32")
        assert decision.reason.endswith(f"KV cache owned by the delegate (key_cache_{layer}, value_cache_{layer})")
        assert ("dynamic L_q 1..8" in decision.reason) == dynamic
    if model_name == "gemma2":
        assert all("soft-cap 50" in d.reason for d in report)

    # The rewritten program (one SDPA-like call per layer, on the CPU) against the eager model,
    # call after call over the caches each one fills.
    gen = torch.Generator().manual_seed(1)
    position = 0
    for length in steps(dynamic):
        tokens = torch.randint(0, TINY["vocab_size"], (1, length), generator=gen)
        kwargs = dict(input_ids=tokens, cache_position=torch.arange(position, position + length))
        with torch.no_grad():
            torch.testing.assert_close(rewritten(**kwargs), eager(**kwargs), atol=1e-5, rtol=1e-5)
        position += length


def _record_delegate_calls(module: torch.fx.GraphModule) -> dict:
    """Make each delegate call of `module` (run on the CPU: ExecuTorch runs a delegate's
    original program there) also record its inputs and outputs: {lowered module: [(inputs, outputs)]}."""
    from executorch.exir.delegate import executorch_call_delegate

    calls = {}

    def record(lowered, *args):
        outputs = executorch_call_delegate(lowered, *args)
        as_tuple = outputs if isinstance(outputs, tuple) else (outputs,)
        calls.setdefault(lowered, []).append(([a.clone() for a in args], [o.clone() for o in as_tuple]))
        return outputs

    for node in module.graph.nodes:
        if node.op == "call_function" and node.target is executorch_call_delegate:
            node.target = record
    module.recompile()
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_lowered_program_with_a_dynamic_length_matches_eager_and_its_kernels_match_it(name, tmp_path):
    """The whole route with a dynamic token count: lowered (kernels compiled), the caches in the
    delegates; the lowered program against the eager model over a prompt and decode steps; then
    each delegate's payload, its kernels run on the CPU (payload_interpreter.py) from zeroed caches,
    against what that delegate computed in those calls."""
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir.lowered_backend_module import get_lowered_submodules
    from payload_interpreter import recording_compiles, run_in_subprocess

    module = exportable(name)
    eager = copy.deepcopy(module.model)
    partitioner = CudaGqaPartitioner(**SPECS)
    kernels = {}
    with recording_compiles(kernels):
        edge = to_edge_transform_and_lower(export(module, dynamic=True), partitioner=[partitioner])
    program = edge.exported_program()
    assert [d.delegated for d in partitioner.report] == [True] * LAYERS
    # The caches live in the delegates: the program neither plans nor copies them.
    buffers = {spec.target for spec in program.graph_signature.input_specs if spec.target}
    assert not any("key_cache" in b or "value_cache" in b for b in buffers)
    delegates = [m for _, m, _ in get_lowered_submodules(program.graph_module)]
    assert len(delegates) == LAYERS

    lowered = program.module()
    calls = _record_delegate_calls(lowered)
    gen = torch.Generator().manual_seed(1)
    position = 0
    for length in steps(dynamic=True):
        tokens = torch.randint(0, TINY["vocab_size"], (1, length), generator=gen)
        kwargs = dict(input_ids=tokens, cache_position=torch.arange(position, position + length))
        with torch.no_grad():
            torch.testing.assert_close(lowered(**kwargs), eager(**kwargs), atol=1e-5, rtol=1e-5)
        position += length

    assert len(calls) == LAYERS and all(len(c) == len(steps(dynamic=True)) for c in calls.values())
    case = {"kernels": kernels, "programs": [{"payload": d.processed_bytes, "calls": [i for i, _ in calls[d]]}
                                             for d in delegates]}
    for delegate, result in zip(delegates, run_in_subprocess(case, tmp_path)):
        for got, (_, want) in zip(result["outputs"], calls[delegate]):
            assert [g.shape for g in got] == [w.shape for w in want]
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
        _check_launchers_agree(delegate.processed_bytes)


def _check_launchers_agree(payload: bytes) -> None:
    """The C++ launcher (build/libcuda_gqa_backend.so, no GPU needed) evaluates the launches of
    calls of every token count as the Python one does (the new rows, positions and mask all
    take the query's dynamic length)."""
    import ctypes
    from pathlib import Path

    from cuda_gqa.runtime.launch_plan import ArgInfo, LaunchPlan, evaluate_launch_cpp

    library = Path(__file__).resolve().parents[2] / "build" / "libcuda_gqa_backend.so"
    if not library.is_file():
        pytest.fail(f"{library} not found: run `make build` first")
    lib = ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    plan = LaunchPlan(payload)
    for tokens in range(1, MAX_TOKENS + 1):
        args = []
        for i, (dtype, sizes, _) in enumerate(plan.specs):
            sizes = tuple(tokens if s == -1 else s for s in sizes)
            strides = [1] * len(sizes)
            for d in range(len(sizes) - 2, -1, -1):
                strides[d] = strides[d + 1] * sizes[d + 1]
            args.append(ArgInfo(dtype=dtype, sizes=sizes, strides=tuple(strides),
                                address=0x7F00_0000_0000 + i * 0x100000))
        for k in range(len(plan.kernels(plan.select(args)))):
            launch = plan.evaluate(k, args, workspace=0x7E00_0000_0000)
            assert evaluate_launch_cpp(payload, k, args, workspace=0x7E00_0000_0000, lib=lib) == launch, tokens
