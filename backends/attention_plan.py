"""How one attention call is launched: kernel config, argument binding, grid, payload.

Everything here is decided ahead of time and written into the payload; the
runtime shims only evaluate it. Nothing here needs ExecuTorch or a GPU, so
the payload of an attention problem can be built anywhere Triton compiles.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch

from .aot.attention import compile_attention
from .heuristics import attention_config
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


def bind_params(entry_params, args: AttentionArgs, softmax_scale: float) -> list[fb.KernelParamT]:
    """Bind gqa_attention_fwd's entry parameters to delegate tensors and constants."""
    tensor_of = {"Q": args.query, "K": args.key, "V": args.value, "Out": args.out}
    stride_of = {"q": args.query, "k": args.key, "v": args.value, "o": args.out}
    stride_dim = {"b": 0, "h": 1, "m": 2, "n": 2}
    param_type = {"ptr": fb.ParamType.Pointer, "i32": fb.ParamType.Int32,
                  "i64": fb.ParamType.Int64, "fp32": fb.ParamType.Float32}
    bound = []
    for p in entry_params:
        param = fb.KernelParamT(type=param_type[p.type], divisibility=p.divisibility)
        if p.name in tensor_of:
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
            raise ValueError(f"gqa_attention_fwd has an entry parameter {p.name!r} this plan cannot bind")
        bound.append(param)
    return bound


def launch_grid(args: AttentionArgs, block_m: int) -> list[fb.GridDimT]:
    """grid = (ceil(L_q / BLOCK_M), B * H_q, 1), as payload factors."""

    def factor(dim: int, divisor: int = 1) -> fb.GridFactorT:
        return fb.GridFactorT(arg=args.query, dim=dim, divisor=divisor)

    return [fb.GridDimT(factors=[factor(2, block_m)]), fb.GridDimT(factors=[factor(0), factor(1)]),
            fb.GridDimT(factors=[])]


def attention_kernel(*, dtype: torch.dtype, num_heads_q: int, num_heads_kv: int, head_dim: int,
                     is_causal: bool, scale: float, archs: Iterable[int], ptx: bool,
                     args: AttentionArgs) -> fb.KernelT:
    """Compile gqa_attention_fwd for each arch and describe its launch."""
    config = attention_config(head_dim, dtype)
    kernel = fb.KernelT(cubins=[])
    first = None
    for arch in archs:
        start = time.perf_counter()
        compiled = compile_attention(
            dtype=dtype, head_dim=head_dim, num_heads_q=num_heads_q, group_size=num_heads_q // num_heads_kv,
            is_causal=is_causal, arch=arch, block_m=config.block_m, block_n=config.block_n,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )
        logger.info("compiled %s for sm_%d in %.1f s", compiled.name, arch, time.perf_counter() - start)
        if first is None:
            first = compiled
            kernel.name = compiled.name
            kernel.numWarps = compiled.num_warps
            kernel.params = bind_params(compiled.params, args, scale)
            kernel.grid = launch_grid(args, config.block_m)
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


def build_attention_payload(*, dtype: torch.dtype, batch: int, num_heads_q: int, num_heads_kv: int,
                            head_dim: int, l_q: int, l_kv: int, is_causal: bool, scale: Optional[float] = None,
                            archs: Iterable[int] = (80, 90), ptx: bool = True,
                            args: AttentionArgs = AttentionArgs()) -> bytes:
    """The payload of one SDPA call with static shapes q [B, H_q, L_q, D], k/v [B, H_kv, L_kv, D]."""
    softmax_scale = float(scale) if scale is not None else head_dim**-0.5
    kernel = attention_kernel(dtype=dtype, num_heads_q=num_heads_q, num_heads_kv=num_heads_kv,
                              head_dim=head_dim, is_causal=is_causal, scale=softmax_scale,
                              archs=sorted(set(archs)), ptx=ptx, args=args)

    def spec(heads: int, length: int) -> fb.TensorSpecT:
        return fb.TensorSpecT(dtype=DTYPE_TO_PAYLOAD[dtype], sizes=[batch, heads, length, head_dim])

    inputs: list[Optional[fb.TensorSpecT]] = [None] * args.out
    inputs[args.query] = spec(num_heads_q, l_q)
    inputs[args.key] = spec(num_heads_kv, l_kv)
    inputs[args.value] = spec(num_heads_kv, l_kv)
    if any(s is None for s in inputs):
        raise ValueError(f"delegate arguments {args} leave an input unbound")
    return serialize_payload(fb.PayloadT(inputs=inputs, outputs=[spec(num_heads_q, l_q)], kernels=[kernel]))
