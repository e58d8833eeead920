"""ExecuTorch's own llama export taken whole by CudaGqaModelPartitioner (issue 17, item 1).

The pipeline of tests/partition/test_executorch_llama.py (the executorch
wheel's _prepare_for_llama_export with use_kv_cache and
use_sdpa_with_kv_cache on a tiny random Llama: `llama::custom_sdpa` and
`llama::update_cache` on [B, S, H, D] caches, interleaved RoPE from
freqs tables sliced at input_pos, a dynamic token count, logits of the last
token only), lowered with CudaGqaModelPartitioner alone: one CudaGqaBackend
delegate holds the whole `forward`, with the caches as its states, and its
payload, run on the CPU (payload_interpreter.py), gives ExecuTorch eager's
logits for a prefill and then decode steps over the caches it filled.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from cuda_gqa.backends.partition import CudaGqaModelPartitioner
from cuda_gqa.runtime.launch_plan import LaunchPlan
from payload_interpreter import recording_compiles, run_in_subprocess
from whole_programs import delegate_input_names, delegates, named_data

pytest.importorskip("executorch.extension.llm.custom_ops.custom_ops")
from test_executorch_llama import LAYERS, MAX_SEQ, PARAMS, SPECS, _initialize  # noqa: E402


@pytest.fixture(scope="module", params=[False, True], ids=["last-token-logits", "full-logits"])
def whole(request, tmp_path_factory):
    """The pipeline lowered whole; its param: generate_full_logits (logits of every row, [1, L, V],
    instead of the last token's [1, V])."""
    from executorch.examples.models.llama.export_llama_lib import _prepare_for_llama_export
    from executorch.extension.llm.export.config.llm_config import LlmConfig

    root = tmp_path_factory.mktemp("executorch_llama_whole")
    (root / "params.json").write_text(json.dumps(PARAMS))
    config = LlmConfig()
    config.base.params = str(root / "params.json")
    config.model.use_kv_cache = True
    config.model.use_sdpa_with_kv_cache = True
    config.export.max_seq_length = MAX_SEQ
    config.export.max_context_length = MAX_SEQ
    config.export.output_dir = str(root)
    config.debug.generate_full_logits = request.param
    torch.manual_seed(0)
    manager = _prepare_for_llama_export(config)
    _initialize(manager.model)
    eager = copy.deepcopy(manager.model)
    manager.export()
    partitioner = CudaGqaModelPartitioner(**SPECS)
    kernels = {}
    with recording_compiles(kernels):
        manager.to_edge_transform_and_lower([partitioner])
    return dict(edge=manager.edge_manager, partitioner=partitioner, eager=eager, kernels=kernels)


def test_one_delegate_holds_the_whole_forward(whole):
    partitioner, edge = whole["partitioner"], whole["edge"]
    assert partitioner.model_report.startswith("whole step"), partitioner.model_report
    left = [str(n.target) for n in edge.exported_program().graph.nodes if n.op == "call_function"]
    assert [t for t in left if t not in ("executorch_call_delegate", "<built-in function getitem>")] == []
    (delegate,) = delegates(edge)
    assert delegate.backend_id == "CudaGqaBackend"
    # The caches are the delegate's states, no longer the program's buffers.
    assert edge.exported_program().graph_signature.buffers_to_mutate == {}
    plan = LaunchPlan(delegate.processed_bytes, named_data=named_data(delegate))
    caches = sorted(name for name, _, _ in plan.states)
    assert caches == sorted(f"layers.{i}.attention.kv_cache.{kv}_cache" for i in range(LAYERS) for kv in "kv")
    assert len(partitioner.report) == LAYERS and all(d.delegated for d in partitioner.report)


def test_a_prefill_then_decode_steps_give_executorch_eager_logits(whole, tmp_path):
    delegate = delegates(whole["edge"])[0]
    names = delegate_input_names(delegate)
    generator = torch.Generator().manual_seed(2)
    steps, position = [], 0
    for length in (6, 1, 1):
        steps.append((torch.randint(0, PARAMS["vocab_size"], (1, length), generator=generator),
                      torch.tensor([position])))
        position += length
    calls = [[tokens if "token" in n else pos for n in names] for tokens, pos in steps]
    program = {"payload": delegate.processed_bytes, "calls": calls, "named_data": named_data(delegate)}
    (result,) = run_in_subprocess({"kernels": whole["kernels"], "programs": [program]}, tmp_path)
    eager = whole["eager"]
    for (logits,), (tokens, pos) in zip(result["outputs"], steps):
        with torch.no_grad():
            expected = eager(tokens, {"input_pos": pos})
        expected = expected[0] if isinstance(expected, tuple) else expected
        assert logits.shape == expected.shape
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
