"""Where the plan's tensors live in a delegate and how a kernel addresses them.

Inputs, outputs and states are delegate arguments; constants are payload
constants; intermediates are slices of the workspace, planned here ahead of
time by liveness (a value's bytes are free again after its last reader).
A value read through views (ops.Value.views) is its stored tensor with
other sizes, strides and an element offset: `strided` works them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ops import INTERMEDIATE, ModelPlan, Value

# Workspace slices start at multiples of this (the kernels' 16-byte vector loads, and more).
SLICE_ALIGN = 256


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class Strided:
    """A value as a kernel reads it: sizes, strides (elements) and offset (elements) into its storage."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int

    def rows(self) -> tuple[int, int]:
        """(rows, row stride) of a value read as a matrix [rows, shape[-1]] with unit column stride."""
        if self.strides[-1] != 1 and self.shape[-1] != 1:
            raise ValueError(f"a value of strides {self.strides} has no unit-stride last dim")
        leading = [(s, st) for s, st in zip(self.shape[:-1], self.strides[:-1]) if s != 1]
        if not leading:
            return 1, self.shape[-1]
        count, stride = leading[-1]
        for size, outer in reversed(leading[:-1]):
            if outer != count * stride:
                raise ValueError(f"sizes {self.shape} with strides {self.strides} are not rows of one stride")
            count *= size
        return count, stride


def strided(value: Value, stored_shape: tuple[int, ...], stored_strides: tuple[int, ...] = None) -> Strided:
    """How `value` (its views applied) reads a tensor stored as stored_shape/stored_strides."""
    if stored_strides is None:
        stored_strides = torch.empty(stored_shape, device="meta").stride()
    t = torch.empty_strided(stored_shape, stored_strides, device="meta")
    for what, arg in value.views:
        if what == "narrow":
            t = t.narrow(*arg)
        elif what == "permute":
            t = t.permute(arg)
        elif what == "unsqueeze":
            t = t.unsqueeze(arg)
        else:
            t = t.view(arg)  # raises where the reshape would need a copy
    return Strided(tuple(t.shape), tuple(t.stride()), t.storage_offset())


@dataclass
class Arena:
    """Intermediates' workspace slices: name -> (byte offset, bytes); `bytes` is the arena's size."""

    slices: dict[str, tuple[int, int]]
    bytes: int


def plan_arena(plan: ModelPlan, stored_bytes: dict[str, int], start: int = 0) -> Arena:
    """First-fit slices for every intermediate, reused once its last reader has run.

    An op's output never shares bytes with its inputs (kernels read inputs
    while other programs write the output). stored_bytes: each intermediate's size."""
    last_read: dict[str, int] = {}
    for index, op in enumerate(plan.ops):
        for v in op.inputs.values():
            if v.kind == INTERMEDIATE:
                last_read[v.name] = index
    outputs = {v.name for v in plan.outputs}
    free: list[tuple[int, int]] = []  # (offset, bytes), sorted
    slices, top = {}, start
    for index, op in enumerate(plan.ops):
        out = op.output
        if out.kind == INTERMEDIATE and out.name not in outputs and out.name not in slices:
            size = _round_up(stored_bytes[out.name], SLICE_ALIGN)
            for i, (offset, room) in enumerate(free):
                if room >= size:
                    slices[out.name] = (offset, size)
                    free[i:i + 1] = [(offset + size, room - size)] if room > size else []
                    break
            else:
                slices[out.name] = (top, size)
                top += size
        for v in op.inputs.values():
            if v.kind == INTERMEDIATE and last_read.get(v.name) == index and v.name in slices:
                free.append(slices[v.name])
                free.sort()
    return Arena(slices, top)
