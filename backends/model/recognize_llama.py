"""ExecuTorch's llama export (executorch.examples.models.llama) read as plan ops.

After the partitioner's llama rewrite (backends/partition/llama_attention.py)
its graph holds, besides what recognize.py reads:

  input_pos[0] / input_pos[-1] (select), .item()            -> the start position
  start + L, its range checks (operator.ge/le/lt, _assert_scalar) -> nothing to compute
  freqs.slice(0, start, start + L)                          -> RoPE table rows at the positions
  x * x (RMSNorm's square)                                   -> as pow(x, 2)
  interleaved RoPE: x viewed [.., D/2, 2], pairs sliced, then
    stack(x0*cos - x1*sin, x0*sin + x1*cos) (a cat of unsqueezed halves)  -> rope (interleaved)
  cuda_gqa.llama_update_cache(cache, rows, start)            -> cache_write ([B, S, H, D] caches)
  cuda_gqa.llama_sdpa(q, k_cache, v_cache, start)            -> attention (causal from start)
  h.select(1, -1) (the last token's row)                     -> last_row

Each handler returns None where the node is not its pattern, and the
handler recognize.py has for the target (if any) reads it then; so these
extend `_HANDLERS` without replacing what it holds.
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
from torch.fx import Node

from ..sdpa import TAKEN_LLAMA_SDPA_OP, TAKEN_LLAMA_UPDATE_OP
from .ops import CONSTANT, INPUT, INTERMEDIATE, STATE, NotRecognised, Op, Value
from .recognize import Partial, _describe, _shape, _val

aten = torch.ops.aten
BSHD = "BSHD"


def _meaning(r, arg):
    return r.meaning.get(arg) if isinstance(arg, Node) else None


def _is(meaning, what: str) -> bool:
    return isinstance(meaning, Partial) and meaning.what == what


def _select(r, node: Node):
    x, dim, index = node.args[0], node.args[1], node.args[2]
    m = _meaning(r, x)
    if isinstance(m, Value) and m.kind == INPUT and m.shape == (1,) and dim == 0 and index in (0, -1):
        return Partial("start", (m,))  # input_pos[0]: the step's start position
    rows = r.plan.rows
    if (isinstance(m, Value) and len(m.shape) == 3 and dim == 1 and index == -1
            and m.shape[1] == (rows.hi if rows else m.shape[1])):
        out = Value(node.name, INTERMEDIATE, _shape(node), _val(node).dtype)
        r.ops.append(Op("last_row", {"x": m}, out))
        return out
    return None  # not this pattern: the handlers after it (Hugging Face's cache_position[0]) read it


def _item(r, node: Node):
    start = _meaning(r, node.args[0])
    if _is(start, "start"):
        return Partial("start_scalar", start.parts)
    raise NotRecognised(f"{node.name}: .item() of {_describe(start)}, not of input_pos[0]")


def _scalar_add(r, node: Node):
    a, b = (_meaning(r, x) for x in node.args)
    if _is(a, "start_scalar") and (_is(b, "rows") or isinstance(node.args[1], int)):
        return Partial("start_end", a.parts)  # start + L: the end of the step's rows
    raise NotRecognised(f"{node.name}: a scalar add of {_describe(a)} and {_describe(b)}")


def _scalar_check(r, node: Node):
    return None  # the export's range checks of the start position (the runtime bounds it itself)


def _slice(r, node: Node) -> Optional[object]:
    """RoPE table rows freqs[start:start + L], or one of the interleaved pairs' halves."""
    args = list(node.args) + [None] * (5 - len(node.args))
    source, dim, start, end, step = _meaning(r, args[0]), args[1], args[2], args[3], args[4] or 1
    first, last = _meaning(r, start), _meaning(r, end)
    if isinstance(source, Value) and source.kind == CONSTANT and dim == 0 and _is(first, "start_scalar"):
        if _is(last, "start_end") and last.parts == first.parts and step == 1:
            length = r.plan.rows.hi if r.plan.rows else _shape(node)[0]
            return Partial("table_rows", (source, Partial("positions", (first.parts[0], length))))
    if isinstance(source, Value) and source.shape and source.shape[-1] == 2 and dim in (-1, len(source.shape) - 1):
        if start in (0, 1) and end == start + 1 and step == 1 and source.views and source.views[-1][0] == "reshape":
            return Partial("pair", (_unpaired(source), start))
    return None


def _unpaired(pairs: Value) -> Value:
    """x for its view x.reshape(..., D/2, 2)."""
    shape = pairs.shape[:-2] + (pairs.shape[-2] * 2,)
    return Value(pairs.name, pairs.kind, shape, pairs.dtype, pairs.views[:-1])


def _mul(r, node: Node):
    a, b = (_meaning(r, x) for x in node.args[:2])
    if isinstance(a, Value) and node.args[0] is node.args[1]:
        return Partial("square", (a,))  # x * x: RMSNorm's square
    if _is(a, "pair") and _is(b, "table_rows"):
        return Partial("pair_times", a.parts + b.parts)  # (x, half, table, positions)
    return None


def _sub(r, node: Node):
    """x0 * cos - x1 * sin: the even half of interleaved RoPE."""
    a, b = (_meaning(r, x) for x in node.args[:2])
    if _is(a, "pair_times") and _is(b, "pair_times"):
        (x, half_a, cos, pos), (x2, half_b, sin, pos2) = a.parts, b.parts
        if x == x2 and pos == pos2 and (half_a, half_b) == (0, 1):
            return Partial("rotated_half", (x, 0, cos, sin, pos))
        raise NotRecognised(f"{node.name}: a difference of pair products that is not interleaved RoPE")
    return None


def _add(r, node: Node):
    """x0 * sin + x1 * cos: the odd half of interleaved RoPE."""
    a, b = (_meaning(r, x) for x in node.args[:2])
    if _is(a, "pair_times") and _is(b, "pair_times"):
        (x, half_a, sin, pos), (x2, half_b, cos, pos2) = a.parts, b.parts
        if x == x2 and pos == pos2 and (half_a, half_b) == (0, 1):
            return Partial("rotated_half", (x, 1, cos, sin, pos))
        raise NotRecognised(f"{node.name}: a sum of pair products that is not interleaved RoPE")
    return None


def _cat(r, node: Node):
    """cat([even.unsqueeze(-1), odd.unsqueeze(-1)], -1): the two halves back into pairs -> rope."""
    parts = node.args[0]
    if len(parts) != 2:
        return None
    even, odd = (_meaning(r, p) for p in parts)
    if not (_is(even, "rotated_half") and _is(odd, "rotated_half")):
        return None
    (x, h0, cos, sin, pos), (x2, h1, cos2, sin2, pos2) = even.parts, odd.parts
    if (h0, h1) != (0, 1) or x != x2 or cos != cos2 or sin != sin2 or pos != pos2 or cos == sin:
        raise NotRecognised(f"{node.name}: interleaved RoPE halves of different tensors or tables")
    out = Value(node.name, INTERMEDIATE, x.shape, _val(node).dtype)
    r.ops.append(Op("rope", {"x": x, "cos": cos, "sin": sin, "positions": pos.parts[0]}, out,
                    {"interleaved": True}))
    return out.viewed(("reshape", _shape(node)), _shape(node))


def _start_input(r, node: Node, arg) -> Value:
    start = _meaning(r, arg)
    if not _is(start, "start"):
        raise NotRecognised(f"{node.name}: a start position that is {_describe(start)}, not input_pos[0]")
    return start.parts[0]


def _update_cache(r, node: Node):
    cache, rows = r.value(node.args[0], "cache", node), r.value(node.args[1], "values", node)
    if cache.kind != STATE or len(cache.shape) != 4:
        raise NotRecognised(f"{node.name}: llama update_cache of {cache.name}, not a [B, S, H, D] cache buffer")
    start = _start_input(r, node, node.args[2])
    r.ops.append(Op("cache_write", {"cache": cache, "rows": rows, "positions": start}, cache,
                    {"name": cache.name, "cache_layout": BSHD}))
    return cache


def _llama_sdpa(r, node: Node):
    q = r.value(node.args[0], "query", node)
    k, v = r.value(node.args[1], "key", node), r.value(node.args[2], "value", node)
    if k.kind != STATE or v.kind != STATE:
        raise NotRecognised(f"{node.name}: llama attention over K/V that are not the delegate's caches")
    if not node.kwargs.get("is_causal", True):
        raise NotRecognised(f"{node.name}: llama attention that is not causal")
    start = _start_input(r, node, node.args[3])
    b, length, heads, dim = q.shape
    bhsd = (b, heads, length, dim)
    out = Value(node.name, INTERMEDIATE, bhsd, _val(node).dtype)
    scale = node.kwargs.get("scale") or dim ** -0.5
    query = q.viewed(("permute", (0, 2, 1, 3)), bhsd)
    r.ops.append(Op("attention", {"q": query, "k_cache": k, "v_cache": v, "positions": start}, out,
                    {"scale": float(scale), "window": None, "cache_layout": BSHD}))
    return out.viewed(("permute", (0, 2, 1, 3)), (b, length, heads, dim))


def _first(first, then):
    """A handler reading its own pattern first, then (None from it) `then`'s."""
    def handler(r, node):
        meaning = first(r, node)
        if meaning is not None:
            return meaning
        if then is None:
            raise NotRecognised(f"{node.name}: {node.target} is not a pattern the whole-model plan reads")
        return then(r, node)
    return handler


def extend(handlers: dict) -> None:
    """Add the llama export's handlers to recognize.py's table (in place)."""
    own = {aten._local_scalar_dense.default: _item,
           operator.add: _scalar_add, operator.ge: _scalar_check, operator.le: _scalar_check,
           operator.lt: _scalar_check, aten._assert_scalar.default: _scalar_check,
           TAKEN_LLAMA_UPDATE_OP: _update_cache, TAKEN_LLAMA_SDPA_OP: _llama_sdpa}
    for target, handler in own.items():
        handlers.setdefault(target, handler)
    for target, handler in ((aten.select_copy.int, _select), (aten.select.int, _select),
                            (aten.slice_copy.Tensor, _slice), (aten.slice.Tensor, _slice),
                            (aten.mul.Tensor, _mul), (aten.sub.Tensor, _sub), (aten.add.Tensor, _add),
                            (aten.cat.default, _cat)):
        handlers[target] = _first(handler, handlers.get(target))
