"""export_llm with the KV cache owned by CudaGqaBackend (issue 6), on the CPU: the partition
report, the top-level program without caches, the payloads' states and cache-write kernels,
and a .pte whose size does not carry the caches."""

import dataclasses

import pytest
import torch
from executorch.exir._serialize._program import deserialize_pte_binary

from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.export.llm.decoder import Decoder
from cuda_gqa.export.llm.pipeline import export_llm
from cuda_gqa.export.llm.presets import PRESETS, randomize_weights
from cuda_gqa.runtime.launch_plan import LaunchPlan
from cuda_gqa.runtime.pte_delegates import cuda_gqa_delegates

from llm_models import MAX_SEQ_LEN, PREFILL_LEN

LAYERS = 2
CONFIG = dataclasses.replace(PRESETS["tiny-llama3"], num_layers=LAYERS)


def _export(max_seq_len: int, tmp_path):
    model = randomize_weights(Decoder(CONFIG, max_seq_len=max_seq_len)).eval()
    return export_llm(model, prefill_len=PREFILL_LEN, archs=["sm_90"], cpu_partitioner=None, whole_model=False,
                      out=tmp_path / f"llama-{max_seq_len}.pte")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return _export(MAX_SEQ_LEN, tmp_path_factory.mktemp("kv_cache"))


def _cache_shape(max_seq_len: int) -> list[int]:
    return [1, CONFIG.num_kv_heads, max_seq_len, CONFIG.head_dim]


def test_every_attention_layer_is_delegated_with_its_cache_update(exported):
    for method in ("prefill", "decode"):
        report = exported.reports[method]
        assert len(report) == LAYERS and all(d.delegated for d in report), report
        for layer, decision in enumerate(report):
            assert decision.reason.endswith(f"KV cache owned by the delegate (layers.{layer}.self_attn.k_cache, "
                                            f"layers.{layer}.self_attn.v_cache)"), decision.reason


def test_the_top_level_program_no_longer_holds_or_copies_caches(exported):
    for method in ("prefill", "decode"):
        signature = exported.program.exported_program(method).graph_signature
        assert signature.buffers_to_mutate == {}
        assert not [spec for spec in signature.input_specs if spec.target and "cache" in spec.target]
    # No tensor of a cache's shape anywhere in the emitted plans (the old export
    # planned each cache as a mutable buffer and passed it to the delegate).
    program = deserialize_pte_binary(exported.pte.read_bytes()).program
    for plan in program.execution_plan:
        shapes = [list(v.val.sizes) for v in plan.values if hasattr(v.val, "sizes")]
        assert _cache_shape(MAX_SEQ_LEN) not in shapes, plan.name


def test_payloads_carry_states_and_the_cache_write_kernel(exported):
    payloads, named_data = cuda_gqa_delegates(exported.pte.read_bytes())
    assert len(payloads) == 2 * LAYERS  # a delegate per layer and method
    seen = set()
    for data in payloads:
        plan = LaunchPlan(data, device_cc=90, named_data=named_data)
        # One aligned plan: export_llm's delegate tensors are all planned by
        # ExecuTorch, so it compiles no generic plans.
        assert len(plan.plans) == 1
        layer = int(plan.states[0][0].split(".")[1])
        cache = tuple(_cache_shape(MAX_SEQ_LEN))
        assert plan.states == [(f"layers.{layer}.self_attn.{kv}_cache", fb.DType.Float32, cache) for kv in "kv"]
        # q, the new K and V rows, their positions and the mask cross from the host
        # (in the delegate's placeholder order); the caches do not.
        inputs = [(dtype, sizes) for dtype, sizes, _ in plan.specs[:plan.num_inputs]]
        (l_new,) = [sizes[0] for dtype, sizes in inputs if dtype == fb.DType.Int64]
        seen.add((layer, l_new))
        new_rows = (fb.DType.Float32, (1, CONFIG.num_kv_heads, l_new, CONFIG.head_dim))
        assert sorted(inputs) == sorted([(fb.DType.Float32, (1, CONFIG.num_heads, l_new, CONFIG.head_dim)), new_rows,
                                         new_rows, (fb.DType.Int64, (l_new,)),
                                         (fb.DType.Bool, (1, 1, l_new, MAX_SEQ_LEN))])
        assert plan.names(0)[0] == "kv_cache_write"
        states = {plan.num_inputs + plan.num_outputs + i for i in range(2)}
        write, *attention = plan.kernels(0)

        def kv_len_slots(kernel):
            return {(int(p.workspaceOffset), int(p.workspaceExtent)) for p in kernel.params
                    if int(p.kind) == fb.ParamKind.Workspace and int(p.workspaceExtent) == 4}

        # The cache write stores kv_len where the attention kernel reads it.
        assert kv_len_slots(write) and kv_len_slots(write) == kv_len_slots(attention[0])
        state_pointers = lambda k: {p.arg for p in k.params if int(p.kind) == fb.ParamKind.TensorPointer} & states
        assert state_pointers(write) == states == state_pointers(attention[0])
    assert seen == {(layer, l_new) for layer in range(LAYERS) for l_new in (PREFILL_LEN, 1)}


def test_pte_size_does_not_carry_the_caches(exported, tmp_path):
    """From max_seq_len 24 to 1024 the .pte grows by the RoPE tables and by kernels
    planned for the longer cache, never by cache contents (2 layers x K, V x 64 KiB here)."""
    longer = _export(1024, tmp_path)
    images = lambda e: sum(map(len, cuda_gqa_delegates(e.pte.read_bytes())[1].values()))
    payloads = lambda e: sum(map(len, cuda_gqa_delegates(e.pte.read_bytes())[0]))
    rope_growth = 2 * (1024 - MAX_SEQ_LEN) * CONFIG.head_dim * 4  # cos and sin tables, float32
    unexplained = (longer.size_bytes - exported.size_bytes - rope_growth - (images(longer) - images(exported))
                   - (payloads(longer) - payloads(exported)))
    cache_growth = LAYERS * 2 * 4 * (1024 - MAX_SEQ_LEN) * CONFIG.num_kv_heads * CONFIG.head_dim
    assert abs(unexplained) < 8192 < cache_growth, (unexplained, cache_growth)


@pytest.mark.parametrize("preset,cpu_partitioner", [("tiny-gemma2", None), ("tiny-mistral", "xnnpack")])
def test_soft_capped_and_windowed_layers_beside_xnnpack_own_their_caches_too(preset, cpu_partitioner):
    """Gemma 2's written-out soft-capped attention (folded into one call) and Mistral's
    sliding-window mask with XNNPACK taking the rest: the caches still go to the delegates."""
    from llm_models import one_layer

    result = export_llm(one_layer(preset), prefill_len=PREFILL_LEN, archs=["sm_90"], cpu_partitioner=cpu_partitioner,
                        whole_model=False)
    for method in ("prefill", "decode"):
        (decision,) = result.reports[method]
        assert decision.delegated and "KV cache owned by the delegate" in decision.reason, decision
        assert result.program.exported_program(method).graph_signature.buffers_to_mutate == {}
