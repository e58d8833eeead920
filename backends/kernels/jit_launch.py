"""Launch the attention kernels on torch CUDA tensors through Triton's JIT.

For tests and benchmarks on a GPU machine; the product path launches the
AOT cubins instead (cuda_gqa.runtime), with the same heuristics.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton

from ..heuristics import attention_config
from .attention_fwd import gqa_attention_fwd, launch_grid


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool = False,
                  scale: Optional[float] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """GQA attention of q [B, H_q, L_q, D] over k/v [B, H_kv, L_kv, D]; last dims contiguous."""
    batch, num_heads_q, l_q, head_dim = q.shape
    num_heads_kv, l_kv = k.shape[1], k.shape[2]
    out = torch.empty_like(q) if out is None else out
    config = attention_config(head_dim, q.dtype)
    gqa_attention_fwd[launch_grid(l_q, batch, num_heads_q, config.block_m)](
        q, k, v, out, head_dim**-0.5 if scale is None else scale,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], l_q, l_kv,
        NUM_HEADS_Q=num_heads_q, GROUP_SIZE=num_heads_q // num_heads_kv, HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_M=config.block_m, BLOCK_N=config.block_n, IS_CAUSAL=is_causal,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out

