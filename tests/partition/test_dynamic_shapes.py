"""Dynamic L_q / L_kv from torch.export: bounded ones are delegated (one payload for the
range), unbounded ones and the other dynamic cases stay on the CPU with a reason."""

import pytest
import torch
from executorch.exir import to_edge_transform_and_lower
from executorch.exir.lowered_backend_module import get_lowered_submodules
from torch.export import Dim

from cuda_gqa.backends.partition import CudaGqaPartitioner
from cuda_gqa.backends.serialization import deserialize_payload
from cuda_gqa.backends.serialization import payload_generated as fb



class Attention(torch.nn.Module):
    def __init__(self, **sdpa_kwargs):
        super().__init__()
        self.sdpa_kwargs = sdpa_kwargs

    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, **self.sdpa_kwargs)


def qkv(h_q=8, h_kv=2, d=64, l_q=16, l_kv=16, dtype=torch.float16):
    return (torch.randn(1, h_q, l_q, d, dtype=dtype), torch.randn(1, h_kv, l_kv, d, dtype=dtype),
            torch.randn(1, h_kv, l_kv, d, dtype=dtype))


def decide(model, inputs, dynamic_shapes, **options):
    """The partitioner's report for an exported program, without lowering (nothing compiles)."""
    partitioner = CudaGqaPartitioner(archs=[80], **options)
    ep = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)
    partitioner.partition(partitioner.transform_for_pre_decomposition(ep))
    return partitioner.report


L_Q, L_KV = Dim("l_q", min=1, max=32), Dim("l_kv", min=1, max=600)
GQA = Attention(enable_gqa=True)


def test_bounded_dynamic_lengths_are_delegated_with_their_ranges():
    (decision,) = decide(GQA, qkv(l_q=4, l_kv=8), ({2: L_Q}, {2: L_KV}, {2: L_KV}))
    assert decision.delegated
    assert decision.reason == "GQA 8/2 heads, D=64, float16, dynamic L_q 1..32, L_kv 1..600"


def test_one_dynamic_length_for_queries_and_keys():
    length = Dim("length", max=256)
    (decision,) = decide(Attention(enable_gqa=True, is_causal=True), qkv(l_q=8, l_kv=8),
                         ({2: length}, {2: length}, {2: length}))
    assert decision.delegated
    assert decision.reason == "GQA 8/2 heads, D=64, float16, dynamic L_q 1..256, L_kv = L_q, causal"


@pytest.mark.parametrize("model, shapes, reason", [
    (GQA, ({2: Dim("l_q")}, {2: L_KV}, {2: L_KV}),
     "L_q is dynamic without an upper bound: export it with torch.export.Dim(..., max=...)"),
    (GQA, ({2: L_Q}, {2: Dim("l_kv")}, {2: Dim("l_kv")}),
     "L_kv is dynamic without an upper bound: export it with torch.export.Dim(..., max=...)"),
    (GQA, ({0: Dim("batch", max=4)}, {0: Dim("batch", max=4)}, {0: Dim("batch", max=4)}),
     "batch, head counts and head dim must be static (only L_q and L_kv may be dynamic)"),
    (Attention(enable_gqa=True, is_causal=True), ({2: L_Q}, {2: L_KV}, {2: L_KV}),
     "is_causal with L_q (up to 32) that may exceed L_kv (from 1): give them one dynamic dim, "
     "or bounds that keep L_q <= L_kv"),
], ids=["unbounded L_q", "unbounded L_kv", "dynamic batch", "causal with independent lengths"])
def test_other_dynamic_calls_stay_on_the_cpu_with_a_reason(model, shapes, reason):
    batch = 2 if 0 in shapes[0] else 1
    inputs = tuple(torch.cat([t] * batch) for t in qkv(l_q=4, l_kv=8))
    (decision,) = decide(model, inputs, shapes)
    assert not decision.delegated
    assert decision.reason == reason


def test_bounds_above_the_compile_spec_max_seq_len_stay_on_the_cpu():
    (decision,) = decide(GQA, qkv(l_q=4, l_kv=8), ({2: L_Q}, {2: L_KV}, {2: L_KV}), max_seq_len=512)
    assert not decision.delegated
    assert decision.reason == "L_q=32, L_kv=600 exceed the compile spec max_seq_len=512"


def test_dynamic_payload_covers_the_exported_ranges():
    """Lowered for real: the payload's specs carry the bounds, the output takes q's length,
    and the dispatch table covers every L_q and L_kv of the ranges."""
    partitioner = CudaGqaPartitioner(archs=[80], ptx=False)
    ep = torch.export.export(GQA, qkv(l_q=4, l_kv=8), dynamic_shapes=({2: L_Q}, {2: L_KV}, {2: L_KV}))
    edge = to_edge_transform_and_lower(ep, partitioner=[partitioner])
    (_, lowered, _), = get_lowered_submodules(edge.exported_program().graph_module)
    payload = deserialize_payload(lowered.processed_bytes)
    assert [list(s.sizes) for s in payload.inputs + payload.outputs] == [[1, 8, -1, 64], [1, 2, -1, 64],
                                                                         [1, 2, -1, 64], [1, 8, -1, 64]]
    assert [list(s.maxSizes) for s in payload.inputs + payload.outputs] == [[1, 8, 32, 64], [1, 2, 600, 64],
                                                                            [1, 2, 600, 64], [1, 8, 32, 64]]
    # v's length is k's; the output's is q's.
    assert [[(d.dim, d.arg, d.argDim) for d in s.sizeFrom or []] for s in payload.inputs + payload.outputs] == [
        [], [], [(2, 1, 2)], [(2, 0, 2)]]
    for l_q in range(1, 33):
        for l_kv in (1, 2, 300, 511, 512, 599, 600):
            takes = [p for p in payload.plans
                     if all(r.min <= (l_q if r.arg == 0 else l_kv) <= r.max for r in p.when)]
            assert takes, (l_q, l_kv)
            kernels = [k.name for k in takes[0].kernels]
            assert kernels[0] == (b"gqa_decode_split" if l_q <= 16 else b"gqa_attention_fwd"), (l_q, kernels)
    assert all({(r.arg, r.dim) for r in p.when} == {(0, 2), (1, 2)} for p in payload.plans)
    assert all(k.params for p in payload.plans for k in p.kernels)
    assert fb.ParamKind.TensorSize in {q.kind for k in payload.plans[0].kernels for q in k.params}


def test_a_mask_over_the_dynamic_lengths_is_delegated():
    class Masked(torch.nn.Module):
        def forward(self, q, k, v, mask):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    q, k, v = qkv(l_q=4, l_kv=8)
    mask = torch.ones(1, 1, 4, 8, dtype=torch.bool)
    (decision,) = decide(Masked(), (q, k, v, mask), ({2: L_Q}, {2: L_KV}, {2: L_KV}, {2: L_Q, 3: L_KV}))
    assert decision.delegated, decision.reason
    assert decision.reason == "GQA 8/2 heads, D=64, float16, dynamic L_q 1..32, L_kv 1..600, bool mask [1, 1, L_q, L_kv]"


class MaskedRepeatKv(torch.nn.Module):
    """GQA written as MHA (Hugging Face's repeat_kv) over a static L_kv with a mask: a cache's shape."""

    def forward(self, q, k, v, mask):
        group = q.shape[1] // k.shape[1]
        b, h, l, d = k.shape
        k, v = (x[:, :, None].expand(b, h, group, l, d).reshape(b, h * group, l, d) for x in (k, v))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_a_mask_with_a_dynamic_l_q_and_a_static_l_kv_is_delegated():
    q, k, v = qkv(l_q=4, l_kv=32)
    mask = torch.ones(1, 1, 4, 32, dtype=torch.bool)
    (decision,) = decide(MaskedRepeatKv(), (q, k, v, mask), ({2: L_Q}, None, None, {2: L_Q}))
    assert decision.delegated, decision.reason
    assert decision.reason == ("GQA 8/2 heads, D=64, float16, dynamic L_q 1..32, L_kv 32, bool mask [1, 1, L_q, 32], "
                               "K/V expansion (repeat_kv) folded in")


def test_gqa_written_as_mha_reports_the_check_that_refused_its_gqa_form():
    """Not "MHA (H_q = H_kv = 8): pass include_mha=True", which only the expansion suggests."""
    q, k, v = qkv(l_q=4, l_kv=32)
    mask = torch.ones(1, 1, 4, 32, dtype=torch.bool)
    (decision,) = decide(MaskedRepeatKv(), (q, k, v, mask), ({2: L_Q}, None, None, {2: L_Q}),
                         dtypes=[torch.bfloat16])
    assert not decision.delegated
    assert decision.reason == "dtype float16 is not in the compile spec dtypes (bfloat16)"
