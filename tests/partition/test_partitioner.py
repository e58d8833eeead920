"""CudaGqaPartitioner takes exactly the GQA SDPA nodes and reports every attention node."""

import pytest
import torch
from executorch.exir import to_edge_transform_and_lower
from executorch.exir.lowered_backend_module import get_lowered_submodules
from torch import nn
from torch.nn import functional as F

from cuda_gqa.backends.partition import CudaGqaPartitioner
from cuda_gqa.backends.sdpa import is_sdpa


class Attention(nn.Module):
    """SDPA on given q/k/v: the partitioner sees exactly what the user wrote."""

    def __init__(self, **sdpa_kwargs):
        super().__init__()
        self.sdpa_kwargs = sdpa_kwargs

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, **self.sdpa_kwargs)


class ManualAttention(nn.Module):
    """Attention written as matmul + softmax: no SDPA node to take."""

    def forward(self, q, k, v):
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v


def qkv(h_q=8, h_kv=2, d=64, l_q=16, l_kv=16, dtype=torch.float16):
    return (torch.randn(1, h_q, l_q, d, dtype=dtype), torch.randn(1, h_kv, l_kv, d, dtype=dtype),
            torch.randn(1, h_kv, l_kv, d, dtype=dtype))


def lower(model, inputs, **options):
    partitioner = CudaGqaPartitioner(archs=[80], **options)
    edge = to_edge_transform_and_lower(torch.export.export(model, inputs), partitioner=[partitioner])
    graph_module = edge.exported_program().graph_module
    delegates = get_lowered_submodules(graph_module)
    sdpa_left = [n for n in graph_module.graph.nodes if is_sdpa(n)]
    return partitioner.report, delegates, sdpa_left


def test_gqa_sdpa_is_delegated_whole():
    report, delegates, sdpa_left = lower(Attention(is_causal=True, enable_gqa=True), qkv())
    assert [d.delegated for d in report] == [True]
    assert "GQA 8/2 heads, D=64, float16, causal" == report[0].reason
    assert len(delegates) == 1 and not sdpa_left
    _, lowered, _ = delegates[0]
    assert lowered.backend_id == "CudaGqaBackend"
    inner = [n for n in lowered.original_module.graph.nodes if n.op == "call_function"]
    assert len(inner) == 1 and is_sdpa(inner[0])


def test_attention_is_delegated_beside_xnnpack():
    """XNNPACK's decomposition table decomposes aten SDPA; the calls we take must reach us whole
    with XNNPACK after us in the list (as in every LLM export) and before us."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    from cuda_gqa.export.attention_demo import make_demo

    model, inputs = make_demo(torch.float32, seq_len=16)
    for order in (0, 1):
        ours = CudaGqaPartitioner(archs=[80])
        partitioners = [ours, XnnpackPartitioner()][::1 - 2 * order]
        edge = to_edge_transform_and_lower(torch.export.export(model, inputs), partitioner=partitioners)
        backends = [lowered.backend_id for _, lowered, _ in get_lowered_submodules(edge.exported_program().graph_module)]
        assert [d.delegated for d in ours.report] == [True]
        assert backends.count("CudaGqaBackend") == 1 and "XnnpackBackend" in backends


def test_each_gqa_attention_becomes_its_own_delegate():
    class TwoLayers(nn.Module):
        def forward(self, q, k, v):
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            return F.scaled_dot_product_attention(y, k, v, is_causal=True, enable_gqa=True)

    report, delegates, _ = lower(TwoLayers(), qkv())
    assert [d.delegated for d in report] == [True, True]
    assert len(delegates) == 2


@pytest.mark.parametrize(
    "model, inputs, reason",
    [
        (Attention(), qkv(h_q=8, h_kv=8), "MHA (H_q = H_kv = 8): pass include_mha=True to delegate it"),
        (Attention(enable_gqa=True), qkv(h_q=8, h_kv=8), "MHA (H_q = H_kv = 8)"),
        (Attention(enable_gqa=True, dropout_p=0.5), qkv(), "dropout_p=0.5"),
        (Attention(enable_gqa=True), qkv(d=72), "head dim 72 is not a multiple of 16"),
        (Attention(enable_gqa=True), qkv(d=512), "up to 256"),
        (Attention(is_causal=True, enable_gqa=True), qkv(l_q=20, l_kv=7), "is_causal with L_q=20 > L_kv=7"),
    ],
    ids=["mha", "mha-enable-gqa", "dropout", "head-dim-72", "head-dim-512", "causal-lq-over-lkv"],
)
def test_unsupported_attention_stays_on_cpu_with_a_reason(model, inputs, reason):
    report, delegates, sdpa_left = lower(model, inputs)
    assert len(report) == 1 and not report[0].delegated
    assert reason in report[0].reason
    assert not delegates


def test_pytorch_top_left_causal_attends_only_the_first_l_q_keys():
    """is_causal with L_q < L_kv is top-left aligned in PyTorch (query i sees keys 0..i):
    the payload hands the kernels L_kv = L_q as a constant instead of K's length."""
    from cuda_gqa.backends.serialization import deserialize_payload
    from cuda_gqa.backends.serialization import payload_generated as fb

    def key_lengths(model, inputs):
        report, delegates, _ = lower(model, inputs)
        assert [d.delegated for d in report] == [True]
        (kernel, *_), = [deserialize_payload(lowered.processed_bytes).plans[0].kernels for _, lowered, _ in delegates]
        sizes = [p.arg for p in kernel.params if p.kind == fb.ParamKind.TensorSize]
        return sizes, [p.i32Value for p in kernel.params if p.kind == fb.ParamKind.Int32Constant]

    # Decode shape (split kernel: L_q from q, L_kv = 4) and a prefill chunk.
    sizes, constants = key_lengths(Attention(is_causal=True, enable_gqa=True), qkv(l_q=4, l_kv=300))
    assert sizes == [0] and constants[0] == 4
    sizes, constants = key_lengths(Attention(is_causal=True, enable_gqa=True), qkv(l_q=40, l_kv=300))
    assert sizes == [0] and constants == [40]
    # Without is_causal every key is attended: L_kv is K's length.
    sizes, constants = key_lengths(Attention(enable_gqa=True), qkv(l_q=40, l_kv=300))
    assert sizes == [0, 1] and constants == []


def test_report_lists_every_call_in_order_with_its_module():
    class Layer(nn.Module):
        def __init__(self, gqa):
            super().__init__()
            self.gqa = gqa

        def forward(self, q, k, v):
            if self.gqa:
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            return F.scaled_dot_product_attention(q, q, q)  # MHA: stays on the CPU

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer(gqa=False), Layer(gqa=True)])

        def forward(self, q, k, v):
            return self.layers[1](self.layers[0](q, k, v), k, v)

    report, delegates, _ = lower(Model(), qkv())
    assert [(d.module, d.delegated) for d in report] == [("layers.0", False), ("layers.1", True)]
    assert len({d.node for d in report}) == 2 and len(delegates) == 1


@pytest.mark.parametrize("options, reason", [
    (dict(dtypes=["bfloat16"]), "dtype float16 is not in the compile spec dtypes (bfloat16)"),
    (dict(max_seq_len=8), "L_q=16, L_kv=16 exceed the compile spec max_seq_len=8"),
], ids=["dtypes", "max-seq-len"])
def test_compile_spec_limits_leave_attention_on_cpu(options, reason):
    report, delegates, _ = lower(Attention(enable_gqa=True), qkv(), **options)
    assert not delegates and report[0].reason == reason


def test_mha_is_delegated_when_asked():
    report, delegates, _ = lower(Attention(is_causal=True), qkv(h_q=8, h_kv=8), include_mha=True)
    assert [d.delegated for d in report] == [True] and len(delegates) == 1
    assert report[0].reason == "MHA 8/8 heads, D=64, float16, causal"


class Masked(nn.Module):
    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def mask_payload(model, inputs):
    """(report, payload) of a model with one delegated masked attention."""
    from cuda_gqa.backends.serialization import deserialize_payload

    report, delegates, _ = lower(model, inputs)
    assert [d.delegated for d in report] == [True], report
    ((_, lowered, _),) = delegates
    return report, deserialize_payload(lowered.processed_bytes)


@pytest.mark.parametrize("shape, dtype", [((16, 16), torch.bool), ((1, 1, 16, 16), torch.float16),
                                          ((1, 8, 16, 16), torch.bool), ((1, 1, 1, 16), torch.float32)],
                         ids=["2d-bool", "broadcast-heads-additive", "per-head-bool", "key-padding-additive-fp32"])
def test_masks_are_delegated_as_an_input(shape, dtype):
    from cuda_gqa.backends.serialization import payload_generated as fb

    mask = torch.rand(shape) > 0.3 if dtype == torch.bool else torch.randn(shape).to(dtype)
    report, payload = mask_payload(Masked(), (*qkv(), mask))
    kind = "bool" if dtype == torch.bool else f"additive {str(dtype).removeprefix('torch.')}"
    assert report[0].reason == f"GQA 8/2 heads, D=64, float16, {kind} mask {list(shape)}"
    assert len(payload.inputs) == 4 and list(payload.inputs[3].sizes) == list(shape)
    expected_dtype = {torch.bool: fb.DType.Bool, torch.float16: fb.DType.Float16, torch.float32: fb.DType.Float32}
    assert payload.inputs[3].dtype == expected_dtype[dtype]
    (kernel,) = payload.plans[0].kernels
    mask_params = [p for p in kernel.params if p.arg == 3 and p.kind in (fb.ParamKind.TensorPointer,
                                                                         fb.ParamKind.TensorStride)]
    # The pointer, then the stride of each mask dim longer than 1 (size-1 dims are compiled as stride 0).
    assert [(p.kind, p.dim) for p in mask_params] == [(fb.ParamKind.TensorPointer, 0)] + [
        (fb.ParamKind.TensorStride, d) for d, size in enumerate(shape) if size > 1]


def test_masks_from_buffers_and_computed_in_the_graph_are_delegate_inputs():
    class SlidingWindow(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("band", torch.ones(16, 16, dtype=torch.bool).tril().triu(-3))

        def forward(self, q, k, v):
            positions = torch.arange(16)
            causal = positions[None, :] <= positions[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.band, enable_gqa=True)
            return F.scaled_dot_product_attention(y, k, v, attn_mask=causal, enable_gqa=True)

    report, delegates, _ = lower(SlidingWindow(), qkv())
    assert [d.delegated for d in report] == [True, True] and len(delegates) == 2


def test_attention_without_sdpa_is_not_touched_but_reported():
    report, delegates, _ = lower(ManualAttention(), qkv())
    assert not delegates
    (decision,) = report
    assert not decision.delegated and decision.reason.startswith("written-out attention without a logit soft-cap")


# --------------------------------------------------------------------------
# K/V expanded by hand: folded into the SDPA, which then reads the unexpanded K/V


def repeat_kv(x, group):
    """Hugging Face's spelling."""
    b, h, l, d = x.shape
    return x[:, :, None, :, :].expand(b, h, group, l, d).reshape(b, h * group, l, d)


EXPANSIONS = {
    "repeat_interleave": lambda x, g: x.repeat_interleave(g, dim=1),
    "repeat_kv": repeat_kv,
    "expand_flatten": lambda x, g: x.unsqueeze(2).expand(-1, -1, g, -1, -1).flatten(1, 2),
}


class ExpandedAttention(nn.Module):
    def __init__(self, expand_k, expand_v, **sdpa_kwargs):
        super().__init__()
        self.expand_k, self.expand_v, self.sdpa_kwargs = expand_k, expand_v, sdpa_kwargs

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, self.expand_k(k), self.expand_v(v), **self.sdpa_kwargs)


def expansion_ops_left(graph_module):
    """repeat_interleave / expand nodes, in the aten or the edge dialect (expand_copy)."""
    return [n for n in graph_module.graph.nodes if n.op == "call_function"
            and any(op in str(n.target) for op in ("repeat_interleave", "expand"))]


@pytest.mark.parametrize("style", EXPANSIONS)
def test_hand_expanded_kv_is_folded_and_delegated(style):
    from cuda_gqa.backends.serialization import deserialize_payload

    expand = EXPANSIONS[style]
    model = ExpandedAttention(lambda k: expand(k, 4), lambda v: expand(v, 4), is_causal=True)
    inputs = qkv(h_q=8, h_kv=2)
    partitioner = CudaGqaPartitioner(archs=[80])
    edge = to_edge_transform_and_lower(torch.export.export(model, inputs), partitioner=[partitioner])
    report = partitioner.report
    assert [d.delegated for d in report] == [True]
    assert report[0].reason == f"GQA 8/2 heads, D=64, float16, causal, K/V expansion ({style}) folded in"
    graph_module = edge.exported_program().graph_module
    assert not expansion_ops_left(graph_module)
    (_, lowered, _), = get_lowered_submodules(graph_module)
    payload = deserialize_payload(lowered.processed_bytes)
    assert [list(s.sizes) for s in payload.inputs] == [[1, 8, 16, 64], [1, 2, 16, 64], [1, 2, 16, 64]]


@pytest.mark.parametrize("style", EXPANSIONS)
def test_folding_keeps_the_result(style):
    """The rewritten ATen graph computes what the model computes (eager, on the CPU)."""
    expand = EXPANSIONS[style]
    model = ExpandedAttention(lambda k: expand(k, 4), lambda v: expand(v, 4), is_causal=True)
    inputs = qkv(h_q=8, h_kv=2, dtype=torch.float32)
    program = torch.export.export(model, inputs)
    folded = CudaGqaPartitioner(archs=[80]).transform_for_pre_decomposition(program)
    sdpa = [n for n in folded.graph_module.graph.nodes if is_sdpa(n)]
    assert len(sdpa) == 1 and sdpa[0].kwargs.get("enable_gqa") is True
    assert not expansion_ops_left(folded.graph_module)
    torch.testing.assert_close(folded.module()(*inputs), model(*inputs))


@pytest.mark.parametrize(
    "expand_k, expand_v, inputs",
    [
        # K from 2 heads x 4, V from 4 heads x 2: both 8 heads, but not one GQA grouping.
        (lambda k: k.repeat_interleave(4, dim=1), lambda v: v.repeat_interleave(2, dim=1),
         (torch.randn(1, 8, 16, 64, dtype=torch.float16), torch.randn(1, 2, 16, 64, dtype=torch.float16),
          torch.randn(1, 4, 16, 64, dtype=torch.float16))),
        # Tiled, not interleaved: head j is KV head j % H_kv, which SDPA's GQA does not do.
        (lambda k: k.repeat(1, 4, 1, 1), lambda v: v.repeat(1, 4, 1, 1), qkv()),
        # Only K expanded.
        (lambda k: k.repeat_interleave(4, dim=1), lambda v: v, (*qkv()[:2], torch.randn(1, 8, 16, 64).half())),
    ],
    ids=["different-groups", "tiled-repeat", "only-k"],
)
def test_other_expansions_are_left_alone(expand_k, expand_v, inputs):
    report, delegates, _ = lower(ExpandedAttention(expand_k, expand_v), inputs)
    assert [d.delegated for d in report] == [False] and not delegates
    assert "MHA (H_q = H_kv = 8)" in report[0].reason


def test_an_expansion_left_on_the_cpu_is_not_rewritten():
    model = ExpandedAttention(lambda k: k.repeat_interleave(4, dim=1), lambda v: v.repeat_interleave(4, dim=1),
                              dropout_p=0.0)
    inputs = qkv(d=72)  # head dim the kernels refuse
    program = torch.export.export(model, inputs)
    folded = CudaGqaPartitioner(archs=[80]).transform_for_pre_decomposition(program)
    (sdpa,) = [n for n in folded.graph_module.graph.nodes if is_sdpa(n)]
    assert not sdpa.kwargs.get("enable_gqa") and len(expansion_ops_left(folded.graph_module)) == 2
