"""The demo model: one causal GQA attention block (8 query heads, 2 KV heads, D=64).

Projections run on ExecuTorch's CPU kernels; the attention itself is
delegated to CudaGqaBackend.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


def _repeat_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    b, h, l, d = x.shape
    return x[:, :, None, :, :].expand(b, h, group, l, d).reshape(b, h * group, l, d)


# How models written before enable_gqa repeat K/V per query head; the
# partitioner folds each back into a GQA SDPA.
KV_EXPANSIONS = {
    "repeat_interleave": lambda x, group: x.repeat_interleave(group, dim=1),
    "repeat_kv": _repeat_kv,  # Hugging Face's
    "expand_flatten": lambda x, group: x.unsqueeze(2).expand(-1, -1, group, -1, -1).flatten(1, 2),
}


class GqaAttentionBlock(nn.Module):
    """kv_expansion: None calls SDPA with enable_gqa=True; a KV_EXPANSIONS name
    repeats K/V by hand first, as older model code does."""

    # The hidden state the projections read and write: narrower than
    # H_q * D, so the weights (and the GPU bundle's .pte files) stay small.
    HIDDEN = 256

    def __init__(self, num_heads_q: int = 8, num_heads_kv: int = 2, head_dim: int = 64,
                 kv_expansion: Optional[str] = None):
        super().__init__()
        self.num_heads_q, self.num_heads_kv, self.head_dim = num_heads_q, num_heads_kv, head_dim
        self.kv_expansion = kv_expansion
        hidden = self.HIDDEN
        self.q_proj = nn.Linear(hidden, num_heads_q * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, num_heads_kv * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, num_heads_kv * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads_q * head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, seq, _ = x.shape
        q = self.q_proj(x).view(b, seq, self.num_heads_q, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, seq, self.num_heads_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, seq, self.num_heads_kv, self.head_dim).transpose(1, 2)
        if self.kv_expansion is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            expand = KV_EXPANSIONS[self.kv_expansion]
            group = self.num_heads_q // self.num_heads_kv
            y = F.scaled_dot_product_attention(q, expand(k, group), expand(v, group), is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, seq, -1))


class GqaAttention(nn.Module):
    """SDPA alone on given q [B, H_q, L_q, D] and k/v [B, H_kv, L_kv, D]: with L_q < L_kv,
    a decode step (not causal: the new rows see the whole cache).

    With is_causal=True and L_q < L_kv, PyTorch aligns the mask top-left (query i
    sees keys 0..i), and so does the delegate."""

    def __init__(self, is_causal: bool = False):
        super().__init__()
        self.is_causal = is_causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=self.is_causal, enable_gqa=True)


def sliding_window_mask(l_q: int, l_kv: int, window: int, additive_dtype: Optional[torch.dtype] = None):
    """[1, 1, L_q, L_kv]: query i (at position L_kv - L_q + i) sees the `window` keys ending at its position;
    bool (True: visible), or additive (0 / -inf) in additive_dtype."""
    position = torch.arange(l_q)[:, None] + (l_kv - l_q)
    key = torch.arange(l_kv)[None, :]
    visible = ((key <= position) & (key > position - window))[None, None]
    if additive_dtype is None:
        return visible
    return torch.zeros(visible.shape, dtype=additive_dtype).masked_fill(~visible, float("-inf"))


MASKS = ("bool", "additive")


def make_attention_only(dtype: torch.dtype, l_q: int, l_kv: int, num_heads_q: int = 8, num_heads_kv: int = 2,
                        head_dim: int = 64, batch: int = 1, is_causal: bool = False, mask: Optional[str] = None,
                        seed: int = 0):
    """mask: None, or a MASKS kind of sliding-window mask (a quarter of L_kv wide) passed as a fourth input."""
    torch.manual_seed(seed)
    make = lambda heads, length: torch.randn(batch, heads, length, head_dim, dtype=dtype)
    inputs = (make(num_heads_q, l_q), make(num_heads_kv, l_kv), make(num_heads_kv, l_kv))
    if mask is not None:
        inputs += (sliding_window_mask(l_q, l_kv, max(1, l_kv // 4), None if mask == "bool" else dtype),)
    return GqaAttention(is_causal).eval(), inputs


def make_demo(dtype: torch.dtype = torch.float16, seq_len: int = 128, num_heads_q: int = 8,
              num_heads_kv: int = 2, head_dim: int = 64, batch: int = 1, kv_expansion: Optional[str] = None,
              seed: int = 0):
    """The demo block with seeded weights and one input of shape [batch, seq_len, GqaAttentionBlock.HIDDEN]."""
    torch.manual_seed(seed)
    model = GqaAttentionBlock(num_heads_q, num_heads_kv, head_dim, kv_expansion).eval()
    for p in model.parameters():
        # Scaled so attention logits are O(1) and the softmax is not one-hot.
        nn.init.normal_(p, std=model.head_dim**-0.5 / 2)
    model = model.to(dtype)
    x = torch.randn(batch, seq_len, model.HIDDEN, dtype=dtype)
    return model, (x,)


def dynamic_lengths(inputs: tuple, block: bool):
    """torch.export dynamic_shapes making each sequence length dynamic up to its example
    size: the block's one length (x dim 1), or SDPA's L_q (q) and L_kv (k, v). A length of
    1 stays static (torch.export specialises examples of size 1)."""
    if block:
        (x,) = inputs
        return ({1: torch.export.Dim("seq", min=1, max=x.shape[1])} if x.shape[1] > 1 else {},)
    q, k = inputs[0], inputs[1]
    l_q = {2: torch.export.Dim("l_q", min=1, max=q.shape[2])} if q.shape[2] > 1 else {}
    l_kv = {2: torch.export.Dim("l_kv", min=1, max=k.shape[2])} if k.shape[2] > 1 else {}
    return (l_q, l_kv, dict(l_kv)) + ((None,) * (len(inputs) - 3))
