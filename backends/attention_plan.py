"""How one attention call is launched: kernel config, argument binding, grid, payload.

Everything here is decided ahead of time and written into the payload; the
runtime shims only evaluate it. Nothing here needs ExecuTorch or a GPU, so
the payload of an attention problem can be built anywhere Triton compiles.

Prefill (L_q > MAX_DECODE_L_Q) runs gqa_attention_fwd. Decode and speculative
verification (L_q <= MAX_DECODE_L_Q) run the split-KV decode kernels, with the
split count decided here for a nominal GPU (heuristics.NOMINAL_SMS):
  one split:  [gqa_decode_split (SINGLE_SPLIT)], writing Out, no workspace;
  several:    [gqa_decode_split, gqa_decode_combine] in order on one stream,
              through fp32 Partial/Lse buffers in the payload's workspace,
              which the runtime allocates once at init;
  fused:      several splits merged in the split kernel ([gqa_decode_split
              (FUSED_COMBINE)], one launch) where heuristics.fused_combine_for
              says so; its int32 arrival counters follow Lse in the workspace,
              which the runtime zeroes once at init.

Tiles, split length and split count are chosen per arch (heuristics.py reads
the tuning table of each); archs that choose alike share one launch plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import numpy as np
import torch

from .aot.attention import compile_attention
from .aot.attention_decode import compile_decode_combine, compile_decode_split
from .aot.variant import MASK_STRIDES, AttentionVariant
from .kernels.attention_decode import decode_arrivals_count, decode_split_grid, decode_workspace_shape
from .heuristics import (NOMINAL_SMS, KernelConfig, attention_config, combine_block_s, decode_launch,
                         fused_combine_for, kv_length_buckets, split_plan, warp_specialized_forward_applies)
from .kernels.jit_launch import MAX_DECODE_L_Q
from .kv_cache_plan import (KV_LEN_SLOT_BYTES, KvCacheArgs, StartPosition, cache_write_kernel, kv_len_kernel,
                            kv_len_offset)
from .kernel_builder import PARAM_TYPE, binding, compile_for_archs, grid_factor, sharing_compiles
from .layout import BHSD, Layout
from .limits import mask_shape_problem
from .serialization import payload_generated as fb
from .serialization import PROGRAMMATIC_LAUNCH_ARCH, serialize_payload
from .serialization.dtypes import torch_dtype_codes


DTYPE_TO_PAYLOAD = torch_dtype_codes(torch)


@dataclass(frozen=True)
class AttentionArgs:
    """Delegate argument indices (inputs first, then outputs) of one attention call.

    mask: the attention mask input, if any; kv_len: the device int scalar
    bounding the filled keys, if any. layout: which dims of q/k/v/out (and
    of a delegate-owned cache's new rows and states) are heads and sequence
    (layout.py); the kernels get them through strides.
    """

    query: int = 0
    key: int = 1
    value: int = 2
    out: int = 3
    mask: Optional[int] = None
    kv_len: Optional[int] = None
    layout: Layout = BHSD

    @property
    def num_inputs(self) -> int:
        return self.out


# Partial and Lse are compiled as 16-byte aligned (tt.divisibility 16).
WORKSPACE_ALIGN = 16



def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def bind_params(entry_params, args: AttentionArgs, softmax_scale: float, *, kernel: str = "gqa_attention_fwd",
                extra: Optional[dict] = None) -> list[fb.KernelParamT]:
    """Bind an attention kernel's entry parameters to delegate tensors and constants.

    The parameters every attention kernel shares (Q/K/V/Out, Mask, KvLen,
    strides, L_q, L_kv, sm_scale, Triton's scratch) are bound here by name;
    `extra` maps any other name (and the mask strides, which depend on the
    mask's rank) to a callable that fills the fb.KernelParamT it is given.
    """
    tensor_of = {"Q": args.query, "K": args.key, "V": args.value, "Out": args.out, "Mask": args.mask,
                 "KvLen": args.kv_len}
    stride_of = {"q": args.query, "k": args.key, "v": args.value, "o": args.out}
    layout = args.layout
    stride_dim = {"b": layout.batch, "h": layout.heads, "m": layout.seq, "n": layout.seq}
    extra = extra or {}
    bound = []
    for p in entry_params:
        param = fb.KernelParamT(type=PARAM_TYPE[p.type], divisibility=p.divisibility)
        if p.name in extra:
            extra[p.name](param)
        elif tensor_of.get(p.name) is not None:
            param.kind, param.arg = fb.ParamKind.TensorPointer, tensor_of[p.name]
        elif p.name.startswith("stride_"):
            tensor, dim = p.name.removeprefix("stride_")
            param.kind, param.arg, param.dim = fb.ParamKind.TensorStride, stride_of[tensor], stride_dim[dim]
        elif p.name in ("L_q", "L_kv"):
            param.kind, param.dim = fb.ParamKind.TensorSize, layout.seq
            param.arg = args.query if p.name == "L_q" else args.key
        elif p.name == "sm_scale":
            param.kind, param.f32Value = fb.ParamKind.Float32Constant, softmax_scale
        elif p.name == "global_scratch":
            param.kind = fb.ParamKind.GlobalScratch
        elif p.name == "profile_scratch":
            param.kind = fb.ParamKind.ProfileScratch
        else:
            raise ValueError(f"{kernel} has an entry parameter {p.name!r} this plan cannot bind")
        bound.append(param)
    return bound


def launch_grid(args: AttentionArgs, block_m: int) -> list[fb.GridDimT]:
    """grid = (ceil(L_q / BLOCK_M), B * H_q, 1), as payload factors."""
    q, layout = args.query, args.layout
    return [fb.GridDimT(factors=[grid_factor(q, layout.seq, block_m)]),
            fb.GridDimT(factors=[grid_factor(q, layout.batch), grid_factor(q, layout.heads)]),
            fb.GridDimT(factors=[])]


def attention_kernel(*, config: KernelConfig, dtype: torch.dtype, num_heads_q: int, num_heads_kv: int,
                     head_dim: int, variant: AttentionVariant, scale: float, archs: Iterable[int], ptx: bool,
                     args: AttentionArgs, extra_bindings: Optional[dict] = None, aligned: bool = True,
                     lengths_aligned: bool = False) -> fb.KernelT:
    """Compile gqa_attention_fwd with `config` for each arch and describe its launch.

    aligned=False: the generic variant, compiled with no divisibility assumed.
    lengths_aligned: L_q and L_kv compiled as multiples of 16 too."""

    def compile_one(arch):
        return compile_attention(
            dtype=dtype, head_dim=head_dim, num_heads_q=num_heads_q, group_size=num_heads_q // num_heads_kv,
            variant=variant, arch=arch, block_m=config.block_m, block_n=config.block_n,
            num_warps=config.num_warps, num_stages=config.num_stages, aligned=aligned,
            lengths_aligned=lengths_aligned, warp_specialized=config.warp_specialized,
        )

    def describe(kernel, compiled):
        kernel.params = bind_params(compiled.params, args, scale, extra=extra_bindings)
        kernel.grid = launch_grid(args, config.block_m)

    # The key names everything compile_one compiles: one payload may hold attentions of several
    # variants (a whole step's sliding and full layers).
    problem = (dtype, head_dim, num_heads_q, num_heads_kv, variant)
    return compile_for_archs(compile_one, archs, ptx, describe,
                             key=("fwd", problem, config, aligned, lengths_aligned))


@dataclass(frozen=True)
class DecodePlan:
    """The split-KV decode launch of one problem (or one range of sizes), decided ahead of time."""

    config: KernelConfig
    # Programs on the split grid axis, a constant: the split kernel divides
    # the keys it may see among however many there are, and the combine
    # merges this many.
    num_splits: int  # 1: the single-launch path
    partial_offset: int
    partial_bytes: int
    lse_offset: int
    lse_bytes: int
    fused: bool = False  # several splits merged in the split kernel (one launch)
    arrivals_offset: int = 0
    arrivals_bytes: int = 0

    @property
    def workspace_bytes(self) -> int:
        if self.num_splits == 1:
            return 0
        return self.arrivals_offset + self.arrivals_bytes if self.fused else self.lse_offset + self.lse_bytes


def decode_plan(*, dtype: torch.dtype, batch: int, num_heads_q: int, num_heads_kv: int, head_dim: int,
                l_q: int, l_kv: int, attended_keys: Optional[int] = None,
                arch: Optional[int] = None) -> Optional[DecodePlan]:
    """The decode plan of a problem on `arch` (None: any), or None when it runs the forward kernel.

    For a range of sizes, l_q and l_kv are the largest of the range: the
    workspace holds their partials, and shorter calls use part of it. The
    split count is planned for attended_keys (default: all l_kv); a device
    kv_len, a window or a shorter L_kv only shortens the splits the kernel
    cuts at run time.
    """
    if l_q > MAX_DECODE_L_Q:
        return None
    group = num_heads_q // num_heads_kv
    keys = l_kv if attended_keys is None else attended_keys
    config, requested = decode_launch(head_dim, dtype, group, l_q, batch, num_heads_kv, keys, NOMINAL_SMS, arch)
    m_tiles = decode_split_grid(1, batch, num_heads_kv, group, l_q, config.block_m)[2]
    if m_tiles != 1:
        # The packed GROUP_SIZE * L_q rows need several M tiles. Grid axis 2
        # would be cdiv(group * L_q, BLOCK_M), which payload grid factors
        # (products of cdiv(size, divisor) of single sizes) cannot express,
        # and each M tile re-reads all of K/V; with that many query rows per
        # KV head the forward kernel already has the parallelism it needs.
        return None
    num_splits = split_plan(keys, requested, config.block_n)[1]
    partial_shape, lse_shape = decode_workspace_shape(batch, num_heads_q, l_q, head_dim, num_splits)
    partial_bytes = int(np.prod(partial_shape)) * 4  # fp32
    lse_bytes = int(np.prod(lse_shape)) * 4
    lse_offset = _round_up(partial_bytes, WORKSPACE_ALIGN)
    fused = fused_combine_for(num_splits, group, l_q, head_dim)
    arrivals_offset = _round_up(lse_offset + lse_bytes, WORKSPACE_ALIGN)
    arrivals_bytes = decode_arrivals_count(batch, num_heads_kv, m_tiles) * 4 if fused else 0  # int32
    return DecodePlan(config=config, num_splits=num_splits, partial_offset=0, partial_bytes=partial_bytes,
                      lse_offset=lse_offset, lse_bytes=lse_bytes, fused=fused, arrivals_offset=arrivals_offset,
                      arrivals_bytes=arrivals_bytes)


def decode_kernels(*, plan: DecodePlan, dtype: torch.dtype, num_heads_q: int, num_heads_kv: int, head_dim: int,
                   variant: AttentionVariant, scale: float, archs: Iterable[int], ptx: bool,
                   args: AttentionArgs, extra_bindings: Optional[dict] = None,
                   aligned: bool = True) -> list[fb.KernelT]:
    """Compile the split kernel (and the combine kernel for several unfused splits) and describe their launches.

    aligned=False: the generic variant, with no divisibility assumed of the tensors."""
    archs = list(archs)
    config, single = plan.config, plan.num_splits == 1
    problem = (dtype, head_dim, num_heads_q, num_heads_kv, variant)  # with the tiles: all compile_split compiles
    # Workspace pointers a launch never touches still are entry parameters:
    # they get Out's (valid) address.
    out = binding(fb.ParamKind.TensorPointer, arg=args.out)
    if single:
        workspace = {"Partial": out, "Lse": out, "Arrivals": out}
    else:
        workspace = {"Partial": binding(fb.ParamKind.Workspace, workspaceOffset=plan.partial_offset,
                                         workspaceExtent=plan.partial_bytes),
                     "Lse": binding(fb.ParamKind.Workspace, workspaceOffset=plan.lse_offset,
                                     workspaceExtent=plan.lse_bytes),
                     "Arrivals": out}
        if plan.fused:
            workspace["Arrivals"] = binding(fb.ParamKind.Workspace, workspaceOffset=plan.arrivals_offset,
                                             workspaceExtent=plan.arrivals_bytes)

    def compile_split(arch):
        return compile_decode_split(
            dtype=dtype, head_dim=head_dim, num_heads_q=num_heads_q, group_size=num_heads_q // num_heads_kv,
            variant=variant, single_split=single, arch=arch, block_m=config.block_m,
            block_n=config.block_n, num_warps=config.num_warps, num_stages=config.num_stages,
            fused_combine=plan.fused, aligned=aligned,
            launch_dependents=not single and not plan.fused and arch >= PROGRAMMATIC_LAUNCH_ARCH,
        )

    def describe_split(kernel, compiled):
        kernel.params = bind_params(compiled.params, args, scale, kernel=compiled.name,
                                    extra={**workspace, **(extra_bindings or {})})
        # Axis 0: the splits (the kernel reads their count as num_programs(0)).
        kernel.grid = [fb.GridDimT(factors=[], multiplier=plan.num_splits),
                       fb.GridDimT(factors=[grid_factor(args.key, args.layout.batch),
                                            grid_factor(args.key, args.layout.heads)]),
                       fb.GridDimT(factors=[])]  # one M tile (decode_plan)

    kernels = [compile_for_archs(compile_split, archs, ptx, describe_split,
                                  key=("split", problem, config, single, plan.fused, aligned))]
    if single or plan.fused:
        return kernels
    block_s = combine_block_s(plan.num_splits, head_dim)

    def compile_combine(arch):
        return compile_decode_combine(dtype=dtype, head_dim=head_dim, num_heads_q=num_heads_q, arch=arch,
                                      block_s=block_s, aligned=aligned,
                                      wait_for_splits=arch >= PROGRAMMATIC_LAUNCH_ARCH)

    def describe_combine(kernel, compiled):
        kernel.params = bind_params(compiled.params, args, scale, kernel=compiled.name,
                                    extra={**workspace, **(extra_bindings or {}),
                                           "NUM_SPLITS": binding(fb.ParamKind.Int32Constant, i32Value=plan.num_splits)})
        kernel.waitsForPrevious = True  # its sm_90+ images wait for the split kernel themselves
        q, layout = args.query, args.layout  # grid (L_q, B * H_q, 1)
        kernel.grid = [fb.GridDimT(factors=[grid_factor(q, layout.seq)]),
                       fb.GridDimT(factors=[grid_factor(q, layout.batch), grid_factor(q, layout.heads)]),
                       fb.GridDimT(factors=[])]

    kernels.append(compile_for_archs(compile_combine, archs, ptx, describe_combine,
                                      key=("combine", dtype, head_dim, num_heads_q, block_s, aligned)))
    return kernels


def _arch_groups(archs: list[int], choose) -> list[tuple[list[int], object]]:
    """Archs grouped by choose(arch), in arch order: [(archs, choice), ...]."""
    groups: dict = {}
    for arch in archs:
        groups.setdefault(choose(arch), []).append(arch)
    return [(group, choice) for choice, group in groups.items()]


def _mask_stride_bindings(args: AttentionArgs, mask_shape: tuple[int, ...], broadcast: tuple[bool, ...]) -> dict:
    """Mask stride parameters -> the mask input's own dims (a rank-r mask aligns to the last r of 4)."""
    first = 4 - len(mask_shape)
    return {name: binding(fb.ParamKind.TensorStride, arg=args.mask, dim=d - first)
            for d, name in enumerate(MASK_STRIDES) if not broadcast[d]}


# A sequence length: a static size, or the inclusive range (min, max) of a dynamic one.
Length = Union[int, tuple[int, int]]


def _length_range(name: str, length: Length) -> tuple[int, int]:
    lo, hi = (length, length) if isinstance(length, int) else (int(length[0]), int(length[1]))
    if not 0 <= lo <= hi:
        raise ValueError(f"{name} range [{lo}, {hi}] is empty or negative")
    return lo, hi


def dispatch_rows(*, dtype: torch.dtype, batch: int, num_heads_q: int, num_heads_kv: int, head_dim: int,
                  l_q: tuple[int, int], l_kv: tuple[int, int], keys_follow_query: bool = False,
                  attended_keys: Optional[int] = None, arch: Optional[int] = None,
                  fwd_config: Optional[KernelConfig] = None, warp_specialized: bool = False) -> tuple:
    """The dispatch table of one arch: ((l_q range, l_kv range, choice), ...), in order.

    choice is a DecodePlan (split-KV decode) or a KernelConfig (forward
    kernel). L_q is cut where the decode tiles change and at MAX_DECODE_L_Q;
    decode L_kv is cut at heuristics.kv_length_buckets, each range planned
    for its longest length. Neighbouring rows that choose alike are merged.
    keys_follow_query: the kernels attend only the first L_q keys (causal
    with L_q < L_kv), so splits are planned for L_q keys.
    warp_specialized: the call may take the warp-specialized forward
    (heuristics.warp_specialized_forward_applies).
    """
    problem = dict(dtype=dtype, num_heads_q=num_heads_q, num_heads_kv=num_heads_kv, head_dim=head_dim)
    forward = fwd_config or attention_config(head_dim, dtype, arch, warp_specialized)

    def launch_kind(choice):
        """What must agree for two rows to merge; a DecodePlan's workspace may grow."""
        return choice if isinstance(choice, KernelConfig) else (choice.config, choice.num_splits, choice.fused)

    rows: list[list] = []  # [l_q lo, l_q hi, [(l_kv lo, l_kv hi, choice), ...]]
    for q in range(l_q[0], min(l_q[1], MAX_DECODE_L_Q) + 1):
        if decode_plan(batch=batch, l_q=q, l_kv=l_kv[1], arch=arch, **problem) is None:
            columns = [(l_kv[0], l_kv[1], forward)]
        else:
            columns = []
            keys = q if keys_follow_query else attended_keys
            for kv_lo, kv_hi in kv_length_buckets(*l_kv):
                plan = decode_plan(batch=batch, l_q=q, l_kv=kv_hi, attended_keys=keys, arch=arch, **problem)
                if columns and columns[-1][2] == plan:
                    columns[-1] = (columns[-1][0], kv_hi, plan)
                else:
                    columns.append((kv_lo, kv_hi, plan))
        _append_row(rows, q, q, columns, launch_kind)
    if l_q[1] > MAX_DECODE_L_Q:
        _append_row(rows, max(l_q[0], MAX_DECODE_L_Q + 1), l_q[1], [(l_kv[0], l_kv[1], forward)], launch_kind)
    return tuple(((q_lo, q_hi), (kv_lo, kv_hi), choice) for q_lo, q_hi, columns in rows
                 for kv_lo, kv_hi, choice in columns)


def _length_alignments(q_rows: tuple[int, int], kv_values: Optional[tuple[int, int]]) -> tuple[bool, ...]:
    """Which forward-kernel plans a row needs, most specialised first: True compiles L_q and
    L_kv as multiples of 16, False does not. kv_values: the L_kv param's range (None: L_q's)."""

    def alignments(lo: int, hi: int) -> set[bool]:
        if lo == hi:
            return {lo % 16 == 0}
        return {False, True} if hi // 16 * 16 >= lo else {False}

    q = alignments(*q_rows)
    kv = q if kv_values is None else alignments(*kv_values)
    possible = {True} if True in q and True in kv else set()
    if False in q or False in kv:
        possible.add(False)
    return tuple(sorted(possible, reverse=True))


def _append_row(rows: list, q_lo: int, q_hi: int, columns: list, launch_kind) -> None:
    """Add L_q rows [q_lo, q_hi], or widen the last row when it launches alike over the same
    L_kv ranges (taking the new choices: a longer L_q needs the larger workspace)."""
    if rows:
        last = rows[-1]
        if last[1] + 1 == q_lo and [(lo, hi, launch_kind(c)) for lo, hi, c in last[2]] == [
                (lo, hi, launch_kind(c)) for lo, hi, c in columns]:
            last[1], last[2] = q_hi, columns
            return
    rows.append([q_lo, q_hi, columns])


def _rows_spec(spec, dtype: torch.dtype, sizes: tuple, rank: int, query: int, query_seq: int) -> fb.TensorSpecT:
    """The spec of a tensor with one row per query (new cache rows, their positions): `sizes`
    with the query's length range in place of the (min, max) one, cut to its last `rank` dims;
    a dynamic length is read from the query's."""
    sizes = sizes[len(sizes) - rank:]
    (lo, hi), = [s for s in sizes if isinstance(s, tuple)]
    static = [lo if isinstance(s, tuple) else s for s in sizes]
    if lo == hi:
        return spec(dtype, static)
    dim = next(d for d, s in enumerate(sizes) if isinstance(s, tuple))
    return spec(dtype, [-1 if d == dim else s for d, s in enumerate(static)],
                [hi if d == dim else s for d, s in enumerate(static)], [fb.DimSourceT(dim=dim, arg=query, argDim=query_seq)])


def build_attention_payload(*, dtype: torch.dtype, batch: int, num_heads_q: int, num_heads_kv: int,
                            head_dim: int, l_q: Length, l_kv: Length, is_causal: bool, scale: Optional[float] = None,
                            attended_keys: Optional[int] = None, keys_follow_query: bool = False,
                            kv_follows_query: bool = False, window_left: int = -1, softcap: float = 0.0,
                            mask_shape: Optional[tuple[int, ...]] = None, mask_dtype: Optional[torch.dtype] = None,
                            kv_len_dtype: Optional[torch.dtype] = None, archs: Iterable[int] = (80, 90),
                            ptx: bool = True, args: AttentionArgs = AttentionArgs(),
                            fwd_config: Optional[KernelConfig] = None, generic: bool = True,
                            cache: Optional[KvCacheArgs] = None, start: Optional[StartPosition] = None) -> bytes:
    """The payload of one SDPA call q [B, H_q, L_q, D], k/v [B, H_kv, L_kv, D]
    (or [B, L, H, D] each, with args.layout BSHD).

    l_q and l_kv are static sizes, or (min, max) ranges of dynamic ones: one
    payload then serves every size in the ranges through its dispatch table
    (dispatch_rows), and its buffers are sized for the largest.
    kv_follows_query: L_kv is L_q's dynamic size (self-attention; l_kv must
    equal l_q), so the key and value must have the query's length at run time.

    is_causal is the kernels' bottom-right alignment. attended_keys, when
    given, bounds the keys attended to the first attended_keys of a static
    L_kv (the kernels get it as their L_kv and never read past it);
    keys_follow_query bounds them to the first L_q keys of a dynamic call
    (PyTorch's top-left causal mask; L_q must not exceed L_kv). mask_shape /
    mask_dtype describe the attn_mask input args.mask (broadcastable to
    [B, H_q, L_q, L_kv]; -1 for a dim that has the dynamic L_q or L_kv, which
    the runtime checks against q's or k's length); kv_len_dtype the device
    kv_len scalar args.kv_len.
    window_left and softcap are the kernels' (backends/kernels/online_softmax.py).
    fwd_config: the forward kernel's tiles instead of the heuristics' (for
    tuning sweeps of the AOT cubins, bench/tune_aot.py).

    cache: the delegate owns the KV cache (kv_cache_plan.py; static lengths
    only). K and V are then the payload's two states [B, H_kv, l_kv, D]
    (l_kv = the cache length; args.key/args.value are ignored), written each
    call from the inputs cache.k_new/v_new at cache.positions by a
    kv_cache_write launch ahead of the attention kernels of every plan, which
    attend only the filled keys.

    start: the call's first query is at this input's position (ExecuTorch's
    `llama::custom_sdpa` start_pos): the kernels attend keys [0, start + L_q)
    of the static L_kv, with is_causal aligned to that end (query i sees keys
    up to start + i). With a cache whose positions is None, the new rows are
    written from start on (`llama::update_cache`), and L_q may be dynamic;
    without a cache a kv_len_from_start launch computes the bound.

    Each arch gets the tiles heuristics choose for it; archs that choose
    alike share their plans. Plans of the lowest arch's group list no arch
    (they carry the PTX fallback and serve any GPU no plan lists); the other
    groups' plans list their archs. generic: each group's plans are followed
    by the same plans compiled with no divisibility assumptions, which the
    runtime takes for misaligned tensors.
    """
    softmax_scale = float(scale) if scale is not None else head_dim**-0.5
    archs = sorted(set(archs))
    q_range, kv_range = _length_range("L_q", l_q), _length_range("L_kv", l_kv)
    q_dynamic, kv_dynamic = q_range[0] != q_range[1], kv_range[0] != kv_range[1]
    if kv_follows_query and kv_range != q_range:
        raise ValueError(f"kv_follows_query needs equal L_q and L_kv ranges, got {q_range} and {kv_range}")
    problem = dict(dtype=dtype, num_heads_q=num_heads_q, num_heads_kv=num_heads_kv, head_dim=head_dim)
    if (mask_shape is None) != (args.mask is None) or (mask_shape is None) != (mask_dtype is None):
        raise ValueError("a mask needs mask_shape, mask_dtype and its argument index args.mask together")
    if (kv_len_dtype is None) != (args.kv_len is None):
        raise ValueError("a kv_len needs kv_len_dtype and its argument index args.kv_len together")
    layout = args.layout
    if start is not None:
        if args.kv_len is not None or attended_keys is not None or keys_follow_query or kv_follows_query:
            raise ValueError("a start position bounds the keys itself: no kv_len input, attended_keys or "
                             "keys/kv following the query")
        if kv_dynamic:
            raise ValueError("attention from a start position needs a static L_kv (the cache length)")
        if mask_shape is not None:
            raise ValueError("attention from a start position takes no mask")
        if cache is not None and cache.positions is not None:
            raise ValueError("a cache written at explicit positions takes no start position")
    if cache is not None:
        if args.kv_len is not None or attended_keys is not None or keys_follow_query:
            raise ValueError("a delegate-owned cache bounds the keys itself: no kv_len input or attended_keys")
        if cache.positions is None and start is None:
            raise ValueError("a cache without positions is written from the start position: pass start")
        if kv_dynamic:
            raise ValueError("a delegate-owned cache needs a static L_kv (the cache length)")
        if any(size != 1 for size in (batch, num_heads_kv)[:4 - cache.new_rows_rank]):
            raise ValueError(f"new K/V rows of rank {cache.new_rows_rank} leave out dims of size {batch}, "
                             f"{num_heads_kv}: only size-1 dims may be left out")
        if kv_range[0] != cache.max_seq_len:
            raise ValueError(f"l_kv={kv_range[0]} must be the cache length max_seq_len={cache.max_seq_len}")
        # States follow the outputs: the attention kernels read the caches there.
        args = dataclasses.replace(args, key=args.out + 1, value=args.out + 2)
    if cache is not None or start is not None:
        kv_len_dtype = torch.int32  # the workspace slot the first launch fills
    mask_broadcast = (False,) * 4
    extra_bindings = {}
    mask_sources = []  # the mask's dynamic dims: (its dim, the input and dim whose length it has)
    if mask_shape is not None:
        first = 4 - len(mask_shape)
        lengths = {2: (q_dynamic, q_range[1], args.query), 3: (kv_dynamic, kv_range[1], args.key)}
        bounded = list(mask_shape)  # -1 dims at their bound
        for d, m in enumerate(mask_shape):
            dynamic, bound, arg = lengths.get(d + first, (False, 0, 0))
            if dynamic and m not in (1, -1):
                raise ValueError(f"attn_mask shape {tuple(mask_shape)}: dim {d} meets a dynamic length, "
                                 "so it must be 1 (broadcast) or -1 (that length)")
            if m == -1:
                if not dynamic:
                    raise ValueError(f"attn_mask shape {tuple(mask_shape)}: only a dynamic L_q or L_kv dim "
                                     "may be -1")
                bounded[d] = bound
                mask_sources.append(fb.DimSourceT(dim=d, arg=arg, argDim=layout.seq))
        mask_problem = mask_shape_problem(bounded, (batch, num_heads_q, q_range[1], kv_range[1]))
        if mask_problem is not None:
            raise ValueError(mask_problem)
        aligned = (1,) * (4 - len(mask_shape)) + tuple(mask_shape)
        # Size-1 dims (and missing leading ones) are indexed at 0 only: their strides are compiled as 0.
        mask_broadcast = tuple(m == 1 for m in aligned)
        extra_bindings.update(_mask_stride_bindings(args, tuple(mask_shape), mask_broadcast))
    variant = AttentionVariant(is_causal=is_causal, window_left=window_left, softcap=softcap, mask_dtype=mask_dtype,
                               mask_broadcast=mask_broadcast, kv_len_dtype=kv_len_dtype)
    if attended_keys is not None:
        if kv_dynamic:
            raise ValueError("attended_keys needs a static L_kv; use keys_follow_query for a dynamic one")
        if not 0 < attended_keys <= kv_range[0]:
            raise ValueError(f"attended_keys={attended_keys} is not in [1, L_kv={kv_range[0]}]")
        extra_bindings["L_kv"] = binding(fb.ParamKind.Int32Constant, i32Value=attended_keys)
    if keys_follow_query:
        if q_range[1] > kv_range[0]:
            raise ValueError(f"keys_follow_query needs L_q <= L_kv, but L_q may reach {q_range[1]} "
                             f"and L_kv be {kv_range[0]}")
        extra_bindings["L_kv"] = binding(fb.ParamKind.TensorSize, arg=args.query, dim=layout.seq)

    def choose(arch: int):
        warp_specialized = warp_specialized_forward_applies(
            arch=arch, dtype=dtype, head_dim=head_dim, scale=softmax_scale, masked=mask_shape is not None,
            window_left=window_left, softcap=softcap, has_kv_len=kv_len_dtype is not None,
            min_l_kv=attended_keys if attended_keys is not None else kv_range[0])
        rows = dispatch_rows(batch=batch, l_q=q_range, l_kv=kv_range, keys_follow_query=keys_follow_query,
                             attended_keys=attended_keys, arch=arch, fwd_config=fwd_config,
                             warp_specialized=warp_specialized, **problem)
        if kv_follows_query:  # L_kv is L_q: rows whose L_kv range misses their L_q range never run
            rows = tuple(r for r in rows if r[1][0] <= r[0][1] and r[0][0] <= r[1][1])
        return rows

    def when(q_rows: tuple[int, int], kv_rows: tuple[int, int]) -> list[fb.SizeRangeT]:
        """The ranges of a row, on the dynamic sizes only (static ones are the specs')."""
        ranges = []
        if q_dynamic:
            ranges.append(fb.SizeRangeT(arg=args.query, dim=layout.seq, min=q_rows[0], max=q_rows[1]))
        if kv_dynamic and not kv_follows_query:
            ranges.append(fb.SizeRangeT(arg=args.key, dim=layout.seq, min=kv_rows[0], max=kv_rows[1]))
        return ranges

    def kv_param_range(kv_rows: tuple[int, int]) -> Optional[tuple[int, int]]:
        """The values the kernels' L_kv param takes in a row; None when it is L_q's."""
        if attended_keys is not None:
            return attended_keys, attended_keys
        if keys_follow_query or kv_follows_query:
            return None
        return kv_rows

    plans, workspace_bytes = [], 0
    with sharing_compiles():  # every (kernel, arch) of the payload side by side, each compiled once
        for index, (group, rows) in enumerate(_arch_groups(archs, choose)):
            for aligned in (True, False) if generic else (True,):
                with_ptx = ptx and index == 0
                for q_rows, kv_rows, choice in rows:
                    workspace = 0 if isinstance(choice, KernelConfig) else choice.workspace_bytes
                    bindings, first = extra_bindings, []
                    if cache is not None or start is not None:
                        # kv_cache_write (or kv_len_from_start) leaves kv_len in a slot after
                        # this plan's workspace.
                        slot = kv_len_offset(workspace)
                        bindings = {**extra_bindings, "KvLen": binding(
                            fb.ParamKind.Workspace, workspaceOffset=slot, workspaceExtent=4)}
                        if cache is not None:
                            first = [cache_write_kernel(cache=cache, k_state_arg=args.key,
                                                        v_state_arg=args.value, kv_len_offset=slot, dtype=dtype,
                                                        head_dim=head_dim, num_heads_kv=num_heads_kv,
                                                        l_new=q_range[1], archs=group, ptx=with_ptx,
                                                        layout=layout, start=start)]
                        else:
                            first = [kv_len_kernel(start=start, args=args, kv_len_offset=slot, archs=group,
                                                   ptx=with_ptx)]
                        workspace = slot + KV_LEN_SLOT_BYTES
                    common = dict(variant=variant, scale=softmax_scale, archs=group, ptx=with_ptx,
                                  args=args, extra_bindings=bindings, aligned=aligned, **problem)
                    workspace_bytes = max(workspace_bytes, workspace)
                    if isinstance(choice, KernelConfig):
                        if choice.warp_specialized and not aligned:  # it takes aligned inputs only
                            choice = attention_config(head_dim, dtype, group[0])
                        tiers = _length_alignments(q_rows, kv_param_range(kv_rows)) if aligned else (False,)
                        launches = [first + [attention_kernel(config=choice, lengths_aligned=lengths, **common)]
                                    for lengths in tiers]
                    else:
                        launches = [first + decode_kernels(plan=choice, **common)]
                    plans += [fb.LaunchPlanT(archs=[] if index == 0 else group, when=when(q_rows, kv_rows),
                                             kernels=kernels) for kernels in launches]

    def spec(dtype: torch.dtype, sizes, max_sizes=None, size_from=None) -> fb.TensorSpecT:
        return fb.TensorSpecT(dtype=DTYPE_TO_PAYLOAD[dtype], sizes=list(sizes), maxSizes=max_sizes,
                              sizeFrom=size_from)

    def qkv_spec(heads: int, length: tuple[int, int], size_from=None) -> fb.TensorSpecT:
        if length[0] == length[1]:
            return spec(dtype, layout.shape(batch, heads, length[0], head_dim))
        return spec(dtype, layout.shape(batch, heads, -1, head_dim), layout.shape(batch, heads, length[1], head_dim),
                    size_from)

    def same_length_as(arg: int) -> Optional[list[fb.DimSourceT]]:
        return [fb.DimSourceT(dim=layout.seq, arg=arg, argDim=layout.seq)]

    inputs: list[Optional[fb.TensorSpecT]] = [None] * args.num_inputs
    inputs[args.query] = qkv_spec(num_heads_q, q_range)
    states = None
    if cache is None:
        inputs[args.key] = qkv_spec(num_heads_kv, kv_range, same_length_as(args.query) if kv_follows_query else None)
        inputs[args.value] = qkv_spec(num_heads_kv, kv_range, same_length_as(args.key) if kv_dynamic else None)
    else:
        l_cache = kv_range[0]
        # As many new rows (and positions) as queries: the query's length, maybe dynamic.
        for index in (cache.k_new, cache.v_new):
            if cache.positions is None:
                inputs[index] = qkv_spec(num_heads_kv, q_range, same_length_as(args.query) if q_dynamic else None)
            else:
                inputs[index] = _rows_spec(spec, dtype, (batch, num_heads_kv, q_range, head_dim),
                                           cache.new_rows_rank, args.query, layout.seq)
        if cache.positions is not None:
            inputs[cache.positions] = _rows_spec(spec, cache.position_dtype, (q_range,), 1, args.query, layout.seq)
        states = [fb.StateSpecT(name=name, dtype=DTYPE_TO_PAYLOAD[dtype],
                                sizes=layout.shape(batch, num_heads_kv, l_cache, head_dim))
                  for name in (cache.k_state, cache.v_state)]
    if start is not None:
        inputs[start.arg] = spec(start.dtype, list(start.sizes))
    if args.mask is not None:
        inputs[args.mask] = (spec(mask_dtype, mask_shape) if not mask_sources else
                             spec(mask_dtype, mask_shape, bounded, mask_sources))
    if args.kv_len is not None:
        inputs[args.kv_len] = spec(kv_len_dtype, [])
    if any(s is None for s in inputs):
        raise ValueError(f"delegate arguments {args} leave an input unbound")
    # The output has the query's shape.
    output = qkv_spec(num_heads_q, q_range, same_length_as(args.query) if q_dynamic else None)
    # Positions outside the cache (L_kv rows) are an error execute reports, not rows the kernels skip.
    bounds = []
    if cache is not None and cache.positions is not None:
        bounds.append(fb.PositionBoundT(arg=cache.positions, bound=kv_range[0]))
    if start is not None:
        bounds.append(fb.PositionBoundT(arg=start.arg, startOnly=True, rowsArg=args.query, rowsDim=layout.seq,
                                        bound=kv_range[0]))
    return serialize_payload(fb.PayloadT(inputs=inputs, outputs=[output], plans=plans,
                                         workspaceBytes=workspace_bytes, states=states, positionBounds=bounds))
