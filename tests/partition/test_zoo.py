"""Every model-zoo block (export/zoo.py: GQA written as each family writes it) is delegated as written.

For each: the partition report delegates its one attention call and says
what the delegate runs; nothing of the attention is left on the CPU; the
payload in the .pte passes the C++ runtime's validation and reads the
unexpanded K/V (H_kv heads), the mask where there is one, and the query.
"""

import pytest
import torch
from executorch.exir.lowered_backend_module import get_lowered_submodules

from cuda_gqa.backends.serialization import deserialize_payload
from cuda_gqa.backends.serialization.dtypes import torch_dtype_codes
from cuda_gqa.export.lower import lower_to_executorch
from cuda_gqa.export.zoo import ZOO, make_zoo_model
from cuda_gqa.runtime import validate_payload
from cuda_gqa.runtime.pte_delegates import cuda_gqa_delegates

DTYPE = torch.float16
CODES = torch_dtype_codes(torch)
# What each block's report line must say beyond heads, head dim and dtype.
REPORTED = {
    "llama-hf": ("GQA 8/2 heads", "causal", "K/V expansion (repeat_kv) folded in"),
    "qwen2": ("GQA 14/2 heads", "additive float16 mask [1, 1, 48, 48]", "K/V expansion (repeat_kv) folded in"),
    "mistral": ("GQA 8/2 heads, D=128", "bool mask [1, 1, 80, 80]"),
    "mqa": ("GQA 8/1 heads", "causal", "K/V expansion (repeat_interleave) folded in"),
    "mha": ("MHA 4/4 heads", "causal"),
    "gemma2": ("GQA 8/4 heads", "soft-cap 3", "additive float32 mask [1, 1, 56, 56]",
               "K/V expansion (repeat_kv) folded in"),
}
ATTENTION_OPS = ("scaled_dot_product_attention", "softmax", "tanh", "repeat_interleave", "expand", "cuda_gqa")


def test_every_zoo_block_has_an_expectation():
    assert set(REPORTED) == set(ZOO)


@pytest.fixture(scope="module", params=sorted(ZOO))
def lowered(request):
    name = request.param
    model, inputs = make_zoo_model(name, DTYPE)
    program, report = lower_to_executorch(model, inputs, archs=["sm_80"], **ZOO[name].partitioner_options)
    return name, model, inputs, program, report


def test_the_attention_call_is_delegated_and_reported(lowered):
    name, _, _, _, report = lowered
    (decision,) = report
    assert decision.delegated, decision.reason
    for part in REPORTED[name]:
        assert part in decision.reason


def test_nothing_of_the_attention_is_left_on_the_cpu(lowered):
    _, _, _, program, _ = lowered
    graph_module = program.exported_program().graph_module
    (_, delegate, _), = [d for d in get_lowered_submodules(graph_module) if d[1].backend_id == "CudaGqaBackend"]
    left = [str(n.target) for n in graph_module.graph.nodes if n.op == "call_function"]
    assert not [op for op in left if any(name in op for name in ATTENTION_OPS)]


def test_the_payload_is_valid_and_reads_unexpanded_kv(lowered):
    name, model, inputs, program, _ = lowered
    (payload,), named_data = cuda_gqa_delegates(program.buffer)
    assert validate_payload(payload) is None
    decoded = deserialize_payload(payload)
    batch, seq = inputs[0].shape[:2]
    q, k, v = ([batch, h, seq, model.head_dim] for h in (model.heads_q, model.heads_kv, model.heads_kv))
    specs = [(s.dtype, list(s.sizes)) for s in decoded.inputs]
    assert specs[:3] == [(CODES[DTYPE], q), (CODES[DTYPE], k), (CODES[DTYPE], v)]
    assert [(s.dtype, list(s.sizes)) for s in decoded.outputs] == [(CODES[DTYPE], q)]
    assert len(specs) == (4 if "mask" in " ".join(REPORTED[name]) else 3)
    for kernel in (k for plan in decoded.plans for k in plan.kernels):
        assert {c.arch for c in kernel.cubins} == {80}
        assert all(c.imageKey.decode() in named_data for c in kernel.cubins)
