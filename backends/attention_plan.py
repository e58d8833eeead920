"""How one delegated SDPA node is launched: kernel config, argument binding, grid.

Everything here is decided ahead of time and written into the payload; the
runtime shims only evaluate it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .serialization import payload_generated as fb

# One conservative config until the tuning table lands (kernel issue):
# fits the shared memory of every target arch for D <= 128 with 2 stages.
BLOCK_M = 64
BLOCK_N = 64
NUM_WARPS = 4
NUM_STAGES = 2


@dataclass(frozen=True)
class AttentionArgs:
    """Delegate argument indices (inputs first, then outputs) of one SDPA."""

    query: int
    key: int
    value: int
    out: int


def bind_params(entry_params, args: AttentionArgs, softmax_scale: float) -> list[fb.KernelParamT]:
    """Bind gqa_attention_fwd's entry parameters to delegate tensors and constants."""
    tensor_of = {"Q": args.query, "K": args.key, "V": args.value, "Out": args.out}
    stride_of = {"q": args.query, "k": args.key, "v": args.value, "o": args.out}
    stride_dim = {"b": 0, "h": 1, "m": 2, "n": 2}
    param_type = {"ptr": fb.ParamType.Pointer, "i32": fb.ParamType.Int32,
                  "i64": fb.ParamType.Int64, "fp32": fb.ParamType.Float32}
    bound = []
    for p in entry_params:
        param = fb.KernelParamT()
        param.type = param_type[p.type]
        param.divisibility = p.divisibility
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

    def factor(arg: int, dim: int, divisor: int = 1) -> fb.GridFactorT:
        f = fb.GridFactorT()
        f.arg, f.dim, f.divisor = arg, dim, divisor
        return f

    def dim(*factors: fb.GridFactorT) -> fb.GridDimT:
        d = fb.GridDimT()
        d.factors = list(factors)
        return d

    q = args.query
    return [dim(factor(q, 2, block_m)), dim(factor(q, 0), factor(q, 1)), dim()]
