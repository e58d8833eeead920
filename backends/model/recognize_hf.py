"""What Hugging Face transformers' decoders add to an exported step (its ExecuTorch integration,
static cache), read into the same plan ops as recognize.py's patterns:

  cache_position[0] (select), copied into StaticCache's cumulative_length  -> the step's start
  start + arange(L), arange(S) + 0                                          -> positions, key indices
  cat(pos * inv_freq, pos * inv_freq).cos() * attention_scaling (and sin)  -> RoPE table rows, the
      tables made at export from inv_freq (`rope_table_name`, fuse.derive_constant rebuilds them)
  w * normalized (the weight first)                                         -> rmsnorm
  cache[:, :, None].expand(..).reshape(B, H, S, D) (repeat_kv)              -> the cache itself (GQA)
  full(True) & (k > p - window) & (k <= p)                                  -> a sliding-window mask
  slices / split_with_sizes of a fused projection's output (Phi-3's qkv_proj,
      gate_up_proj) along its features                                     -> column views of it
  cat([x]) (Phi-3's RoPE over all of the head dim, nothing passed through)   -> x
  up * act(gate) (the activation second)                                     -> gated_act

cumulative_length (a buffer written with start + L, never read) is not a state of the plan:
nothing outside the delegate sees it. Each handler here returns NO_MATCH for a node it does not
read, and recognize.py's handler of the same target reads it then.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Node

from .ops import CONSTANT, INPUT, INTERMEDIATE, STATE, Value

aten = torch.ops.aten
NO_MATCH = object()
ROPE_TABLE = "@rope_"


def rope_table_name(inv_freq: str, fn: str, rows: int, scale: float, dtype: torch.dtype) -> str:
    return f"{inv_freq}{ROPE_TABLE}{fn}({rows},{float(scale)!r},{str(dtype).removeprefix('torch.')})"


def rope_table(inv_freq: torch.Tensor, fn: str, rows: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """rows [rows, 2 * len(inv_freq)]: fn(p * inv_freq) repeated twice, times scale, as HF computes it in fp32."""
    freqs = torch.arange(rows, dtype=torch.float32)[:, None] * inv_freq.float()[None, :]
    angles = torch.cat([freqs, freqs], dim=-1)
    return (getattr(torch, fn)(angles) * scale).to(dtype)


def derive_rope_table(name: str, parameters):
    """The table `name` (rope_table_name) from the parameters/buffers, or None if it is not one."""
    if ROPE_TABLE not in name or not name.endswith(")"):
        return None
    inv_freq, rest = name.split(ROPE_TABLE, 1)
    fn, args = rest[:-1].split("(", 1)
    rows, scale, dtype = args.split(",")
    return rope_table(parameters[inv_freq], fn, int(rows), float(scale), getattr(torch, dtype))


def _partial(meaning, what: str) -> bool:
    from .recognize import Partial

    return isinstance(meaning, Partial) and meaning.what == what


def _p(what: str, *parts):
    from .recognize import Partial

    return Partial(what, parts)


def _meaning(r, arg):
    return r.meaning.get(arg) if isinstance(arg, Node) else _p("scalar", float(arg))


# --- positions -----------------------------------------------------------------------------------

def _select(r, node: Node):
    """cache_position[0]: the step's start (the graph reads no other element of cache_position)."""
    source = r.meaning.get(node.args[0])
    if isinstance(source, Value) and source.kind == INPUT and node.args[1] == 0 and node.args[2] == 0:
        return _p("start", source)
    return NO_MATCH


def _copy(r, node: Node):
    """cumulative_length.copy_(start): the start; the buffer is dropped when nothing else reads it."""
    target, source = node.args[0], r.meaning.get(node.args[1])
    state = r.meaning.get(target)
    if not (_partial(source, "start") and isinstance(state, Value) and state.kind == STATE):
        return NO_MATCH
    if any(_copy_target(user) is not target for user in target.users):
        return NO_MATCH  # its old value is read: a state the plan would have to keep
    r.plan.states.pop(state.name, None)
    r.write_only_states.add(state.name)
    return source


def _copy_target(node: Node):
    from ..sdpa import _aten_target

    return node.args[0] if _aten_target(node) == aten.copy.default else None


def _add(r, node: Node):
    ma, mb = _meaning(r, node.args[0]), _meaning(r, node.args[1])
    for a, b in ((ma, mb), (mb, ma)):
        if _partial(a, "arange") and _partial(b, "start") and a.parts[0] == 0:
            return _p("positions", b.parts[0], a.parts[1])  # start + arange(L)
        if _partial(a, "arange") and _partial(b, "scalar") and b.parts[0] == 0:
            return a  # key indices arange(S) + 0 (a static cache's offset)
        if _partial(a, "start") and _partial(b, "scalar"):
            return _p("start_plus", a.parts[0])  # cumulative_length's new value
    return NO_MATCH


# --- RoPE tables built in the graph ----------------------------------------------------------------

def _cat(r, node: Node):
    parts = node.args[0]
    if len(parts) == 1 and isinstance(r.meaning.get(parts[0]), Value):
        return r.meaning[parts[0]]
    if len(parts) == 2 and parts[0] is parts[1] and _partial(r.meaning.get(parts[0]), "half_angles"):
        return _p("angles", *r.meaning[parts[0]].parts)
    return NO_MATCH


def _trig(fn: str):
    def handler(r, node: Node):
        angles = r.meaning.get(node.args[0])
        if not _partial(angles, "angles"):
            return NO_MATCH
        inv_freq, positions = angles.parts
        return _p("trig", fn, inv_freq, positions, 1.0)
    return handler


def _table_rows(r, trig):
    """The RoPE table `trig` reads rows of, made at export for every row a cache holds."""
    fn, inv_freq, positions, scale = trig.parts
    rows = max(v.shape[-2] for v in r.plan.states.values() if len(v.shape) == 4)
    dtype = torch.float32
    name = rope_table_name(inv_freq.name, fn, rows, scale, dtype)
    if name not in r.plan.constants:
        r.plan.constants[name] = Value(name, CONSTANT, (rows, 2 * inv_freq.shape[-1]), dtype)
        r.plan.constant_data[name] = rope_table(r.plan.constant_data[inv_freq.name], fn, rows, scale, dtype)
    return _p("table_rows", r.plan.constants[name], positions)


def _mul(r, node: Node):
    ma, mb = _meaning(r, node.args[0]), _meaning(r, node.args[1])
    for (a, a_node), b in (((ma, node.args[0]), mb), ((mb, node.args[1]), ma)):
        if _partial(a, "positions") and isinstance(b, Value) and b.kind == CONSTANT and len(b.shape) == 1:
            return _p("half_angles", b, a)  # positions[:, None].float() * inv_freq
        if _partial(a, "trig") and _partial(b, "scalar"):
            fn, inv_freq, positions, scale = a.parts
            return _p("trig", fn, inv_freq, positions, scale * b.parts[0])  # * attention_scaling
        if _partial(a, "trig") and (isinstance(b, Value) or _partial(b, "rotated")):
            r.meaning[a_node] = _table_rows(r, a)  # x * cos: recognize.py reads table rows
            return NO_MATCH
        if (_partial(b, "silu") or _partial(b, "gelu_tanh")) and isinstance(a, Value):
            return r.emit(node, "gated_act", {"gate": b.parts[0], "up": a}, act=b.what)  # up * act(gate)
        if _partial(b, "normalized") and isinstance(a, Value) and a.kind == CONSTANT:
            x, eps = b.parts  # weight * normalized(x), as HF's Llama norm multiplies
            return r.emit(node, "rmsnorm", {"x": x, "weight": a}, eps=eps, weight_offset=0.0)
    return NO_MATCH


# --- columns of a fused projection ----------------------------------------------------------------

def _columns(r, source, dim, start: int, end: int):
    """Columns [start, end) along the last dim of a linear's output (no views of it yet); a slice of
    anything else (rotate_half's halves of a normed q) is recognize.py's."""
    if not (isinstance(source, Value) and source.kind == INTERMEDIATE and not source.views):
        return NO_MATCH
    if not any(op.kind == "linear" and op.output == source for op in reversed(r.ops)):
        return NO_MATCH
    width = source.shape[-1]
    if dim not in (-1, len(source.shape) - 1) or not 0 <= start < min(end, width):
        return NO_MATCH
    end = min(end, width)
    shape = source.shape[:-1] + (end - start,)
    return source.viewed(("narrow", (len(source.shape) - 1, start, end - start)), shape)


def _slice(r, node: Node):
    step = node.args[4] if len(node.args) > 4 else 1
    if step != 1 or len(node.args) < 4:
        return NO_MATCH
    return _columns(r, r.meaning.get(node.args[0]), node.args[1], node.args[2], node.args[3])


def _split(r, node: Node):
    source, sizes = r.meaning.get(node.args[0]), list(node.args[1])
    dim = node.args[2] if len(node.args) > 2 else 0
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    pieces = [_columns(r, source, dim, s, s + n) for s, n in zip(starts, sizes)]
    if any(p is NO_MATCH for p in pieces):
        return NO_MATCH
    return _p("pieces", *pieces)


def _getitem(r, node: Node):
    pieces = r.meaning.get(node.args[0])
    return pieces.parts[node.args[1]] if _partial(pieces, "pieces") else NO_MATCH


# --- masks and the caches attention reads ---------------------------------------------------------

def _full(r, node: Node):
    if node.args[0] == [] and node.args[1] is True:
        return _p("all_true")
    return NO_MATCH


def _and(r, node: Node):
    ma, mb = r.meaning.get(node.args[0]), r.meaning.get(node.args[1])
    for a, b in ((ma, mb), (mb, ma)):
        if _partial(a, "all_true"):
            return b
        if _partial(a, "window_floor") and _partial(b, "causal_mask") and a.parts[0] == b.parts[0]:
            return _p("causal_mask", b.parts[0], a.parts[1])
    return NO_MATCH


def _expand(r, node: Node):
    """A mask broadcast over heads keeps its meaning; a cache unsqueezed at dim 2 and expanded
    over its query groups (repeat_kv) is the cache: the attention kernels read GQA caches."""
    meaning = r.meaning.get(node.args[0])
    if _partial(meaning, "causal_mask"):
        return meaning
    if isinstance(meaning, Value) and meaning.kind == STATE and len(meaning.views) == 1:
        base = Value(meaning.name, STATE, r.plan.states[meaning.name].shape, meaning.dtype)
        b, h, s, d = base.shape
        size = tuple(node.args[1])
        if meaning.shape == (b, h, 1, s, d) and size[:2] == (b, h) and size[3:] == (s, d):
            return _p("repeated_kv", base)
    return NO_MATCH


def _repeated_kv_view(r, node: Node):
    meaning = r.meaning.get(node.args[0])
    if _partial(meaning, "repeated_kv"):
        return meaning  # the clone and the reshape to [B, H * groups, S, D]
    return NO_MATCH


def _attention(r, node: Node):
    """SDPA over repeat_kv'd caches: the same attention, its K/V the caches themselves."""
    repeated = [arg for arg in node.args[1:3] if _partial(r.meaning.get(arg), "repeated_kv")]
    if not repeated:
        return NO_MATCH
    for arg in repeated:
        r.meaning[arg] = r.meaning[arg].parts[0]
    from .recognize import _attention as attention

    return attention(r, node)


# --- what the plan cannot hold, said plainly ---------------------------------------------------------

SOFTMAX = (aten._softmax.default, aten.softmax.int)


def written_out_attention(graph) -> str | None:
    """Why a graph whose attention is written out (eager: bmm, softmax) rather than one SDPA call cannot
    be taken whole (Gemma 2 attends so, to soft-cap the scores with tanh), or None."""
    from ..sdpa import _aten_target

    for node in graph.nodes:
        if node.op == "call_function" and _aten_target(node) in SOFTMAX:
            capped = any(_aten_target(n) == aten.tanh.default for n in _producers(node, depth=4))
            scores = " over tanh soft-capped scores" if capped else ""
            return (f"{node.name}: attention written out as matmul and softmax{scores} (eager attention, "
                    f"not one SDPA call): the whole-step plan attends through SDPA only")
    return None


def _producers(node: Node, depth: int) -> list[Node]:
    found, frontier = [], [node]
    for _ in range(depth):
        frontier = [a for n in frontier for a in n.all_input_nodes if a.op == "call_function"]
        found += frontier
    return found


def _before(handler, base):
    def read(r, node):
        meaning = handler(r, node)
        return base(r, node) if meaning is NO_MATCH else meaning
    return read


def extend(handlers: dict, view_ops, view, sdpa_targets, attention) -> None:
    """Put this module's handlers before recognize.py's own for the same targets."""
    def refuse(r, node):
        from ..sdpa import _aten_target
        from .ops import NotRecognised

        raise NotRecognised(f"{node.name}: {_aten_target(node)} is not a pattern the plan holds: {node.format_node()}")

    ours = {aten.select_copy.int: _select, aten.copy.default: _copy, aten.add.Tensor: _add, aten.mul.Tensor: _mul,
            aten.cat.default: _cat, aten.cos.default: _trig("cos"), aten.sin.default: _trig("sin"),
            aten.full.default: _full, aten.bitwise_and.Tensor: _and, aten.logical_and.default: _and,
            aten.expand_copy.default: _expand, aten.expand.default: _expand, aten.slice_copy.Tensor: _slice,
            aten.slice.Tensor: _slice, aten.split_with_sizes_copy.default: _split,
            aten.split_with_sizes.default: _split, operator.getitem: _getitem}
    for target, handler in ours.items():
        handlers[target] = _before(handler, handlers.get(target, refuse))
    for target in view_ops:
        handlers[target] = _before(_repeated_kv_view, handlers.get(target, view))
    for target in sdpa_targets:
        handlers[target] = _before(_attention, handlers.get(target, attention))
