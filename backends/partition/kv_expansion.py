"""Recognise K/V expanded by hand in front of SDPA, so the kernel reads the unexpanded K/V.

Models written before `enable_gqa` existed repeat each KV head G times and
call SDPA as if it were multi-head attention. Three spellings are common:

  repeat_interleave:  k.repeat_interleave(G, dim=1)
  repeat_kv:          k[:, :, None].expand(B, H_kv, G, L, D).reshape(B, H_kv * G, L, D)
                      (Hugging Face's repeat_kv)
  expand_flatten:     k.unsqueeze(2).expand(B, H_kv, G, L, D).flatten(1, 2)

All three give expanded head j = KV head j // G, which is exactly how SDPA
with enable_gqa=True maps query head j to a KV head; so the SDPA node can
take the unexpanded tensors instead, and the expansion is never computed.
Matching is on torch.export's ATen graph, checked against the shapes of the
nodes' fake tensors, never on names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.fx import Node

aten = torch.ops.aten
_RESHAPES = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)


@dataclass(frozen=True)
class KvExpansion:
    source: Node  # the unexpanded [B, H_kv, L, D] tensor
    group: int  # G: each KV head repeated G times
    style: str  # "repeat_interleave" | "repeat_kv" | "expand_flatten"
    nodes: tuple[Node, ...]  # the expansion's own nodes, last first


def _shape(node) -> Optional[tuple]:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _is_call(node, target) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target == target


def _skip_noop_slices(node: Node, chain: list[Node]) -> Node:
    """Full slices (`x[:, :]`) some exports leave in front of the unsqueeze."""
    while _is_call(node, aten.slice.Tensor) and _shape(node) == _shape(node.args[0]):
        chain.append(node)
        node = node.args[0]
    return node


def find_kv_expansion(node: Node) -> Optional[KvExpansion]:
    """The expansion `node` computes, or None when it is not one of the spellings above."""
    out = _shape(node)
    if out is None or len(out) != 4:
        return None
    if _is_call(node, aten.repeat_interleave.self_int):
        source, repeats = node.args[0], node.args[1]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
        src = _shape(source)
        if (src is None or len(src) != 4 or dim not in (1, -3) or not isinstance(repeats, int)
                or out != (src[0], src[1] * repeats, src[2], src[3])):
            return None
        return KvExpansion(source, repeats, "repeat_interleave", (node,))

    if _is_call(node, aten.flatten.using_ints):
        style, dims = "expand_flatten", tuple(node.args[1:3])
        if dims not in ((1, 2), (1, -3)):
            return None
    elif any(_is_call(node, t) for t in _RESHAPES):
        style = "repeat_kv"
    else:
        return None
    expand = node.args[0]
    if not _is_call(expand, aten.expand.default):
        return None
    unsqueezed = expand.args[0]
    if not _is_call(unsqueezed, aten.unsqueeze.default) or unsqueezed.args[1] not in (2, -3):
        return None
    chain = [node, expand, unsqueezed]
    source = _skip_noop_slices(unsqueezed.args[0], chain)
    src, expanded = _shape(source), _shape(expand)
    if src is None or len(src) != 4 or expanded is None or len(expanded) != 5:
        return None
    b, h, l, d = src
    group = expanded[2]
    if expanded != (b, h, group, l, d) or out != (b, h * group, l, d):
        return None
    return KvExpansion(source, group, style, tuple(chain))


def fold_kv_expansion(sdpa: Node, accept: Callable[[Node], bool], key_index: int = 1,
                      value_index: int = 2) -> Optional[str]:
    """Make `sdpa` read the unexpanded K and V when both are expanded alike and
    accept(rewritten node) agrees (the partitioner accepts what it delegates,
    so a call left on the CPU keeps the form its CPU kernels expect).

    Rewrites the node in place (its K/V arguments, enable_gqa=True) and
    erases expansion nodes nothing else uses. Returns the style folded, or
    None when the node was left alone.
    """
    if sdpa.kwargs.get("enable_gqa"):
        return None
    key, value = sdpa.args[key_index], sdpa.args[value_index]
    k_exp, v_exp = find_kv_expansion(key), find_kv_expansion(value)
    if k_exp is None or v_exp is None or k_exp.group != v_exp.group or k_exp.group < 2:
        return None
    if _shape(k_exp.source) != _shape(v_exp.source):
        return None
    original_args, original_kwargs = sdpa.args, sdpa.kwargs
    args = list(sdpa.args)
    args[key_index], args[value_index] = k_exp.source, v_exp.source
    sdpa.args = tuple(args)
    sdpa.kwargs = {**sdpa.kwargs, "enable_gqa": True}
    if not accept(sdpa):
        sdpa.args, sdpa.kwargs = original_args, original_kwargs
        return None
    erased = set()
    for node in k_exp.nodes + v_exp.nodes:  # last first: each is free once its user is gone
        if node not in erased and not node.users:
            sdpa.graph.erase_node(node)
            erased.add(node)
    return k_exp.style if k_exp.style == v_exp.style else f"{k_exp.style} / {v_exp.style}"
