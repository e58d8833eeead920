"""A ModelPlan evaluated with PyTorch ops: what each op means, as a specification.

The kernels and the payload that emits them are tested against this; it
is never on an inference path. Norms, RoPE and linears compute in float32
and round once to their output's dtype, as the kernels do.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch.nn import functional as F

from .ops import CONSTANT, INPUT, STATE, ModelPlan, Op, Value

ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _positions(start: torch.Tensor, count: int) -> torch.Tensor:
    return start.reshape(-1)[:1].long() + torch.arange(count)


def _embedding(env, op: Op) -> torch.Tensor:
    table, tokens = env(op.inputs["table"]), env(op.inputs["tokens"])
    rows = F.embedding(tokens.long(), table)
    return rows * torch.tensor(op.attrs["scale"], dtype=rows.dtype) if op.attrs["scale"] != 1.0 else rows


def _rmsnorm(env, op: Op) -> torch.Tensor:
    x = env(op.inputs["x"]).float()
    weight = env(op.inputs["weight"]).float() + op.attrs["weight_offset"]
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + op.attrs["eps"]) * weight


def _linear(env, op: Op) -> torch.Tensor:
    x = env(op.inputs["x"]).float()
    if op.attrs.get("norm_eps") is not None:  # RMSNorm folded in: its weight is in `weight`'s columns
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + op.attrs["norm_eps"])
    bias = op.inputs.get("bias")
    out = F.linear(x, env(op.inputs["weight"]).float(), None if bias is None else env(bias).float())
    if op.attrs.get("gated"):
        gate, up = out.chunk(2, dim=-1)
        out = ACTIVATIONS[op.attrs["gated"]](gate) * up
    if op.attrs.get("softcap"):
        out = op.attrs["softcap"] * torch.tanh(out / op.attrs["softcap"])
    if "residual" in op.inputs:
        out = out + env(op.inputs["residual"]).float()
    return out


def _rope(env, op: Op) -> torch.Tensor:
    x = env(op.inputs["x"])
    pos = _positions(env(op.inputs["positions"]), x.shape[-2])
    cos, sin = env(op.inputs["cos"])[pos].float(), env(op.inputs["sin"])[pos].float()
    if op.attrs.get("interleaved"):
        return _rope_interleaved(x.float(), cos, sin)
    return x.float() * cos + _rotate_half(x.float()) * sin


def _rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Pairs (x[2j], x[2j+1]) turned by angle j (cos/sin [L, D/2]; ExecuTorch llama's apply_rotary_emb)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


def _cache_write(env, op: Op, states) -> torch.Tensor:
    cache = states[op.inputs["cache"].name]
    rows = env(op.inputs["rows"])
    pos = _positions(env(op.inputs["positions"]), rows.shape[-2])
    cache.index_copy_(2, pos, rows.to(cache.dtype))
    return cache


def _attention(env, op: Op) -> torch.Tensor:
    q = env(op.inputs["q"])
    k, v = env(op.inputs["k_cache"]), env(op.inputs["v_cache"])
    pos = _positions(env(op.inputs["positions"]), q.shape[-2])
    keys = torch.arange(k.shape[-2])[None, :]
    visible = keys <= pos[:, None]
    if op.attrs.get("window") is not None:
        visible &= keys > pos[:, None] - op.attrs["window"]
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=visible[None, None],
                                          scale=op.attrs["scale"], enable_gqa=True)


def _gated_act(env, op: Op) -> torch.Tensor:
    return ACTIVATIONS[op.attrs["act"]](env(op.inputs["gate"]).float()) * env(op.inputs["up"]).float()


def _add(env, op: Op) -> torch.Tensor:
    return env(op.inputs["a"]).float() + env(op.inputs["b"]).float()


def _argmax(env, op: Op) -> torch.Tensor:
    return torch.argmax(env(op.inputs["x"]), dim=-1, keepdim=op.attrs["keepdim"])


def _last_row(env, op: Op) -> torch.Tensor:
    return env(op.inputs["x"])[:, -1]


def evaluate(plan: ModelPlan, inputs: Mapping[str, torch.Tensor], states: dict[str, torch.Tensor],
             constants: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The plan's outputs for `inputs` (by input name); `states` (by name) are updated in place."""
    values: dict[str, torch.Tensor] = {}

    def env(value: Value) -> torch.Tensor:
        if value.kind == INPUT:
            tensor = inputs[value.name]
        elif value.kind == CONSTANT:
            tensor = constants[value.name]
        elif value.kind == STATE:
            tensor = states[value.name]
        else:
            tensor = values[value.name]
        return value.apply_views(tensor)

    run = {"embedding": _embedding, "rmsnorm": _rmsnorm, "linear": _linear, "rope": _rope,
           "attention": _attention, "gated_act": _gated_act, "add": _add,
           "argmax": _argmax, "last_row": _last_row}
    for op in plan.ops:
        if op.kind == "cache_write":
            _cache_write(env, op, states)
            continue
        out = run[op.kind](env, op)
        values[op.output.name] = out.to(op.output.dtype).reshape(op.output.shape)  # as written
    return [env(v) for v in plan.outputs]
