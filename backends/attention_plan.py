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
              which the runtime allocates once at init.

Tiles, split length and split count are chosen per arch (heuristics.py reads
the tuning table of each); archs that choose alike share one launch plan.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch

from .aot.attention import compile_attention
from .aot.attention_decode import COMBINE_BLOCK_S, compile_decode_combine, compile_decode_split
from .aot.compile_pool import worker_count
from .kernels.attention_decode import decode_split_grid, decode_workspace_shape
from .heuristics import NOMINAL_SMS, KernelConfig, attention_config, decode_config, decode_split_count, split_plan
from .kernels.jit_launch import MAX_DECODE_L_Q
from .serialization import payload_generated as fb
from .serialization import serialize_payload

logger = logging.getLogger(__name__)

DTYPE_TO_PAYLOAD = {
    torch.float32: fb.DType.Float32,
    torch.float16: fb.DType.Float16,
    torch.bfloat16: fb.DType.BFloat16,
}


@dataclass(frozen=True)
class AttentionArgs:
    """Delegate argument indices (inputs first, then outputs) of one attention call."""

    query: int = 0
    key: int = 1
    value: int = 2
    out: int = 3


# Partial and Lse are compiled as 16-byte aligned (tt.divisibility 16).
WORKSPACE_ALIGN = 16
_PARAM_TYPE = {"ptr": fb.ParamType.Pointer, "i32": fb.ParamType.Int32,
               "i64": fb.ParamType.Int64, "fp32": fb.ParamType.Float32}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def bind_params(entry_params, args: AttentionArgs, softmax_scale: float, *, kernel: str = "gqa_attention_fwd",
                extra: Optional[dict] = None) -> list[fb.KernelParamT]:
    """Bind an attention kernel's entry parameters to delegate tensors and constants.

    The parameters every attention kernel shares (Q/K/V/Out, strides, L_q,
    L_kv, sm_scale, Triton's scratch) are bound here by name; `extra` maps any
    other name to a callable that fills the fb.KernelParamT it is given.
    """
    tensor_of = {"Q": args.query, "K": args.key, "V": args.value, "Out": args.out}
    stride_of = {"q": args.query, "k": args.key, "v": args.value, "o": args.out}
    stride_dim = {"b": 0, "h": 1, "m": 2, "n": 2}
    extra = extra or {}
    bound = []
    for p in entry_params:
        param = fb.KernelParamT(type=_PARAM_TYPE[p.type], divisibility=p.divisibility)
        if p.name in extra:
            extra[p.name](param)
        elif p.name in tensor_of:
            param.kind, param.arg = fb.ParamKind.TensorPointer, tensor_of[p.name]
        elif p.name.startswith("stride_"):
            tensor, dim = p.name.removeprefix("stride_")
            param.kind, param.arg, param.dim = fb.ParamKind.TensorStride, stride_of[tensor], stride_dim[dim]
        elif p.name in ("L_q", "L_kv"):
            param.kind, param.dim = fb.ParamKind.TensorSize, 2
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


def _factor(arg: int, dim: int, divisor: int = 1) -> fb.GridFactorT:
    return fb.GridFactorT(arg=arg, dim=dim, divisor=divisor)


def launch_grid(args: AttentionArgs, block_m: int) -> list[fb.GridDimT]:
    """grid = (ceil(L_q / BLOCK_M), B * H_q, 1), as payload factors."""
    q = args.query
    return [fb.GridDimT(factors=[_factor(q, 2, block_m)]), fb.GridDimT(factors=[_factor(q, 0), _factor(q, 1)]),
            fb.GridDimT(factors=[])]


def _compile_for_archs(compile_one, archs: Iterable[int], ptx: bool, describe) -> fb.KernelT:
    """compile_one(arch) for each arch into one payload kernel; describe(kernel, compiled)
    binds params and grid from the first arch's entry point (all must agree).

    The archs compile side by side (one thread each; aot/compile_pool runs
    the compilations in worker processes), with a progress line per arch."""
    archs = list(archs)
    kernel = fb.KernelT(cubins=[])
    first = None
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(min(len(archs), worker_count()), 1)) as threads:
        pending = {threads.submit(compile_one, arch): arch for arch in archs}
        for done, future in enumerate(as_completed(pending), 1):
            compiled = future.result()
            logger.info("compiled %s sm_%d (%d/%d, %.1f s)", compiled.name, pending[future], done, len(archs),
                        time.perf_counter() - start)
        results = [future.result() for future in pending]
    for arch, compiled in zip(archs, results):
        if first is None:
            first = compiled
            kernel.name = compiled.name
            kernel.numWarps = compiled.num_warps
            describe(kernel, compiled)
            kernel.globalScratchBytes = compiled.global_scratch_bytes
            kernel.globalScratchAlign = compiled.global_scratch_align
            kernel.profileScratchBytes = compiled.profile_scratch_bytes
            kernel.profileScratchAlign = compiled.profile_scratch_align
            if ptx:
                # PTX of the lowest arch runs on every newer GPU through the driver's JIT.
                kernel.ptx = np.frombuffer(compiled.ptx.encode(), dtype=np.uint8)
                kernel.ptxArch = arch
        elif (compiled.params, compiled.name) != (first.params, first.name):
            raise RuntimeError(f"sm_{arch} compiled a different entry point than sm_{first.arch}")
        # Same launch config on every arch: take the largest shared memory
        # (and scratch) any of them needs.
        kernel.sharedMemBytes = max(kernel.sharedMemBytes, compiled.shared_mem_bytes)
        kernel.globalScratchBytes = max(kernel.globalScratchBytes, compiled.global_scratch_bytes)
        kernel.profileScratchBytes = max(kernel.profileScratchBytes, compiled.profile_scratch_bytes)
        kernel.cubins.append(fb.CubinT(arch=arch, image=np.frombuffer(compiled.cubin, dtype=np.uint8)))
    return kernel


def attention_kernel(*, config: KernelConfig, dtype: torch.dtype, num_heads_q: int, num_heads_kv: int,
                     head_dim: int, is_causal: bool, scale: float, archs: Iterable[int], ptx: bool,
                     args: AttentionArgs, key_bound: Optional[dict] = None) -> fb.KernelT:
    """Compile gqa_attention_fwd with `config` for each arch and describe its launch."""

    def compile_one(arch):
        return compile_attention(
            dtype=dtype, head_dim=head_dim, num_heads_q=num_heads_q, group_size=num_heads_q // num_heads_kv,
            is_causal=is_causal, arch=arch, block_m=config.block_m, block_n=config.block_n,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )

    def describe(kernel, compiled):
        kernel.params = bind_params(compiled.params, args, scale, extra=key_bound)
        kernel.grid = launch_grid(args, config.block_m)

    return _compile_for_archs(compile_one, archs, ptx, describe)


@dataclass(frozen=True)
class DecodePlan:
    """The split-KV decode launch of one static problem, decided ahead of time."""

    config: KernelConfig
    split_len: int   # SPLIT_LEN: keys per split, a multiple of BLOCK_N
    num_splits: int  # = cdiv(L_kv, SPLIT_LEN); 1: the single-launch path
    partial_offset: int
    partial_bytes: int
    lse_offset: int
    lse_bytes: int

    @property
    def workspace_bytes(self) -> int:
        return 0 if self.num_splits == 1 else self.lse_offset + self.lse_bytes


def decode_plan(*, dtype: torch.dtype, batch: int, num_heads_q: int, num_heads_kv: int, head_dim: int,
                l_q: int, l_kv: int, arch: Optional[int] = None) -> Optional[DecodePlan]:
    """The decode plan of a problem on `arch` (None: any), or None when it runs the forward kernel."""
    if l_q > MAX_DECODE_L_Q:
        return None
    group = num_heads_q // num_heads_kv
    config = decode_config(head_dim, dtype, group, l_q, arch)
    m_tiles = decode_split_grid(1, batch, num_heads_kv, group, l_q, config.block_m)[2]
    if m_tiles != 1:
        # The packed GROUP_SIZE * L_q rows need several M tiles. Grid axis 2
        # would be cdiv(group * L_q, BLOCK_M), which payload grid factors
        # (products of cdiv(size, divisor) of single sizes) cannot express,
        # and each M tile re-reads all of K/V; with that many query rows per
        # KV head the forward kernel already has the parallelism it needs.
        return None
    requested = decode_split_count(batch, num_heads_kv, l_kv, NOMINAL_SMS, config.block_n, m_tiles=m_tiles)
    split_len, num_splits = split_plan(l_kv, requested, config.block_n)
    partial_shape, lse_shape = decode_workspace_shape(batch, num_heads_q, l_q, head_dim, num_splits)
    partial_bytes = int(np.prod(partial_shape)) * 4  # fp32
    lse_bytes = int(np.prod(lse_shape)) * 4
    lse_offset = _round_up(partial_bytes, WORKSPACE_ALIGN)
    return DecodePlan(config=config, split_len=split_len, num_splits=num_splits, partial_offset=0,
                      partial_bytes=partial_bytes, lse_offset=lse_offset, lse_bytes=lse_bytes)


def _workspace_binding(offset: int, extent: int):
    def bind(param: fb.KernelParamT) -> None:
        param.kind, param.workspaceOffset, param.workspaceExtent = fb.ParamKind.Workspace, offset, extent
    return bind


def _int32_binding(value: int):
    def bind(param: fb.KernelParamT) -> None:
        param.kind, param.i32Value = fb.ParamKind.Int32Constant, value
    return bind


def _tensor_binding(arg: int):
    def bind(param: fb.KernelParamT) -> None:
        param.kind, param.arg = fb.ParamKind.TensorPointer, arg
    return bind


def decode_kernels(*, plan: DecodePlan, dtype: torch.dtype, num_heads_q: int, num_heads_kv: int, head_dim: int,
                   is_causal: bool, scale: float, archs: Iterable[int], ptx: bool,
                   args: AttentionArgs, key_bound: Optional[dict] = None) -> list[fb.KernelT]:
    """Compile the split kernel (and the combine kernel for several splits) and describe their launches."""
    archs = list(archs)
    config, single = plan.config, plan.num_splits == 1
    if single:
        # SINGLE_SPLIT never touches Partial/Lse; they still are entry
        # parameters, so they get Out's (valid, 16-byte aligned) address.
        workspace = {"Partial": _tensor_binding(args.out), "Lse": _tensor_binding(args.out)}
    else:
        workspace = {"Partial": _workspace_binding(plan.partial_offset, plan.partial_bytes),
                     "Lse": _workspace_binding(plan.lse_offset, plan.lse_bytes)}

    def compile_split(arch):
        return compile_decode_split(
            dtype=dtype, head_dim=head_dim, num_heads_q=num_heads_q, group_size=num_heads_q // num_heads_kv,
            is_causal=is_causal, single_split=single, arch=arch, block_m=config.block_m,
            block_n=config.block_n, num_warps=config.num_warps, num_stages=config.num_stages,
        )

    def describe_split(kernel, compiled):
        kernel.params = bind_params(compiled.params, args, scale, kernel=compiled.name,
                                    extra={**workspace, **(key_bound or {}),
                                           "SPLIT_LEN": _int32_binding(plan.split_len)})
        # Axis 0: the splits. cdiv(L_kv, SPLIT_LEN) is exactly the count the
        # kernel requires (it reads it back as num_programs(0)); one split: 1.
        splits = [] if single else [_factor(args.key, 2, plan.split_len)]
        kernel.grid = [fb.GridDimT(factors=splits), fb.GridDimT(factors=[_factor(args.key, 0), _factor(args.key, 1)]),
                       fb.GridDimT(factors=[])]  # one M tile (decode_plan)

    kernels = [_compile_for_archs(compile_split, archs, ptx, describe_split)]
    if single:
        return kernels

    def compile_combine(arch):
        return compile_decode_combine(dtype=dtype, head_dim=head_dim, num_heads_q=num_heads_q, arch=arch,
                                      block_s=COMBINE_BLOCK_S)

    def describe_combine(kernel, compiled):
        kernel.params = bind_params(compiled.params, args, scale, kernel=compiled.name,
                                    extra={**workspace, "NUM_SPLITS": _int32_binding(plan.num_splits)})
        q = args.query  # grid (L_q, B * H_q, 1)
        kernel.grid = [fb.GridDimT(factors=[_factor(q, 2)]), fb.GridDimT(factors=[_factor(q, 0), _factor(q, 1)]),
                       fb.GridDimT(factors=[])]

    kernels.append(_compile_for_archs(compile_combine, archs, ptx, describe_combine))
    return kernels


def _arch_groups(archs: list[int], choose) -> list[tuple[list[int], object]]:
    """Archs grouped by choose(arch), in arch order: [(archs, choice), ...]."""
    groups: dict = {}
    for arch in archs:
        groups.setdefault(choose(arch), []).append(arch)
    return [(group, choice) for choice, group in groups.items()]


def build_attention_payload(*, dtype: torch.dtype, batch: int, num_heads_q: int, num_heads_kv: int,
                            head_dim: int, l_q: int, l_kv: int, is_causal: bool, scale: Optional[float] = None,
                            attended_keys: Optional[int] = None, archs: Iterable[int] = (80, 90), ptx: bool = True,
                            args: AttentionArgs = AttentionArgs()) -> bytes:
    """The payload of one SDPA call with static shapes q [B, H_q, L_q, D], k/v [B, H_kv, L_kv, D].

    is_causal is the kernels' bottom-right alignment. attended_keys, when
    given, bounds the keys attended to the first attended_keys of L_kv (the
    kernels get it as their L_kv and never read past it).

    Each arch gets the tiles heuristics choose for it. Archs that choose
    alike share one launch plan; the plan of the lowest arch is the payload's
    own (with the PTX fallback), the others become arch variants.
    """
    softmax_scale = float(scale) if scale is not None else head_dim**-0.5
    archs = sorted(set(archs))
    problem = dict(dtype=dtype, num_heads_q=num_heads_q, num_heads_kv=num_heads_kv, head_dim=head_dim)
    key_bound = None
    if attended_keys is not None:
        if not 0 < attended_keys <= l_kv:
            raise ValueError(f"attended_keys={attended_keys} is not in [1, L_kv={l_kv}]")
        key_bound = {"L_kv": _int32_binding(attended_keys)}
    attended = l_kv if attended_keys is None else attended_keys

    def choose(arch: int):
        plan = decode_plan(batch=batch, l_q=l_q, l_kv=attended, arch=arch, **problem)
        return plan if plan is not None else attention_config(head_dim, dtype, arch)

    def launch_set(group: list[int], choice, with_ptx: bool) -> tuple[list[fb.KernelT], int]:
        if isinstance(choice, KernelConfig):
            return [attention_kernel(config=choice, is_causal=is_causal, scale=softmax_scale, archs=group,
                                     ptx=with_ptx, args=args, key_bound=key_bound, **problem)], 0
        if key_bound is not None and choice.num_splits != 1:
            # The split grid is cdiv(size of K, SPLIT_LEN); a constant key
            # bound would need a constant grid factor the schema lacks.
            raise ValueError(f"attended_keys={attended_keys} needs {choice.num_splits} decode splits; "
                             "a bounded key range is planned for one split only")
        return decode_kernels(plan=choice, is_causal=is_causal, scale=softmax_scale, archs=group, ptx=with_ptx,
                              args=args, key_bound=key_bound, **problem), choice.workspace_bytes

    (base_archs, base_choice), *others = _arch_groups(archs, choose)
    kernels, workspace_bytes = launch_set(base_archs, base_choice, ptx)
    variants = []
    for group, choice in others:
        variant_kernels, variant_workspace = launch_set(group, choice, False)
        variants.append(fb.ArchVariantT(archs=group, kernels=variant_kernels, workspaceBytes=variant_workspace))

    def spec(heads: int, length: int) -> fb.TensorSpecT:
        return fb.TensorSpecT(dtype=DTYPE_TO_PAYLOAD[dtype], sizes=[batch, heads, length, head_dim])

    inputs: list[Optional[fb.TensorSpecT]] = [None] * args.out
    inputs[args.query] = spec(num_heads_q, l_q)
    inputs[args.key] = spec(num_heads_kv, l_kv)
    inputs[args.value] = spec(num_heads_kv, l_kv)
    if any(s is None for s in inputs):
        raise ValueError(f"delegate arguments {args} leave an input unbound")
    return serialize_payload(fb.PayloadT(inputs=inputs, outputs=[spec(num_heads_q, l_q)], kernels=kernels,
                                         workspaceBytes=workspace_bytes, archVariants=variants or None))
