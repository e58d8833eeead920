"""Graph-level fusions on a ModelPlan, each one a rewrite that keeps what the plan computes.

  fold_norms:            an RMSNorm read only by linears goes into their prologue; its weight
                         (with Gemma's offset) is multiplied into their weight columns at export
  merge_gated_mlp:       gate and up linears of one input and their gated activation -> one
                         linear over [gate; up] with the activation in its epilogue
  gate_up_halves:        a gated activation of the two halves of one linear's output (Phi-3's
                         gate_up_proj) -> that linear with the activation in its epilogue
  merge_projections:     linears of one input (Q, K and V) -> one linear over their stacked
                         weights; each reader takes its columns as a view
  residual_epilogues:    a + linear(...) -> the linear adds `a` in its epilogue

`fuse` runs them in that order. New constants (folded or stacked weights)
are computed here, once, at export, and named by how they are made from the
model's parameters (`fold_name`, `stack_name`): `derive_constant` makes any
of them again from the parameters alone (a .ptd rebuilt where it cannot
travel, export/llm/ptd_manifest.py).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .ops import CONSTANT, ModelPlan, Op, Value


def _readers(plan: ModelPlan, value: Value) -> list[tuple[Op, str]]:
    return [(op, role) for op in plan.ops for role, v in op.inputs.items() if v.name == value.name]


STACK_SEPARATOR = "+"


def fold_name(weight: str, norm_weight: str, offset: float) -> str:
    return f"{weight}@rmsnorm({norm_weight},{float(offset)!r})"


def stack_name(names: list[str]) -> str:
    return STACK_SEPARATOR.join(names)


def folded(weight: torch.Tensor, norm_weight: torch.Tensor, offset: float) -> torch.Tensor:
    """A linear's weight with the RMSNorm before it folded in: its columns times (offset + norm weight)."""
    return (weight.float() * (norm_weight.float() + offset)).to(weight.dtype)


def derive_constant(name: str, parameters) -> torch.Tensor:
    """Constant `name` of a fused plan, made from `parameters` (name -> tensor) as fuse made it."""
    from .recognize_hf import derive_rope_table

    table = derive_rope_table(name, parameters)
    if table is not None:
        return table
    parts = name.split(STACK_SEPARATOR)
    if len(parts) > 1:
        return torch.cat([derive_constant(part, parameters) for part in parts], dim=0)
    if name.endswith(")") and "@rmsnorm(" in name:
        weight, rest = name.split("@rmsnorm(", 1)
        norm_weight, offset = rest[:-1].rsplit(",", 1)
        return folded(parameters[weight], parameters[norm_weight], float(offset))
    return parameters[name]


def _constant(plan: ModelPlan, name: str, data: torch.Tensor) -> Value:
    value = Value(name, CONSTANT, tuple(data.shape), data.dtype)
    plan.constants[name] = value
    plan.constant_data[name] = data
    return value


def _drop_unused_constants(plan: ModelPlan) -> None:
    used = {v.name for op in plan.ops for v in op.inputs.values() if v.kind == CONSTANT}
    for name in [n for n in plan.constants if n not in used]:
        del plan.constants[name]
        plan.constant_data.pop(name, None)


def _weight_readers(plan: ModelPlan, weight: Value) -> int:
    return len(_readers(plan, weight))


def fold_norms(plan: ModelPlan) -> None:
    for norm in [op for op in plan.ops if op.kind == "rmsnorm"]:
        readers = _readers(plan, norm.output)
        if not readers or any(op.kind != "linear" or role != "x" or op.attrs.get("norm_eps") is not None
                              or op.inputs["x"].views for op, role in readers):
            continue
        if any(_weight_readers(plan, op.inputs["weight"]) != 1 for op, _ in readers):
            continue  # a weight read elsewhere too (tied embeddings) keeps its values
        norm_weight, offset = norm.inputs["weight"].name, norm.attrs["weight_offset"]
        for op, _ in readers:
            weight = op.inputs["weight"]
            data = folded(plan.constant_data[weight.name], plan.constant_data[norm_weight], offset)
            new_weight = _constant(plan, fold_name(weight.name, norm_weight, offset), data)
            index = plan.ops.index(op)
            plan.ops[index] = replace(op, inputs={**op.inputs, "x": norm.inputs["x"], "weight": new_weight},
                                      attrs={**op.attrs, "norm_eps": norm.attrs["eps"]})
        plan.ops.remove(norm)


def _stack(plan: ModelPlan, linears: list[Op]) -> Value:
    """One constant holding the linears' weights stacked along the output features."""
    names = [op.inputs["weight"].name for op in linears]
    data = torch.cat([plan.constant_data[n] for n in names], dim=0)
    return _constant(plan, stack_name(names), data)


def _stack_bias(plan: ModelPlan, linears: list[Op]):
    biases = [op.inputs.get("bias") for op in linears]
    if all(b is None for b in biases):
        return {}
    if any(b is None for b in biases):
        return None
    data = torch.cat([plan.constant_data[b.name] for b in biases])
    return {"bias": _constant(plan, stack_name([b.name for b in biases]), data)}


def _mergeable(a: Op, b: Op) -> bool:
    return (a.kind == b.kind == "linear" and a.inputs["x"] == b.inputs["x"] and "residual" not in a.inputs
            and "residual" not in b.inputs and a.attrs == b.attrs and a.output.dtype == b.output.dtype
            and not a.attrs.get("gated"))


def merge_gated_mlp(plan: ModelPlan) -> None:
    by_name = {op.output.name: op for op in plan.ops}
    for act in [op for op in plan.ops if op.kind == "gated_act"]:
        gate, up = by_name.get(act.inputs["gate"].name), by_name.get(act.inputs["up"].name)
        if gate is None or up is None or not _mergeable(gate, up) or act.inputs["gate"].views or act.inputs["up"].views:
            continue
        if len(_readers(plan, gate.output)) != 1 or len(_readers(plan, up.output)) != 1:
            continue
        bias = _stack_bias(plan, [gate, up])
        if bias is None:
            continue
        inputs = {"x": gate.inputs["x"], "weight": _stack(plan, [gate, up]), **bias}
        merged = Op("linear", inputs, act.output, {**gate.attrs, "gated": act.attrs["act"]})
        plan.ops[plan.ops.index(act)] = merged
        plan.ops.remove(gate)
        plan.ops.remove(up)


def _halves_of(act: Op):
    """(source name, width) when the act's gate and up are the first and second halves of one value."""
    gate, up = act.inputs["gate"], act.inputs["up"]
    if gate.name != up.name or len(gate.views) != 1 or len(up.views) != 1:
        return None
    (g_how, (g_dim, g_start, g_len)), (u_how, (u_dim, u_start, u_len)) = gate.views[0], up.views[0]
    if g_how != "narrow" or u_how != "narrow" or g_dim != u_dim or (g_start, u_start) != (0, g_len) or g_len != u_len:
        return None
    return gate.name, g_len


def gate_up_halves(plan: ModelPlan) -> None:
    by_name = {op.output.name: op for op in plan.ops}
    for act in [op for op in plan.ops if op.kind == "gated_act"]:
        halves = _halves_of(act)
        linear = by_name.get(halves[0]) if halves else None
        if (linear is None or linear.kind != "linear" or linear.attrs.get("gated") or "residual" in linear.inputs
                or linear.output.shape[-1] != 2 * halves[1] or len(_readers(plan, linear.output)) != 2):
            continue
        plan.ops[plan.ops.index(act)] = Op("linear", linear.inputs, act.output,
                                           {**linear.attrs, "gated": act.attrs["act"]})
        plan.ops.remove(linear)


def merge_projections(plan: ModelPlan) -> None:
    index = 0
    while index < len(plan.ops):
        first = plan.ops[index]
        group = [op for op in plan.ops[index:] if _mergeable(first, op)] if first.kind == "linear" else []
        if len(group) < 2:
            index += 1
            continue
        bias = _stack_bias(plan, group)
        if bias is None:
            index += 1
            continue
        widths = [op.output.shape[-1] for op in group]
        shape = first.output.shape[:-1] + (sum(widths),)
        stacked = Value(first.output.name, first.output.kind, shape, first.output.dtype)
        merged = Op("linear", {"x": first.inputs["x"], "weight": _stack(plan, group), **bias}, stacked, first.attrs)
        start = 0
        for op, width in zip(group, widths):
            columns = stacked.viewed(("narrow", (len(shape) - 1, start, width)), op.output.shape)
            _redirect(plan, op.output, columns)
            start += width
        plan.ops[index] = merged
        for op in group[1:]:
            plan.ops.remove(op)
        index += 1


def _redirect(plan: ModelPlan, old: Value, new: Value) -> None:
    """Every reader of `old` (through any views) reads `new` instead, with its views after new's."""
    for i, op in enumerate(plan.ops):
        inputs = {role: (Value(new.name, new.kind, v.shape, new.dtype, new.views + v.views)
                         if v.name == old.name and v.kind == old.kind else v)
                  for role, v in op.inputs.items()}
        plan.ops[i] = replace(op, inputs=inputs)
    plan.outputs = [Value(new.name, new.kind, v.shape, new.dtype, new.views + v.views) if v.name == old.name else v
                    for v in plan.outputs]


def residual_epilogues(plan: ModelPlan) -> None:
    by_name = {op.output.name: op for op in plan.ops}
    for add in [op for op in plan.ops if op.kind == "add"]:
        for role, other in (("b", "a"), ("a", "b")):
            linear = by_name.get(add.inputs[role].name)
            if (linear is None or linear.kind != "linear" or "residual" in linear.inputs or add.inputs[role].views
                    or len(_readers(plan, linear.output)) != 1 or linear.output.shape != add.output.shape
                    or linear.attrs.get("softcap")):
                continue
            fused = replace(linear, inputs={**linear.inputs, "residual": add.inputs[other]}, output=add.output)
            plan.ops[plan.ops.index(add)] = fused
            plan.ops.remove(linear)
            by_name = {op.output.name: op for op in plan.ops}
            break


def fuse(plan: ModelPlan) -> ModelPlan:
    for rewrite in (fold_norms, merge_gated_mlp, gate_up_halves, merge_projections, residual_epilogues):
        rewrite(plan)
    _drop_unused_constants(plan)
    return plan
