"""The op plan of a whole decoder step: values and the ops between them.

A ModelPlan is what the AOT stage decides before any kernel is chosen: the
step's inputs (token ids, the start position), its constants (weights, RoPE
tables: exported parameters and buffers, by their names in the program),
its states (KV caches) and the ops in order, each reading and writing
values. Views (reshape, transpose) never appear as ops: a value carries the
shape the next op reads it as, and each op says which layout it expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

INPUT, CONSTANT, STATE, INTERMEDIATE = "input", "constant", "state", "intermediate"


@dataclass(frozen=True)
class Value:
    """A tensor of the plan. name: the graph node's (or the program's constant/buffer FQN)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    # How the op reading this value sees the stored tensor: ("narrow", (dim, start, length)),
    # ("permute", dims), ("reshape", shape) or ("unsqueeze", dim) applied in order (strides
    # and offsets for the kernels, never copies).
    views: tuple = ()

    def viewed(self, how: tuple, shape: tuple[int, ...]) -> "Value":
        return Value(self.name, self.kind, tuple(shape), self.dtype, self.views + (how,))

    def apply_views(self, tensor: torch.Tensor) -> torch.Tensor:
        for what, arg in self.views:
            if what == "narrow":
                tensor = tensor.narrow(*arg)
            else:
                tensor = {"permute": torch.permute, "reshape": torch.reshape, "unsqueeze": torch.unsqueeze}[what](tensor, arg)
        return tensor

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Op:
    """One step of the plan: `kind` reads `inputs` (by role) and writes `output`.

    kinds and their roles / attributes:
      embedding  table, tokens                          scale
      rmsnorm    x, weight                              eps, weight_offset
      linear     x, weight, [bias], [residual]          norm_eps (RMSNorm folded in), gated, out_dtype
      rope       x, cos, sin, positions                 interleaved (x [B, H, L, D]; rotate-half, or (2j, 2j+1) pairs)
      cache_write cache, positions, rows                cache_layout (rows at positions along the caches'
                                                        sequence dim: [B, H_kv, S, D] caches, or with
                                                        cache_layout "BSHD" [B, S, H_kv, D] ones)
      attention  q, k_cache, v_cache, positions         scale, window (None: causal over the cache),
                                                        cache_layout (q [B, H, L, D] whichever)
      last_row   x                                      (the last of the step's rows: [B, L, N] -> [B, N])
      gated_act  gate, up                               act ("silu" | "gelu_tanh")
      add        a, b
      argmax     x                                      keepdim (int64 index of each row's largest value
                                                        along x's last dim: greedy token ids)
      cast       x                                      dtype
    """

    kind: str
    inputs: dict[str, Value]
    output: Value
    attrs: dict = field(default_factory=dict)

    def describe(self) -> str:
        args = ", ".join(f"{role}={v.name}" for role, v in self.inputs.items())
        extra = "".join(f", {k}={v}" for k, v in self.attrs.items() if v not in (None, False, ""))
        return f"{self.output.name} = {self.kind}({args}{extra}) {tuple(self.output.shape)}"


@dataclass
class ModelPlan:
    inputs: list[Value]
    outputs: list[Value]
    constants: dict[str, Value]
    states: dict[str, Value]
    ops: list[Op]
    # Lifted constant tensors by name (weights, tables), for folding at export.
    constant_data: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    # state name -> the value holding it after the step (what the program writes back)
    state_updates: dict[str, Value] = field(default_factory=dict)
    # A dynamic token count (torch.export.Dim): the input and dim holding it, and its range.
    # Every shape of the plan then has the range's top in that dim (buffers are sized for it).
    rows: Optional["DynamicRows"] = None
    # Per output, the dim holding the dynamic token count (None: static).
    output_row_dims: list[Optional[int]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [op.kind for op in self.ops]

    def describe(self) -> str:
        return "\n".join(op.describe() for op in self.ops)


@dataclass(frozen=True)
class DynamicRows:
    """The step's token count when it is symbolic: input `name`'s dim `dim`, in [lo, hi]."""

    name: str
    dim: int
    lo: int
    hi: int


def cache_layout(op: Op):
    """The layout (backends/layout.py) of the KV caches a cache_write or attention op reads."""
    from ..layout import BHSD, BSHD

    return BSHD if op.attrs.get("cache_layout") == "BSHD" else BHSD


def cache_heads_and_length(op: Op, cache: Value) -> tuple[int, int]:
    layout = cache_layout(op)
    return cache.shape[layout.heads], cache.shape[layout.seq]


class NotRecognised(Exception):
    """The graph holds a node the plan cannot express; the message names it and why."""


def optional(value: Optional[Value]) -> dict:
    return {} if value is None else {"v": value}
