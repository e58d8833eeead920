"""Float32 PyTorch reference for the attention kernels' tests."""

from typing import Optional

import torch


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                        attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                        scale: Optional[float] = None, window_left: int = -1, softcap: float = 0.0,
                        kv_len: Optional[int] = None) -> torch.Tensor:
    """softmax(q k^T * scale) v over K/V shared by groups of query heads, in float32.

    The kernels' semantics (see backends/kernels/online_softmax.py): only the
    first kv_len keys exist; causal and window are bottom-right aligned on
    them (query i sees keys i + d - window_left <= j <= i + d, d = kv_len - L_q);
    softcap caps scaled scores as softcap * tanh(s / softcap) before a float
    attn_mask is added; a bool attn_mask hides keys where it is False. A query
    that sees no key gives zeros (PyTorch's SDPA gives NaN there).
    """
    group = q.shape[1] // k.shape[1]
    l_kv = k.shape[2] if kv_len is None else max(0, min(int(kv_len), k.shape[2]))
    q = q.float()
    k = k.float()[:, :, :l_kv].repeat_interleave(group, 1)
    v = v.float()[:, :, :l_kv].repeat_interleave(group, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    if softcap > 0.0:
        scores = softcap * torch.tanh(scores / softcap)
    rows = torch.arange(q.shape[2], device=q.device)[:, None] + (l_kv - q.shape[2])
    cols = torch.arange(l_kv, device=q.device)[None, :]
    hidden = torch.zeros_like(scores, dtype=torch.bool)
    if is_causal:
        hidden |= cols > rows
    if window_left >= 0:
        hidden |= cols < rows - window_left
    if attn_mask is not None:
        mask = attn_mask[..., :l_kv]
        if mask.dtype == torch.bool:
            hidden |= ~mask
        else:
            scores = scores + mask.float()
    scores = scores.masked_fill(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ v
