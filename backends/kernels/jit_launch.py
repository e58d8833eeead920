"""Launch the attention kernels on torch tensors through Triton's JIT.

For tests and benchmarks (on a GPU, or on the CPU under TRITON_INTERPRET=1);
the product path launches the AOT cubins instead (cuda_gqa.runtime), chosen
by the same heuristics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import triton

from .attention_decode import (
    decode_arrivals_count,
    decode_combine_grid,
    decode_split_grid,
    decode_workspace_shape,
    gqa_decode_combine,
    gqa_decode_split,
)
from .attention_fwd import gqa_attention_fwd, launch_grid
from ..aot.variant import AttentionVariant
from ..heuristics import (L2_SECTION_BYTES, KernelConfig, attention_config, decode_launch, decode_split_count,
                          fused_combine_for, merge_block_s, split_plan)
from ..heuristics import combine_block_s as combine_block_s_for
from ..serialization import PROGRAMMATIC_LAUNCH_ARCH

# Query lengths up to this run the split-KV decode kernels.
MAX_DECODE_L_Q = 16


def device_arch(t: torch.Tensor) -> int:
    major, minor = torch.cuda.get_device_capability(t.device)
    return 10 * major + minor


def _sm_count(t: torch.Tensor) -> int:
    return torch.cuda.get_device_properties(t.device).multi_processor_count


@dataclass(frozen=True)
class Variant:
    """What an attention call asks for beyond q/k/v: the kernels' masking and capping options.

    attn_mask: bool (False hides a key) or additive float, broadcastable to
    [B, H_q, L_q, L_kv]. window_left: keys left of the diagonal a query sees
    (-1: all). softcap: cap of the scaled logits (0: off). kv_len: a device
    int32/int64 scalar bounding the filled keys, read on the device.
    """

    attn_mask: Optional[torch.Tensor] = None
    is_causal: bool = False
    window_left: int = -1
    softcap: float = 0.0
    kv_len: Optional[torch.Tensor] = None

    def mask_and_strides(self, q: torch.Tensor, k: torch.Tensor) -> tuple[Optional[torch.Tensor], tuple]:
        """The mask as a [B, H_q, L_q, L_kv] view (stride 0 along broadcast dims), and its strides."""
        if self.attn_mask is None:
            return None, (0, 0, 0, 0)
        full = self.attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return full, full.stride()

    def constexprs(self) -> dict:
        """The kernels' variant constexprs, as the AOT stage compiles this call (validated there)."""
        return AttentionVariant(
            is_causal=self.is_causal, window_left=self.window_left, softcap=self.softcap,
            mask_dtype=None if self.attn_mask is None else self.attn_mask.dtype,
            kv_len_dtype=None if self.kv_len is None else self.kv_len.dtype,
        ).kernel_constexprs()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, attn_mask: Optional[torch.Tensor] = None,
              is_causal: bool = False, scale: Optional[float] = None, window_left: int = -1, softcap: float = 0.0,
              kv_len: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None,
              workspace: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """GQA attention of q [B, H_q, L_q, D] over k/v [B, H_kv, L_kv, D] (last dims contiguous):
    split-KV decode for short L_q, the forward kernel otherwise. See Variant for the options."""
    variant = Variant(attn_mask, is_causal, window_left, softcap, kv_len)
    if q.shape[2] <= MAX_DECODE_L_Q:
        return attention_decode(q, k, v, variant, scale=scale, out=out, workspace=workspace)[0]
    return attention_fwd(q, k, v, variant, scale=scale, out=out)


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: Variant = Variant(), *,
                  scale: Optional[float] = None, out: Optional[torch.Tensor] = None,
                  config: Optional[KernelConfig] = None) -> torch.Tensor:
    """config: tiles to use instead of the heuristics' (for tuning sweeps and the interpreter)."""
    batch, num_heads_q, l_q, head_dim = q.shape
    num_heads_kv, l_kv = k.shape[1], k.shape[2]
    out = torch.empty_like(q) if out is None else out
    config = config or attention_config(head_dim, q.dtype, device_arch(q))
    mask, mask_strides = variant.mask_and_strides(q, k)
    gqa_attention_fwd[launch_grid(l_q, batch, num_heads_q, config.block_m)](
        q, k, v, out, mask, variant.kv_len, head_dim**-0.5 if scale is None else scale,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *mask_strides, l_q, l_kv,
        NUM_HEADS_Q=num_heads_q, GROUP_SIZE=num_heads_q // num_heads_kv, HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        **variant.constexprs(), L2_SECTION_BYTES=L2_SECTION_BYTES, num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out


def decode_workspace(q: torch.Tensor, num_splits: int, num_heads_kv: Optional[int] = None,
                     m_tiles: int = 1) -> list[torch.Tensor]:
    """The split kernel's partial outputs and log-sum-exps, and the fused path's arrival
    counters (zeroed here; each fused launch leaves them 0); allocate once, reuse every step.

    num_heads_kv (default: as many as query heads, enough for any grouping) and m_tiles size
    the counters: decode_arrivals_count(batch, num_heads_kv, m_tiles) of them.
    """
    batch, num_heads_q, l_q, head_dim = q.shape
    arrivals = decode_arrivals_count(batch, num_heads_q if num_heads_kv is None else num_heads_kv, m_tiles)
    return [torch.empty(s, device=q.device, dtype=torch.float32)
            for s in decode_workspace_shape(batch, num_heads_q, l_q, head_dim, num_splits)] + [
        torch.zeros(arrivals, device=q.device, dtype=torch.int32)]


def attention_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: Variant = Variant(), *,
                     scale: Optional[float] = None, out: Optional[torch.Tensor] = None,
                     num_splits: Optional[int] = None, workspace: Optional[Sequence[torch.Tensor]] = None,
                     config: Optional[KernelConfig] = None, combine_block_s: Optional[int] = None,
                     fused: Optional[bool] = None) -> tuple[torch.Tensor, int]:
    """Split-KV decode: (output, splits launched). One launch when one split suffices, or
    when the splits merge in the split kernel (fused; None: as the heuristics choose).

    The split count is planned for all L_kv keys (a kv_len only shortens each
    split). num_splits / config / combine_block_s / fused: instead of the
    heuristics' (for tuning sweeps and the interpreter). workspace: (Partial,
    Lse[, Arrivals]) as decode_workspace makes them; the fused path needs
    Arrivals, all 0 before its first launch (it leaves them 0).
    """
    batch, num_heads_q, l_q, head_dim = q.shape
    num_heads_kv, l_kv = k.shape[1], k.shape[2]
    group = num_heads_q // num_heads_kv
    if config is None:
        config, planned_splits = decode_launch(head_dim, q.dtype, group, l_q, batch, num_heads_kv, l_kv,
                                               _sm_count(q), device_arch(q))
        num_splits = planned_splits if num_splits is None else num_splits
    elif num_splits is None:
        m_tiles = decode_split_grid(1, batch, num_heads_kv, group, l_q, config.block_m)[2]
        num_splits = decode_split_count(batch, num_heads_kv, l_kv, _sm_count(q), config.block_n, m_tiles=m_tiles)
    num_splits = split_plan(l_kv, num_splits, config.block_n)[1]
    grid = decode_split_grid(num_splits, batch, num_heads_kv, group, l_q, config.block_m)
    if fused is None:
        fused = fused_combine_for(num_splits, group, l_q, head_dim)
    fused = fused and num_splits > 1
    out = torch.empty_like(q) if out is None else out
    if workspace is None or (fused and len(workspace) < 3):
        workspace = decode_workspace(q, num_splits, num_heads_kv, grid[2])
    partial, lse, arrivals = (*workspace, None)[:3]
    mask, mask_strides = variant.mask_and_strides(q, k)
    # The combine as a programmatic dependent of the split kernel, as the runtimes launch the AOT cubins.
    combine_after = num_splits > 1 and not fused
    programmatic = combine_after and q.is_cuda and device_arch(q) >= PROGRAMMATIC_LAUNCH_ARCH
    gqa_decode_split[grid](
        q, k, v, out, partial, lse, arrivals if fused else out, mask, variant.kv_len,
        head_dim**-0.5 if scale is None else scale,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *mask_strides, l_q, l_kv,
        NUM_HEADS_Q=num_heads_q, GROUP_SIZE=group, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, **variant.constexprs(), SINGLE_SPLIT=num_splits == 1,
        FUSED_COMBINE=fused, MERGE_BLOCK_S=merge_block_s(config.block_m, head_dim), LAUNCH_DEPENDENTS=programmatic,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if combine_after:
        gqa_decode_combine[decode_combine_grid(batch, num_heads_q, l_q)](
            partial, lse, out, *out.stride()[:3], l_q, num_splits,
            NUM_HEADS_Q=num_heads_q, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
            BLOCK_S=combine_block_s or combine_block_s_for(num_splits, head_dim), WAIT_FOR_SPLITS=programmatic,
            **({"launch_pdl": True} if programmatic else {}),
        )
    return out, num_splits
