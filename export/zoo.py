"""A model zoo: one attention block per way real LLM code spells GQA attention.

Each block is written the way its family's reference code writes it
(projections, head split, how K/V reach the heads, how the mask is made), so
exporting them checks that the partitioner delegates user models as they
are, with no edits. `python -m cuda_gqa.export --zoo NAME` exports one;
tests/partition/test_zoo.py lowers them all; the GPU bundle runs them.

  llama-hf     Hugging Face Llama: repeat_kv, SDPA is_causal, 8/2 heads
  qwen2        QKV bias, GQA 7:1, additive causal mask [B, 1, L, L] built in the graph
  mistral      sliding window as a bool mask buffer, enable_gqa=True
  mqa          one KV head, K/V repeated with repeat_interleave
  mha          plain multi-head attention (CudaGqaPartitioner(include_mha=True))
  gemma2       written-out attention with a logit soft-cap and an additive mask
               (cap 3 rather than Gemma's 50, so that the cap changes the result)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F


def _repeat_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    b, h, l, d = x.shape
    return x[:, :, None, :, :].expand(b, h, group, l, d).reshape(b, h * group, l, d)


class _Projections(nn.Module):
    # Hidden size smaller than H_q * D keeps the weights (and the GPU bundle) small.
    HIDDEN = 256

    def __init__(self, heads_q: int, heads_kv: int, head_dim: int, bias: bool = False):
        super().__init__()
        self.heads_q, self.heads_kv, self.head_dim = heads_q, heads_kv, head_dim
        hidden = self.HIDDEN
        self.q_proj = nn.Linear(hidden, heads_q * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, heads_kv * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, heads_kv * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads_q * head_dim, hidden, bias=False)

    def heads(self, x: torch.Tensor):
        b, l, _ = x.shape
        split = lambda t, h: t.view(b, l, h, self.head_dim).transpose(1, 2)
        return (split(self.q_proj(x), self.heads_q), split(self.k_proj(x), self.heads_kv),
                split(self.v_proj(x), self.heads_kv))

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, l, _ = y.shape
        return self.o_proj(y.transpose(1, 2).reshape(b, l, -1))


class LlamaHf(_Projections):
    def forward(self, x):
        q, k, v = self.heads(x)
        group = self.heads_q // self.heads_kv
        return self.merge(F.scaled_dot_product_attention(q, _repeat_kv(k, group), _repeat_kv(v, group),
                                                         is_causal=True))


class Qwen2(_Projections):
    def forward(self, x):
        q, k, v = self.heads(x)
        l = x.shape[1]
        causal = torch.full((l, l), float("-inf"), dtype=x.dtype).triu(1)[None, None]
        group = self.heads_q // self.heads_kv
        return self.merge(F.scaled_dot_product_attention(q, _repeat_kv(k, group), _repeat_kv(v, group),
                                                         attn_mask=causal))


class Mistral(_Projections):
    def __init__(self, *args, seq_len: int, window: int, **kwargs):
        super().__init__(*args, **kwargs)
        i = torch.arange(seq_len)
        visible = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
        self.register_buffer("window_mask", visible[None, None], persistent=False)

    def forward(self, x):
        q, k, v = self.heads(x)
        return self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=self.window_mask, enable_gqa=True))


class Mqa(_Projections):
    def forward(self, x):
        q, k, v = self.heads(x)
        return self.merge(F.scaled_dot_product_attention(q, k.repeat_interleave(self.heads_q, dim=1),
                                                         v.repeat_interleave(self.heads_q, dim=1), is_causal=True))


class Mha(_Projections):
    def forward(self, x):
        q, k, v = self.heads(x)
        return self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))


class Gemma2(_Projections):
    def __init__(self, *args, softcap: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.softcap = softcap

    def forward(self, x):
        q, k, v = self.heads(x)
        l = x.shape[1]
        causal = torch.full((l, l), float("-inf")).triu(1)[None, None]
        group = self.heads_q // self.heads_kv
        k, v = _repeat_kv(k, group), _repeat_kv(v, group)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim**-0.5
        scores = torch.tanh(scores / self.softcap) * self.softcap
        probs = torch.softmax(scores + causal, dim=-1, dtype=torch.float32).to(q.dtype)
        return self.merge(torch.matmul(probs, v))


@dataclass(frozen=True)
class ZooModel:
    description: str
    make: Callable[[], nn.Module]
    seq_len: int
    partitioner_options: dict = field(default_factory=dict)


ZOO = {
    "llama-hf": ZooModel("Hugging Face Llama, repeat_kv, is_causal (8/2 heads, D=64)",
                         lambda: LlamaHf(8, 2, 64), 64),
    "qwen2": ZooModel("Qwen2, QKV bias, GQA 7:1, additive causal mask (14/2 heads, D=64)",
                      lambda: Qwen2(14, 2, 64, bias=True), 48),
    "mistral": ZooModel("Mistral, sliding window 32 as a bool mask (8/2 heads, D=128)",
                        lambda: Mistral(8, 2, 128, seq_len=80, window=32), 80),
    "mqa": ZooModel("MQA, repeat_interleave, is_causal (8/1 heads, D=64)", lambda: Mqa(8, 1, 64), 40),
    "mha": ZooModel("MHA with include_mha=True, is_causal (4/4 heads, D=64)", lambda: Mha(4, 4, 64), 32,
                    {"include_mha": True}),
    "gemma2": ZooModel("Gemma 2, written-out attention with logit soft-cap 3 (8/4 heads, D=64)",
                       lambda: Gemma2(8, 4, 64, softcap=3.0), 56),
}


def make_zoo_model(name: str, dtype: torch.dtype = torch.float16, batch: int = 1, seed: int = 0):
    """(model, (x,)) for zoo entry `name`: seeded weights scaled so the softmax is not one-hot."""
    entry = ZOO[name]
    torch.manual_seed(seed)
    model = entry.make().eval()
    for p in model.parameters():
        nn.init.normal_(p, std=model.head_dim**-0.5 / 2)
    model = model.to(dtype)
    x = torch.randn(batch, entry.seq_len, model.HIDDEN, dtype=dtype)
    return model, (x,)
