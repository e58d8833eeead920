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


def lower(model, inputs):
    partitioner = CudaGqaPartitioner(archs=[80])
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
        (Attention(), qkv(h_q=8, h_kv=8), "enable_gqa=False"),
        (Attention(enable_gqa=True), qkv(h_q=8, h_kv=8), "H_kv=8 is not smaller than H_q=8"),
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
        (kernel, *_), = [deserialize_payload(lowered.processed_bytes).kernels for _, lowered, _ in delegates]
        sizes = [p.arg for p in kernel.params if p.kind == fb.ParamKind.TensorSize]
        return sizes, [p.i32Value for p in kernel.params if p.kind == fb.ParamKind.Int32Constant]

    # Decode shape (split kernel: L_q from q, L_kv = 4, then SPLIT_LEN) and a prefill chunk.
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
            return F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer(gqa=False), Layer(gqa=True)])

        def forward(self, q, k, v):
            return self.layers[1](self.layers[0](q, k, v), k, v)

    report, delegates, _ = lower(Model(), qkv())
    assert [(d.module, d.delegated) for d in report] == [("layers.0", False), ("layers.1", True)]
    assert len({d.node for d in report}) == 2 and len(delegates) == 1


def test_masked_attention_stays_on_cpu():
    q, k, v = qkv()
    mask = torch.ones(16, 16, dtype=torch.bool).tril()

    class Masked(nn.Module):
        def forward(self, q, k, v, mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    report, delegates, _ = lower(Masked(), (q, k, v, mask))
    assert not delegates
    assert report[0].reason == "attn_mask is not supported yet"


def test_attention_without_sdpa_is_not_touched():
    report, delegates, _ = lower(ManualAttention(), qkv())
    assert report == [] and not delegates
