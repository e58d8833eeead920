"""Float32 PyTorch reference for the attention kernels' tests."""

import torch


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool = False,
                        scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v over K/V shared by groups of query heads, in float32.

    Causal is bottom-right aligned (query i sees keys j <= i + L_kv - L_q);
    a query that sees no key gives zeros.
    """
    group = q.shape[1] // k.shape[1]
    q, k, v = q.float(), k.float().repeat_interleave(group, 1), v.float().repeat_interleave(group, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    if is_causal:
        l_q, l_kv = q.shape[2], k.shape[2]
        rows = torch.arange(l_q, device=q.device)[:, None]
        cols = torch.arange(l_kv, device=q.device)[None, :]
        scores = scores.masked_fill(cols > rows + (l_kv - l_q), float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ v
