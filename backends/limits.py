"""What the attention kernels support: the one place the partitioner and the AOT stage read."""

from __future__ import annotations

from typing import Optional

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# attn_mask: bool hides keys where False; a float mask (the query's dtype or
# float32) is added to the scaled scores.
MASK_DTYPES = (torch.bool, torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
# Row strides of [B, H, L, D] tensors are multiples of D; the cubins assume
# they are multiples of 16 elements (checked again at runtime).
HEAD_DIM_MULTIPLE = 16


def head_dim_problem(head_dim: int) -> Optional[str]:
    """None for a supported head dim, else what is wrong with it."""
    if head_dim <= 0 or head_dim > MAX_HEAD_DIM or head_dim % HEAD_DIM_MULTIPLE:
        return f"head dim {head_dim} is not a multiple of {HEAD_DIM_MULTIPLE} up to {MAX_HEAD_DIM}"
    return None


def check_head_dim(head_dim: int) -> None:
    problem = head_dim_problem(head_dim)
    if problem is not None:
        raise ValueError(problem)


def mask_shape_problem(mask_shape, full_shape) -> Optional[str]:
    """None when an attn_mask of mask_shape broadcasts to full_shape = [B, H_q, L_q, L_kv], else why not."""
    mask_shape, full_shape = tuple(mask_shape), tuple(full_shape)
    if not 1 <= len(mask_shape) <= 4 or any(m not in (1, n) for m, n in zip(mask_shape[::-1], full_shape[::-1])):
        return f"attn_mask shape {mask_shape} does not broadcast to [B, H_q, L_q, L_kv] = {list(full_shape)}"
    return None
