"""The delegate-owned KV cache of one attention call: its states and the kernel that writes them.

When the partitioner takes a layer's cache update with its SDPA, the
delegate keeps K and V caches [B, H_kv, S, D] as payload states (device
buffers allocated and zeroed at init, shared by the program's delegates
that name them) and runs, before the attention kernels:

  kv_cache_write: the call's new rows -> the caches at their positions, and
                  kv_len = last position + 1 into an int32 workspace slot,

which the attention kernels read through their KvLen pointer: they attend
keys [0, kv_len) of the caches, so the cost follows the filled length.
Only q, the new K/V rows, their positions and the mask cross from the host.

ExecuTorch's llama export (`llama::update_cache` + `llama::custom_sdpa`)
writes [B, S, H_kv, D] caches from a start position: kv_cache_write then
runs FROM_START (the rows go to start..start+L_new-1, kv_len = start +
L_new), with the BSHD layout's dims bound to its strides. Attention from a
start position over caches the delegate does not own gets its kv_len from
kv_len_from_start instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from .aot.kv_cache_write import POSITION_DTYPES, compile_kv_cache_write, compile_kv_len_from_start
from .kernel_builder import PARAM_TYPE, binding, compile_for_archs, grid_factor
from .layout import BHSD, Layout
from .serialization import payload_generated as fb

# The kv_len slot: int32, at a 16-byte aligned offset of the workspace.
KV_LEN_SLOT_BYTES = 16


@dataclass(frozen=True)
class StartPosition:
    """A delegate input holding one integer, the position of the call's first query row
    (ExecuTorch's `start_pos`, read from `input_pos[0]`): sizes () or (1,)."""

    arg: int
    dtype: torch.dtype = torch.int64
    sizes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.dtype not in POSITION_DTYPES:
            raise ValueError(f"the start position must be int32 or int64, not {self.dtype}")
        if any(s != 1 for s in self.sizes) or len(self.sizes) > 4:
            raise ValueError(f"the start position must hold one element, got sizes {self.sizes}")


@dataclass(frozen=True)
class KvCacheArgs:
    """A cache update the delegate runs before attending.

    k_new, v_new: input indices of the new rows [B, H_kv, L_new, D] (in the
    payload's layout);
    positions: input index of their cache positions [L_new] (int32/int64),
    or None: the rows go to the call's start position onwards (the payload's
    StartPosition);
    k_state, v_state: the cache states' names (shared across the program's
    delegates: use the buffers' FQNs); max_seq_len: the caches' length S.
    """

    k_new: int
    v_new: int
    positions: Optional[int]
    k_state: str
    v_state: str
    max_seq_len: int
    position_dtype: torch.dtype = torch.int64
    # Rank of the new-row inputs: 4, or fewer when their leading size-1 dims
    # are left out (index_put broadcasts them); missing dims get stride 0.
    new_rows_rank: int = 4

    def __post_init__(self):
        if self.position_dtype not in POSITION_DTYPES:
            raise ValueError(f"cache positions must be int32 or int64, not {self.position_dtype}")
        if not 2 <= self.new_rows_rank <= 4:
            raise ValueError(f"new_rows_rank={self.new_rows_rank}: the new rows keep at least [L_new, D]")
        if self.max_seq_len < 1:
            raise ValueError(f"max_seq_len={self.max_seq_len} must be >= 1")
        if self.k_state == self.v_state or not self.k_state or not self.v_state:
            raise ValueError(f"the K and V caches need two distinct non-empty names, got {self.k_state!r}, "
                             f"{self.v_state!r}")


def kv_len_offset(workspace_bytes: int) -> int:
    """Where the kv_len slot goes after a launch plan's own workspace."""
    return -(-workspace_bytes // KV_LEN_SLOT_BYTES) * KV_LEN_SLOT_BYTES


def cache_write_kernel(*, cache: KvCacheArgs, k_state_arg: int, v_state_arg: int, kv_len_offset: int,
                       dtype: torch.dtype, head_dim: int, num_heads_kv: int, l_new: int, archs: Iterable[int],
                       ptx: bool, layout: Layout = BHSD, start: Optional[StartPosition] = None) -> fb.KernelT:
    """kv_cache_write compiled for `archs`, bound to the delegate's arguments and its kv_len slot.

    layout: of the new rows and the caches. start: where the rows go when
    cache.positions is None (FROM_START; l_new may then be any length)."""
    from_start = cache.positions is None
    if from_start and start is None:
        raise ValueError("a cache written from the start position needs the StartPosition input")
    if layout != BHSD and cache.new_rows_rank != 4:
        raise ValueError(f"new K/V rows in the {layout.name} layout must be 4-D, not of rank {cache.new_rows_rank}")
    positions = start.arg if from_start else cache.positions
    position_dtype = start.dtype if from_start else cache.position_dtype
    tensors = {"K_new": cache.k_new, "V_new": cache.v_new, "Positions": positions, "K_cache": k_state_arg,
               "V_cache": v_state_arg}
    stride_of = {"k": cache.k_new, "v": cache.v_new, "kc": k_state_arg, "vc": v_state_arg}
    stride_dim = {"b": layout.batch, "h": layout.heads, "l": layout.seq, "s": layout.seq}
    missing = 4 - cache.new_rows_rank  # leading dims of [B, H_kv, L_new, D] the new rows leave out
    sizes = {"L_new": (cache.k_new, layout.seq - missing) if from_start else (positions, 0),
             "S": (k_state_arg, layout.seq)}

    def compile_one(arch):
        return compile_kv_cache_write(dtype=dtype, position_dtype=position_dtype, head_dim=head_dim,
                                      num_heads_kv=num_heads_kv, l_new=l_new, arch=arch, from_start=from_start)

    def describe(kernel, compiled):
        params = []
        for p in compiled.params:
            param = fb.KernelParamT(type=PARAM_TYPE[p.type], divisibility=p.divisibility)
            if p.name in tensors:
                param.kind, param.arg = fb.ParamKind.TensorPointer, tensors[p.name]
            elif p.name == "KvLen":
                binding(fb.ParamKind.Workspace, workspaceOffset=kv_len_offset, workspaceExtent=4)(param)
            elif p.name in sizes:
                param.kind, (param.arg, param.dim) = fb.ParamKind.TensorSize, sizes[p.name]
            elif p.name.startswith("stride_"):
                tensor, dim = p.name.removeprefix("stride_")[:-1], p.name[-1]
                param.kind, param.arg, param.dim = fb.ParamKind.TensorStride, stride_of[tensor], stride_dim[dim]
                if tensor in ("k", "v"):
                    if param.dim < missing:  # a left-out size-1 dim: index 0 only
                        param.kind, param.dim, param.i32Value = fb.ParamKind.Int32Constant, 0, 0
                    else:
                        param.dim -= missing
            elif p.name == "global_scratch":
                param.kind = fb.ParamKind.GlobalScratch
            elif p.name == "profile_scratch":
                param.kind = fb.ParamKind.ProfileScratch
            else:
                raise ValueError(f"{compiled.name} has an entry parameter {p.name!r} this plan cannot bind")
            params.append(param)
        kernel.params = params
        # kernels/kv_cache_write.py's grid: (L_new, B * H_kv, 1); a left-out dim has size 1
        kernel.grid = [fb.GridDimT(factors=[grid_factor(*sizes["L_new"])]),
                       fb.GridDimT(factors=[grid_factor(cache.k_new, d - missing) for d in (layout.batch, layout.heads)
                                            if d >= missing]),
                       fb.GridDimT(factors=[])]

    return compile_for_archs(compile_one, archs, ptx, describe)


def kv_len_kernel(*, start: StartPosition, args, kv_len_offset: int, archs: Iterable[int], ptx: bool) -> fb.KernelT:
    """kv_len_from_start compiled for `archs`: kv_len = start + L_q (of args.query, at most
    args.key's length) into the kv_len slot; one program. args: the payload's AttentionArgs."""
    from .attention_plan import bind_params  # attention_plan imports this module: late

    bindings = {"Start": binding(fb.ParamKind.TensorPointer, arg=start.arg),
                "KvLen": binding(fb.ParamKind.Workspace, workspaceOffset=kv_len_offset, workspaceExtent=4),
                "S": binding(fb.ParamKind.TensorSize, arg=args.key, dim=args.layout.seq)}

    def describe(kernel, compiled):
        # L_q and Triton's scratch are bound as for attention; it has no sm_scale to bind.
        kernel.params = bind_params(compiled.params, args, 0.0, kernel=compiled.name, extra=bindings)
        kernel.grid = [fb.GridDimT(factors=[]) for _ in range(3)]

    return compile_for_archs(lambda arch: compile_kv_len_from_start(start_dtype=start.dtype, arch=arch), archs, ptx,
                              describe)
