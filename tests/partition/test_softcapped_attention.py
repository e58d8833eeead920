"""Soft-capped attention written out by hand (Gemma 2) is recognised and delegated as one call."""

import math

import pytest
import torch
from executorch.exir import to_edge_transform_and_lower
from executorch.exir.lowered_backend_module import get_lowered_submodules
from torch import nn

from cuda_gqa.backends.partition import CudaGqaPartitioner
from cuda_gqa.backends.sdpa import SdpaCall, is_sdpa

CAP = 50.0


def repeat_kv(x, group):
    b, h, l, d = x.shape
    return x[:, :, None].expand(b, h, group, l, d).reshape(b, h * group, l, d)


class HfGemma2Attention(nn.Module):
    """Hugging Face's eager Gemma 2 attention: repeat_kv, scale, cap, additive mask, fp32 softmax,
    then a dropout that does nothing in eval mode (aten.dropout(p=0.0, train=False) in the graph)."""

    def forward(self, q, k, v, additive_mask):
        group = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, group), repeat_kv(v, group)
        scores = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5
        scores = scores / CAP
        scores = torch.tanh(scores) * CAP
        scores = scores + additive_mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        probs = nn.functional.dropout(probs, p=0.0, training=self.training)
        return torch.matmul(probs, v)


class MaskedFillAttention(nn.Module):
    """The built-in decoder's spelling: repeat_interleave, fp32 scores, masked_fill(~mask)."""

    def forward(self, q, k, v, visible):
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
        scores = CAP * torch.tanh(scores / CAP)
        scores = scores.masked_fill(~visible, float("-inf"))
        return torch.softmax(scores, dim=-1).to(v.dtype) @ v


class ScoresAlsoReturned(MaskedFillAttention):
    """The capped scores are an output too: removing them would change the model."""

    def forward(self, q, k, v, visible):
        scores = CAP * torch.tanh((q @ k.transpose(-2, -1)) / CAP)
        return torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1) @ v, scores


def inputs(dtype=torch.float32, l_q=8, l_kv=24, h_q=8, h_kv=2, d=32):
    torch.manual_seed(0)
    q = torch.randn(1, h_q, l_q, d, dtype=dtype) * 4  # logits large enough that the cap matters
    k, v = torch.randn(1, h_kv, l_kv, d, dtype=dtype), torch.randn(1, h_kv, l_kv, d, dtype=dtype)
    visible = torch.rand(1, 1, l_q, l_kv) > 0.3
    visible[..., 0] = True
    return q, k, v, visible


def additive(visible, dtype=torch.float32):
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, float("-inf"))


@pytest.mark.parametrize("model, make_mask", [(HfGemma2Attention().eval(), additive),
                                              (MaskedFillAttention(), lambda m: m)])
def test_written_out_softcapped_attention_becomes_one_gqa_call(model, make_mask):
    q, k, v, visible = inputs()
    args = (q, k, v, make_mask(visible))
    partitioner = CudaGqaPartitioner(archs=[80])
    program = partitioner.transform_for_pre_decomposition(torch.export.export(model, args))
    (call,) = [SdpaCall.from_node(n) for n in program.graph.nodes if is_sdpa(n)]
    assert call.softcap == CAP and call.enable_gqa and call.num_heads_kv == 2
    assert call.softmax_scale == pytest.approx(32**-0.5)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any(name in op for op in ops
                   for name in ("tanh", "softmax", "dropout", "matmul", "repeat_interleave", "expand"))
    torch.testing.assert_close(program.module()(*args), model(*args), atol=1e-5, rtol=1e-5)


def test_it_is_delegated_with_its_cap_in_the_report():
    q, k, v, visible = inputs(torch.float16)
    partitioner = CudaGqaPartitioner(archs=[80])
    edge = to_edge_transform_and_lower(torch.export.export(MaskedFillAttention(), (q, k, v, visible)),
                                       partitioner=[partitioner])
    (decision,) = partitioner.report
    assert decision.delegated
    assert decision.reason == "GQA 8/2 heads, D=32, float16, soft-cap 50, bool mask [1, 1, 8, 24], " \
                              "K/V expansion (repeat_interleave) folded in"
    (_, lowered, _), = get_lowered_submodules(edge.exported_program().graph_module)
    (inner,) = [n for n in lowered.original_module.graph.nodes if is_sdpa(n)]
    assert SdpaCall.from_node(inner).softcap == CAP


def test_a_call_the_kernels_cannot_take_stays_written_out():
    q, k, v, visible = inputs(d=8)  # head dim 8: no kernel
    partitioner = CudaGqaPartitioner(archs=[80])
    program = partitioner.transform_for_pre_decomposition(
        torch.export.export(MaskedFillAttention(), (q, k, v, visible)))
    assert not any(is_sdpa(n) for n in program.graph.nodes)
    assert any("tanh" in str(n.target) for n in program.graph.nodes)
    (decision,) = partitioner.report
    assert not decision.delegated and decision.reason.startswith("written-out soft-capped attention: head dim 8")


def test_intermediates_read_elsewhere_keep_the_pattern_as_written():
    q, k, v, visible = inputs(h_kv=8)
    partitioner = CudaGqaPartitioner(archs=[80], include_mha=True)
    program = partitioner.transform_for_pre_decomposition(
        torch.export.export(ScoresAlsoReturned(), (q, k, v, visible)))
    assert not any(is_sdpa(n) for n in program.graph.nodes)
    (decision,) = partitioner.report
    assert not decision.delegated and "is also read by output" in decision.reason
