"""ExecuTorch's own llama export with CudaGqaPartitioner beside XNNPACK (issue 6).

The pipeline of the executorch wheel (executorch.examples.models.llama:
_prepare_for_llama_export with use_kv_cache and use_sdpa_with_kv_cache,
LLMEdgeManager.export / to_edge_transform_and_lower / to_executorch) on a
tiny random Llama config: its attention is `llama::custom_sdpa` and its cache
writes `llama::update_cache`, on [B, S, H, D] tensors, with a dynamic token
count. Every layer's attention and both cache updates must reach
CudaGqaBackend, the payloads must be valid (and evaluate alike in the C++ and
Python launchers), and, run on the CPU (payload_interpreter.py: the
payload's own launch plans, its kernels under TRITON_INTERPRET=1), a
delegate must compute what ExecuTorch's ops compute for a prefill and then
decode steps over the cache it filled. Smaller modules calling the llama
ops directly cover what is left on the CPU and attention without its
cache updates.
"""

from __future__ import annotations

import copy
import ctypes
import json
from pathlib import Path

import pytest
import torch
from executorch.exir import to_edge_transform_and_lower
from executorch.exir.lowered_backend_module import get_lowered_submodules
from torch import nn

from cuda_gqa.backends.partition import CudaGqaPartitioner
from cuda_gqa.backends.sdpa import TAKEN_LLAMA_SDPA_OP, TAKEN_LLAMA_UPDATE_OP, _aten_target
from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.runtime.launch_plan import ArgInfo, LaunchPlan, evaluate_launch_cpp
from cuda_gqa.runtime.pte_delegates import cuda_gqa_delegates

from payload_interpreter import recording_compiles, run_in_subprocess

llama_ops = pytest.importorskip("executorch.extension.llm.custom_ops.custom_ops")

LAYERS, DIM, HEADS, KV_HEADS, MAX_SEQ = 2, 128, 4, 2, 64
HEAD_DIM = DIM // HEADS
PARAMS = dict(dim=DIM, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=KV_HEADS, vocab_size=64, multiple_of=32,
              norm_eps=1e-5)
SPECS = dict(archs=["sm_90"], ptx=False, generic_plans=False)  # one arch: a short export
LIBRARY = Path(__file__).resolve().parents[2] / "build" / "libcuda_gqa_backend.so"


def _partitioner(**options) -> CudaGqaPartitioner:
    return CudaGqaPartitioner(**SPECS, **options)


def _initialize(model: nn.Module) -> None:
    """Without a checkpoint, ExecuTorch's example model initialises only what has a
    reset_parameters (its tensors are made on the meta device, then emptied): RMSNorm
    weights and the RoPE tables hold whatever memory held. Give them real values."""
    from executorch.examples.models.llama.rope import Rope

    tables = Rope(model.params)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith(("freqs_cos", "freqs_sin")):
                buffer.copy_(getattr(tables, name.rsplit(".", 1)[1]))
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1 + 0.1 * torch.randn(parameter.shape, generator=gen))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """ExecuTorch's llama export of a tiny config, lowered with CudaGqaPartitioner then XNNPACK."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.examples.models.llama.export_llama_lib import _prepare_for_llama_export
    from executorch.extension.llm.export.config.llm_config import LlmConfig

    root = tmp_path_factory.mktemp("executorch_llama")
    (root / "params.json").write_text(json.dumps(PARAMS))
    config = LlmConfig()
    config.base.params = str(root / "params.json")  # no checkpoint: random weights
    config.model.use_kv_cache = True
    config.model.use_sdpa_with_kv_cache = True  # llama::custom_sdpa + llama::update_cache
    config.export.max_seq_length = MAX_SEQ
    config.export.max_context_length = MAX_SEQ
    config.export.output_dir = str(root)
    torch.manual_seed(0)
    manager = _prepare_for_llama_export(config)
    _initialize(manager.model)
    eager = copy.deepcopy(manager.model)  # before export: caches still zero
    manager.export()

    partitioner = _partitioner()
    rewritten = []  # the program as the partitioner rewrote it before decompositions, runnable on the CPU
    transform = partitioner.transform_for_pre_decomposition

    def keep_rewritten(program):
        program = transform(program)
        rewritten.append(program.module())
        return program

    partitioner.transform_for_pre_decomposition = keep_rewritten
    kernels = {}
    with recording_compiles(kernels):
        manager.to_edge_transform_and_lower([partitioner, XnnpackPartitioner()])
    edge = manager.edge_manager.exported_program()
    manager.to_executorch()
    return dict(manager=manager, partitioner=partitioner, edge=edge, eager=eager, rewritten=rewritten[0],
                kernels=kernels, pte=bytes(manager.export_program.buffer), root=root)


def _cache_names(layer: int) -> str:
    return f"layers.{layer}.attention.kv_cache.k_cache, layers.{layer}.attention.kv_cache.v_cache"


def _cuda_gqa_delegates(program) -> list:
    return [m for _, m, _ in get_lowered_submodules(program.graph_module) if m.backend_id == "CudaGqaBackend"]


def test_every_layer_attention_and_both_cache_updates_are_delegated(pipeline):
    report, edge = pipeline["partitioner"].report, pipeline["edge"]
    assert len(report) == LAYERS and all(d.delegated for d in report), report
    for layer, decision in enumerate(report):
        assert decision.module == f"layers.{layer}.attention.SDPA"
        assert decision.reason.startswith(f"llama.custom_sdpa [B, S, H, D], GQA {HEADS}/{KV_HEADS} heads"), decision
        assert decision.reason.endswith(f"KV cache owned by the delegate ({_cache_names(layer)})"), decision
    # Nothing of the attention is left on the CPU: no llama op, no functionalized cache write,
    # no cache buffer planned, copied or written back by the program.
    left = {str(n.target) for n in edge.graph.nodes if n.op == "call_function"}
    assert not [t for t in left if "llama" in t or "auto_functionalized" in t or "cuda_gqa" in t], left
    assert edge.graph_signature.buffers_to_mutate == {}
    assert not [s.target for s in edge.graph_signature.input_specs if s.target and "kv_cache" in s.target]
    delegates = _cuda_gqa_delegates(edge)
    assert len(delegates) == LAYERS
    for layer, delegate in enumerate(delegates):
        inner = delegate.original_module
        ops = [_aten_target(n) for n in inner.graph.nodes if n.op == "call_function"]
        assert sorted(map(str, ops)) == sorted(map(str, [TAKEN_LLAMA_UPDATE_OP] * 2 + [TAKEN_LLAMA_SDPA_OP]))
        assert set(inner.graph_signature.buffers_to_mutate.values()) == set(_cache_names(layer).split(", "))
    # XNNPACK took the rest, as it does without CudaGqaPartitioner.
    assert any(m.backend_id == "XnnpackBackend" for _, m, _ in get_lowered_submodules(edge.graph_module))


def _args(plan: LaunchPlan, q_len: int) -> list[ArgInfo]:
    """Delegate arguments of a call with q_len tokens (inputs, output, states), at fake aligned addresses."""
    args = []
    for i, (dtype, sizes, _) in enumerate(plan.specs):
        sizes = tuple(q_len if s == -1 else s for s in sizes)
        strides = [1] * len(sizes)
        for d in range(len(sizes) - 2, -1, -1):
            strides[d] = strides[d + 1] * sizes[d + 1]
        args.append(ArgInfo(dtype=dtype, sizes=sizes, strides=tuple(strides), address=0x7F00_0000_0000 + i * 0x100000))
    return args


def _cpp_library() -> ctypes.CDLL:
    if not LIBRARY.is_file():
        pytest.fail(f"{LIBRARY} not found: run `make build` first")
    return ctypes.CDLL(str(LIBRARY), mode=ctypes.RTLD_GLOBAL)


def test_payloads_are_valid_and_both_launchers_agree(pipeline):
    payloads, named_data = cuda_gqa_delegates(pipeline["pte"])
    assert len(payloads) == LAYERS
    for layer, data in enumerate(sorted(payloads, key=lambda d: LaunchPlan(d).states[0][0])):
        plan = LaunchPlan(data, device_cc=90, named_data=named_data)
        cache = (1, MAX_SEQ, KV_HEADS, HEAD_DIM)  # [B, S_max, H_kv, D], as the buffers were
        assert plan.states == [(name, fb.DType.Float32, cache) for name in _cache_names(layer).split(", ")]
        # Per call only q, the new K/V rows ([B, L, H, D], L dynamic) and the start position cross.
        inputs = sorted((dtype, sizes) for dtype, sizes, _ in plan.specs[:plan.num_inputs])
        rows = lambda heads: (fb.DType.Float32, (1, -1, heads, HEAD_DIM))
        assert inputs == sorted([rows(HEADS), rows(KV_HEADS), rows(KV_HEADS), (fb.DType.Int64, ())])
        assert plan.specs[plan.num_inputs][1] == (1, -1, HEADS, HEAD_DIM)
        assert all(plan.names(p)[0] == "kv_cache_write" for p in range(len(plan.plans)))
        for q_len in (1, 7, 40, MAX_SEQ - 1):  # decode, chunks, the longest prefill
            plan.select(_args(plan, q_len))
        # The C++ launcher (build/libcuda_gqa_backend.so, no GPU needed) evaluates these launches alike.
        lib = _cpp_library()
        for q_len in (1, 40):
            args = _args(plan, q_len)
            for k in range(len(plan.kernels(plan.select(args)))):
                launch = plan.evaluate(k, args, workspace=0x7E00_0000_0000)
                assert evaluate_launch_cpp(data, k, args, workspace=0x7E00_0000_0000, device_cc=90,
                                           lib=lib) == launch


def _delegate_roles(delegate) -> dict[str, int]:
    """Input index of q, the K and V rows and the start position in a llama attention delegate."""
    inner = delegate.original_module
    user_inputs = set(inner.graph_signature.user_inputs)
    inputs = [n.name for n in inner.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    roles = {}
    for node in inner.graph.nodes:
        target = _aten_target(node) if node.op == "call_function" else None
        if target == TAKEN_LLAMA_SDPA_OP:
            roles["q"], roles["start"] = inputs.index(node.args[0].name), inputs.index(node.args[3].name)
        elif target == TAKEN_LLAMA_UPDATE_OP:
            buffer = inner.graph_signature.inputs_to_buffers[node.args[0].name]
            roles["k" if buffer.endswith("k_cache") else "v"] = inputs.index(node.args[1].name)
    return roles


def _llama_reference(calls, dtype=torch.float32):
    """ExecuTorch's ops over zeroed caches: outputs per call, and the caches after them."""
    k_cache = torch.zeros(1, MAX_SEQ, KV_HEADS, HEAD_DIM, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    outputs = []
    for q, k, v, start in calls:
        torch.ops.llama.update_cache(k, k_cache, start)
        torch.ops.llama.update_cache(v, v_cache, start)
        outputs.append(torch.ops.llama.custom_sdpa(q, k_cache, v_cache, start, None, 0.0, True))
    return outputs, (k_cache, v_cache)


def _steps(gen):
    """A 20-token prefill (the forward kernel), a 3-token chunk and a decode step (split-KV decode)."""
    steps, start = [], 0
    for length in (20, 3, 1):
        q = torch.randn(1, length, HEADS, HEAD_DIM, generator=gen)
        k, v = (torch.randn(1, length, KV_HEADS, HEAD_DIM, generator=gen) for _ in range(2))
        steps.append((q, k, v, start))
        start += length
    return steps


def test_a_delegate_computes_what_executorch_ops_compute(pipeline, tmp_path):
    """A layer's payload, run on the CPU from a zeroed cache, against llama::update_cache +
    llama::custom_sdpa: outputs of each step and the cache contents after them."""
    (delegate, *_) = _cuda_gqa_delegates(pipeline["edge"])
    roles = _delegate_roles(delegate)
    steps = _steps(torch.Generator().manual_seed(1))
    calls = []
    for q, k, v, start in steps:
        inputs = [None] * 4
        inputs[roles["q"]], inputs[roles["k"]], inputs[roles["v"]] = q, k, v
        inputs[roles["start"]] = torch.tensor(start)
        calls.append(inputs)
    case = {"kernels": pipeline["kernels"], "programs": [{"payload": delegate.processed_bytes, "calls": calls}]}
    (result,) = run_in_subprocess(case, tmp_path)
    expected, caches = _llama_reference(steps)
    for (out,), want in zip(result["outputs"], expected):
        assert out.shape == want.shape
        torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    # The states are the caches (K, V in the payload's order), written at start_pos onwards.
    for state, cache in zip(result["states"], caches):
        assert torch.equal(state, cache)


def test_the_rewritten_program_computes_what_the_eager_model_computes(pipeline):
    """The whole model as the partitioner rewrote it (taken ops on their CPU reference,
    transposes dropped, the start position read from input_pos) against ExecuTorch's eager
    model: logits of a prefill and two decode steps over the caches each fills."""
    eager, rewritten = pipeline["eager"], pipeline["rewritten"]
    taken = [_aten_target(n) for n in rewritten.graph.nodes if n.op == "call_function"]
    assert taken.count(TAKEN_LLAMA_SDPA_OP) == LAYERS and taken.count(TAKEN_LLAMA_UPDATE_OP) == 2 * LAYERS
    gen = torch.Generator().manual_seed(2)
    position = 0
    for length in (6, 1, 1):
        tokens = torch.randint(0, PARAMS["vocab_size"], (1, length), generator=gen)
        inputs = (tokens, {"input_pos": torch.tensor([position])})
        with torch.no_grad():
            torch.testing.assert_close(rewritten(*inputs), eager(*inputs), atol=1e-5, rtol=1e-5)
        position += length


# --------------------------------------------------------------------------
# the llama ops in smaller modules


class LlamaAttention(nn.Module):
    """One layer's cache writes and attention as ExecuTorch's CustomKVCache and SDPACustom
    write them. leak: the K cache is also read after the attention; mask / start: what
    custom_sdpa is given instead of None / input_pos[0].item()."""

    def __init__(self, leak=False, mask=False, start=None):
        super().__init__()
        self.leak, self.mask, self.start = leak, mask, start
        self.register_buffer("k_cache", torch.zeros(1, MAX_SEQ, KV_HEADS, HEAD_DIM))
        self.register_buffer("v_cache", torch.zeros(1, MAX_SEQ, KV_HEADS, HEAD_DIM))

    def forward(self, q, k, v, input_pos):
        start = input_pos[0].item()
        torch.ops.llama.update_cache(k, self.k_cache, start)
        torch.ops.llama.update_cache(v, self.v_cache, start)
        if self.mask:
            mask = torch.zeros(q.shape[1], MAX_SEQ)
            y = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, 0, mask, 0.0, False)
        else:
            y = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, start if self.start is None else self.start,
                                            None, 0.0, True)
        return (y, self.k_cache.sum()) if self.leak else y


def _lower(model, length=3, **options):
    gen = torch.Generator().manual_seed(3)
    inputs = (torch.randn(1, length, HEADS, HEAD_DIM, generator=gen),
              *(torch.randn(1, length, KV_HEADS, HEAD_DIM, generator=gen) for _ in range(2)), torch.tensor([4]))
    tokens = torch.export.Dim("tokens", max=MAX_SEQ - 1)  # as ExecuTorch's export: a dynamic token count
    dynamic = ({1: tokens}, {1: tokens}, {1: tokens}, None)
    partitioner = _partitioner(**options)
    kernels = {}
    with recording_compiles(kernels):
        edge = to_edge_transform_and_lower(torch.export.export(model, inputs, dynamic_shapes=dynamic),
                                           partitioner=[partitioner])
    return partitioner.report, edge.exported_program(), kernels


@pytest.mark.parametrize("case", ["cache read elsewhere", "own_kv_cache=False"])
def test_attention_without_its_cache_updates_reads_the_program_caches(case, tmp_path):
    """The caches stay with the program (its llama::update_cache on the CPU); the delegate
    takes the whole caches and bounds the keys at start_pos + L_q itself."""
    report, program, kernels = _lower(LlamaAttention(leak=case == "cache read elsewhere"),
                                      own_kv_cache=case != "own_kv_cache=False")
    (decision,) = report
    assert decision.delegated and "KV cache" not in decision.reason and "causal from start_pos" in decision.reason
    assert set(program.graph_signature.buffers_to_mutate.values()) == {"k_cache", "v_cache"}
    (delegate,) = _cuda_gqa_delegates(program)
    plan = LaunchPlan(delegate.processed_bytes)
    assert plan.states == [] and plan.names(0)[0] == "kv_len_from_start"
    if case != "own_kv_cache=False":
        return
    # q, the two caches [B, S_max, H_kv, D] and the start position, in the delegate's input order.
    inner = delegate.original_module
    (sdpa,) = [n for n in inner.graph.nodes if n.op == "call_function" and _aten_target(n) == TAKEN_LLAMA_SDPA_OP]
    names = [n.name for n in inner.graph.nodes if n.op == "placeholder"]
    order = [names.index(a.name) for a in sdpa.args[:4]]
    steps = _steps(torch.Generator().manual_seed(4))
    expected, _ = _llama_reference(steps)
    k_cache = torch.zeros(1, MAX_SEQ, KV_HEADS, HEAD_DIM)
    v_cache = torch.zeros_like(k_cache)
    calls = []
    for q, k, v, start in steps:  # the program's own cache writes, on the CPU
        k_cache[:, start:start + k.shape[1]] = k
        v_cache[:, start:start + v.shape[1]] = v
        operands = [q, k_cache.clone(), v_cache.clone(), torch.tensor(start)]
        inputs = [None] * 4
        for index, operand in zip(order, operands):
            inputs[index] = operand
        calls.append(inputs)
    (result,) = run_in_subprocess({"kernels": kernels, "programs": [{"payload": delegate.processed_bytes,
                                                                      "calls": calls}]}, tmp_path)
    for (out,), want in zip(result["outputs"], expected):
        torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case,reason", [
    ("mask", "llama.custom_sdpa with an attn_mask"),
    ("constant start", "llama.custom_sdpa start_pos 2 is not read from a one-element integer tensor"),
])
def test_what_the_kernels_do_not_run_stays_on_the_cpu_with_a_reason(case, reason):
    model = LlamaAttention(mask=case == "mask", start=2 if case == "constant start" else None)
    report, program, _ = _lower(model)
    (decision,) = report
    assert not decision.delegated and decision.reason.startswith(reason), decision
    assert not _cuda_gqa_delegates(program)
    left = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert any("custom_sdpa" in t for t in left) and not any("cuda_gqa" in t for t in left)
