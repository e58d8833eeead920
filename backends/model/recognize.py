"""An exported decoder step (edge dialect) -> ModelPlan.

The graph is read node by node in order. Nodes that only describe a value
(the token positions, rows of a RoPE table, the causal mask built from the
positions, the pieces of an RMSNorm or of rotate_half) become *partial
meanings*; a node that completes a pattern turns them into one plan op:

  embedding(table, tokens) [* scale]                         -> embedding
  x * rsqrt(mean(x^2, -1) + eps) * (offset + w) [casts]      -> rmsnorm
  linear(x, W, b)                                            -> linear
  x*cos[pos] + cat(-x[.., D/2:], x[.., :D/2])*sin[pos]       -> rope
  index_put(cache, [None, None, pos], rows)                  -> cache_write
  sdpa(q, cache_k, cache_v, mask(pos) [, scale])             -> attention
  silu(a) * b, gelu_tanh(a) * b (silu as a * sigmoid(a))     -> gated_act
  a + b                                                      -> add
  argmax(x, -1 [, keepdim]) of float values                  -> argmax (int64 token ids)
  views (view, permute, unsqueeze) of a value                -> the same value, reshaped

Anything else raises NotRecognised naming the node: the plan is all of the
step or nothing (the partitioner then keeps the attention-only lowering and
reports why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.export import ExportedProgram
from torch.fx import Node

from ..sdpa import _aten_target
from .ops import (CONSTANT, INPUT, INTERMEDIATE, STATE, DynamicRows, ModelPlan, NotRecognised, Op, Value,
                  cache_heads_and_length)

aten = torch.ops.aten
VIEW_OPS = {aten.view_copy.default, aten.view.default, aten.reshape.default, aten.permute_copy.default,
            aten.permute.default, aten.unsqueeze_copy.default, aten.unsqueeze.default, aten.transpose.int,
            aten.squeeze_copy.dims, aten.alias_copy.default, aten.clone.default,
            torch.ops.dim_order_ops._clone_dim_order.default}
SDPA_TARGETS = {aten.scaled_dot_product_attention.default}
CHECKS_ONLY = {aten._assert_tensor_metadata.default}
# What reads an upcast that the kernels' own fp32 math makes: RMSNorm's x.float(), SiLU's.
PATTERN_PARTS = {aten.pow.Tensor_Scalar, aten.mul.Tensor, aten.sigmoid.default}
# to_edge turns _to_copy into dim-order ops' copy
_TO_DIM_ORDER_COPY = torch.ops.dim_order_ops._to_dim_order_copy.default
_CLONE_DIM_ORDER = torch.ops.dim_order_ops._clone_dim_order.default


@dataclass(frozen=True)
class Partial:
    """A node's meaning that is not a tensor of the plan (yet): `what` with its parts."""

    what: str
    parts: tuple = ()


def _val(node: Node) -> torch.Tensor:
    return node.meta["val"]


def _bound(size) -> int:
    """A size as the plan holds it: a symbolic one (a dynamic token count) at its upper bound."""
    if not isinstance(size, torch.SymInt):
        return int(size)
    from ..sdpa import length_range

    upper = length_range(size)[1]
    if upper is None:
        raise NotRecognised(f"a dynamic size {size} with no upper bound: export it with "
                            "torch.export.Dim(max=...) no longer than the KV cache")
    return upper


def _shape(node: Node) -> tuple[int, ...]:
    return tuple(_bound(s) for s in _val(node).shape)


def _symbolic_dim(node: Node) -> Optional[int]:
    return next((d for d, s in enumerate(_val(node).shape) if isinstance(s, torch.SymInt)), None)


class _Reader:
    def __init__(self, program: ExportedProgram):
        self.program = program
        sig = program.graph_signature
        self.params = dict(sig.inputs_to_parameters)
        self.buffers = dict(sig.inputs_to_buffers)
        self.lifted = dict(sig.inputs_to_lifted_tensor_constants)
        self.mutations = {out: buf for out, buf in sig.buffers_to_mutate.items()}
        self.write_only_states: set[str] = set()  # buffers the step writes and never reads (dropped)
        self.meaning: dict[Node, object] = {}
        self.ops: list[Op] = []
        self.plan = ModelPlan(inputs=[], outputs=[], constants={}, states={}, ops=self.ops)

    # --- values -----------------------------------------------------------------------------------

    def tensor_of(self, name: str) -> torch.Tensor:
        state = self.program.state_dict
        if name in state:
            return state[name]
        return self.program.constants[name]

    def placeholder(self, node: Node):
        val = _val(node)
        if node.name in self.params or node.name in self.buffers:
            fqn = self.params.get(node.name) or self.buffers[node.name]
            if node.name in self.buffers and fqn in self._mutated_buffers():
                value = Value(fqn, STATE, tuple(val.shape), val.dtype)
                self.plan.states[fqn] = value
                return value
            tensor = self.tensor_of(fqn)
            if node.name in self.buffers and tensor.numel() == 1:
                return Partial("scalar", (float(tensor.item()),))  # a lifted constant (eps, offsets)
            value = Value(fqn, CONSTANT, tuple(val.shape), val.dtype)
            self.plan.constants[fqn] = value
            self.plan.constant_data[fqn] = tensor
            return value
        if node.name in self.lifted:
            tensor = self.program.constants[self.lifted[node.name]]
            if tensor.numel() == 1:
                return Partial("scalar", (float(tensor.item()),))
            raise NotRecognised(f"{node.name}: a lifted constant tensor of shape {tuple(tensor.shape)}")
        value = Value(node.name, INPUT, _shape(node), val.dtype)
        self.plan.inputs.append(value)
        self.note_dynamic_rows(node)
        return value

    def note_dynamic_rows(self, node: Node) -> None:
        """An input with a symbolic dim carries the step's token count (one symbol per step)."""
        symbolic = [(d, s) for d, s in enumerate(_val(node).shape) if isinstance(s, torch.SymInt)]
        if not symbolic:
            return
        (dim, size), *more = symbolic
        if more or (self.plan.rows is not None and self.plan.rows.name != node.name):
            raise NotRecognised(f"{node.name}: a second dynamic dim; the plan takes one (the token count)")
        # The kernels take any count from 1 (torch.export's own lower bound may say 2: 0/1 specialisation).
        self.plan.rows = DynamicRows(node.name, dim, 1, _bound(size))

    def _mutated_buffers(self) -> set[str]:
        return set(self.mutations.values())

    def value(self, node, role: str, at: Node) -> Value:
        meaning = self.meaning.get(node) if isinstance(node, Node) else None
        if not isinstance(meaning, Value):
            raise NotRecognised(f"{at.name}: its {role} ({getattr(node, 'name', node)}) is "
                                f"{_describe(meaning)}, not a tensor the plan holds")
        return meaning

    def partial(self, node, what: str) -> Optional[Partial]:
        meaning = self.meaning.get(node) if isinstance(node, Node) else None
        return meaning if isinstance(meaning, Partial) and meaning.what == what else None

    def emit(self, node: Node, kind: str, inputs: dict, **attrs) -> Value:
        out = Value(node.name, INTERMEDIATE, _shape(node), _val(node).dtype)
        self.ops.append(Op(kind, inputs, out, attrs))
        return out

    # --- the walk ---------------------------------------------------------------------------------

    def read(self) -> ModelPlan:
        graph = self.program.graph_module.graph
        for node in graph.nodes:
            if node.op == "placeholder":
                self.meaning[node] = self.placeholder(node)
            elif node.op == "call_function":
                self.meaning[node] = self.call(node)
            elif node.op == "output":
                self.output(node)
        return self.plan

    def output(self, node: Node) -> None:
        sig = self.program.graph_signature
        for spec, arg in zip(sig.output_specs, node.args[0]):
            if spec.kind.name == "BUFFER_MUTATION" and spec.target in self.write_only_states:
                continue
            value = self.value(arg, "output", node)
            if spec.kind.name == "BUFFER_MUTATION":
                self.plan.state_updates[spec.target] = value
            else:
                self.plan.outputs.append(value)
                self.plan.output_row_dims.append(_symbolic_dim(arg))

    def call(self, node: Node):
        target = _aten_target(node)
        if target in CHECKS_ONLY:
            return None  # asserts about metadata: nothing to compute
        handler = _HANDLERS.get(target)
        if handler is None and target in VIEW_OPS:
            handler = _view
        if handler is None and target in SDPA_TARGETS:
            handler = _attention
        if handler is None:
            raise NotRecognised(f"{node.name}: {target} has no kernel in the whole-model plan: {node.format_node()}")
        return handler(self, node)


def _describe(meaning) -> str:
    if isinstance(meaning, Partial):
        return f"a partial {meaning.what}"
    return "nothing the plan holds" if meaning is None else type(meaning).__name__


# --- handlers: each reads one node, returns its meaning -------------------------------------------

def _view(r: _Reader, node: Node):
    src = node.args[0]
    meaning = r.meaning.get(src)
    if isinstance(meaning, Value):
        target, shape = _aten_target(node), _shape(node)
        if target in (aten.permute_copy.default, aten.permute.default):
            return meaning.viewed(("permute", tuple(node.args[1])), shape)
        if target == aten.transpose.int:
            dims = list(range(len(meaning.shape)))
            a, b = node.args[1] % len(dims), node.args[2] % len(dims)
            dims[a], dims[b] = dims[b], dims[a]
            return meaning.viewed(("permute", tuple(dims)), shape)
        if target in (aten.clone.default, aten.alias_copy.default, _CLONE_DIM_ORDER):
            return meaning
        return meaning.viewed(("reshape", shape), shape)
    if isinstance(meaning, Partial):
        return meaning  # masks and positions keep their meaning through unsqueeze
    raise NotRecognised(f"{node.name}: a view of {_describe(meaning)}")


def _scalar_tensor(r: _Reader, node: Node):
    return Partial("scalar", (float(node.args[0]),))


def _arange(r: _Reader, node: Node):
    start, end = (node.args[0], node.args[1]) if len(node.args) > 1 else (0, node.args[0])
    if r.partial(end, "rows") is not None:
        end = r.partial(end, "rows").parts[0]  # arange(L) of a dynamic L: the step's positions
    step = node.args[2] if len(node.args) > 2 else 1
    if not all(isinstance(v, int) for v in (start, end, step)) or step != 1:
        raise NotRecognised(f"{node.name}: arange with non-constant or strided bounds")
    return Partial("arange", (start, end))


def _add(r: _Reader, node: Node):
    a, b = node.args[0], node.args[1]
    if node.kwargs.get("alpha", 1) != 1:
        raise NotRecognised(f"{node.name}: add with alpha")
    ma, mb = r.meaning.get(a), r.meaning.get(b)
    # positions = input_pos + arange(0, L)
    if isinstance(ma, Value) and ma.kind == INPUT and isinstance(mb, Partial) and mb.what == "arange":
        if mb.parts[0] != 0:
            raise NotRecognised(f"{node.name}: positions from an arange not starting at 0")
        return Partial("positions", (ma, mb.parts[1]))
    # rms: mean(x^2) + eps
    if isinstance(ma, Partial) and ma.what == "mean_square" and isinstance(mb, Partial) and mb.what == "scalar":
        return Partial("mean_square_eps", (ma.parts[0], mb.parts[0]))
    # norm weight with its offset: w + c (c may be 0)
    if isinstance(ma, Value) and ma.kind == CONSTANT and isinstance(mb, Partial) and mb.what == "scalar":
        return Partial("norm_weight", (ma, mb.parts[0]))
    # rope: x*cos + rotate_half(x)*sin
    if isinstance(ma, Partial) and ma.what == "times_cos" and isinstance(mb, Partial) and mb.what == "rotated_times_sin":
        x, cos, pos = ma.parts
        x2, sin, pos2 = mb.parts
        if x2 != x or pos2 != pos:
            raise NotRecognised(f"{node.name}: RoPE halves of different tensors")
        return r.emit(node, "rope", {"x": x, "cos": cos, "sin": sin, "positions": pos.parts[0]})
    if isinstance(ma, Value) and isinstance(mb, Value):
        if ma.shape != mb.shape:
            raise NotRecognised(f"{node.name}: add of shapes {ma.shape} and {mb.shape} (broadcast)")
        return r.emit(node, "add", {"a": ma, "b": mb})
    raise NotRecognised(f"{node.name}: add of {_describe(ma)} and {_describe(mb)}")


def _mul(r: _Reader, node: Node):
    a, b = node.args[0], node.args[1]
    ma, mb = r.meaning.get(a), r.meaning.get(b)
    if isinstance(mb, Partial) and mb.what == "rrms" and isinstance(ma, Value) and ma == mb.parts[0]:
        return Partial("normalized", mb.parts)  # x * rsqrt(mean(x^2) + eps)
    if isinstance(ma, Partial) and ma.what == "normalized":
        if isinstance(mb, Partial) and mb.what == "norm_weight":
            weight, offset = mb.parts
        elif isinstance(mb, Value) and mb.kind == CONSTANT:
            weight, offset = mb, 0.0
        else:
            raise NotRecognised(f"{node.name}: RMSNorm scaled by {_describe(mb)}")
        x, eps = ma.parts
        return r.emit(node, "rmsnorm", {"x": x, "weight": weight}, eps=eps, weight_offset=offset)
    if isinstance(mb, Partial) and mb.what == "table_rows":
        table, pos = mb.parts
        if isinstance(ma, Value):  # x * cos[pos]
            return Partial("times_cos", (ma, table, pos))
        if isinstance(ma, Partial) and ma.what == "rotated":  # rotate_half(x) * sin[pos]
            return Partial("rotated_times_sin", (ma.parts[0], table, pos))
    if isinstance(mb, Partial) and mb.what == "sigmoid" and isinstance(ma, Value) and ma == mb.parts[0]:
        return Partial("silu", (ma,))
    if isinstance(ma, Partial) and ma.what in ("silu", "gelu_tanh") and isinstance(mb, Value):
        return r.emit(node, "gated_act", {"gate": ma.parts[0], "up": mb}, act=ma.what)
    if isinstance(ma, Value) and ma.kind == INTERMEDIATE and isinstance(mb, Partial) and mb.what == "scalar":
        producer = r.ops[-1] if r.ops else None
        if producer is not None and producer.kind == "embedding" and producer.output == ma:
            r.ops[-1] = Op("embedding", producer.inputs, _retype(producer.output, node),
                           {**producer.attrs, "scale": producer.attrs["scale"] * mb.parts[0]})
            return r.ops[-1].output
    raise NotRecognised(f"{node.name}: mul of {_describe(ma)} and {_describe(mb)}")


def _retype(value: Value, node: Node) -> Value:
    return Value(node.name, value.kind, _shape(node), _val(node).dtype)


def _pow(r: _Reader, node: Node):
    x = r.value(node.args[0], "base", node)
    if node.args[1] != 2:
        raise NotRecognised(f"{node.name}: pow with exponent {node.args[1]}")
    return Partial("square", (x,))


def _mean(r: _Reader, node: Node):
    square = r.partial(node.args[0], "square")
    dims = node.args[1] if len(node.args) > 1 else None
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if square is None or list(dims or []) not in ([-1], [len(_val(node).shape) - 1]) or not keepdim:
        raise NotRecognised(f"{node.name}: a mean that is not the RMSNorm's mean(x^2, -1, keepdim)")
    return Partial("mean_square", square.parts)


def _rsqrt(r: _Reader, node: Node):
    ms = r.partial(node.args[0], "mean_square_eps")
    if ms is None:
        raise NotRecognised(f"{node.name}: rsqrt of something that is not mean(x^2) + eps")
    return Partial("rrms", ms.parts)


def _to_copy(r: _Reader, node: Node):
    meaning = r.meaning.get(node.args[0])
    dtype = node.kwargs.get("dtype", _val(node).dtype)
    if isinstance(meaning, Value):
        if meaning.dtype == dtype or meaning.kind == CONSTANT:
            return meaning  # (w.float() inside a norm: the kernel reads w in fp32 anyway)
        if dtype == torch.float32 and all(_aten_target(u) in PATTERN_PARTS for u in node.users):
            return meaning  # an upcast inside a norm or SiLU: those kernels compute in fp32 anyway
        sole_reader = len(node.args[0].users) == 1
        if meaning.kind == INTERMEDIATE and sole_reader and r.ops and r.ops[-1].output == meaning:
            # A cast of the op just emitted, read by nothing else: that op writes this dtype
            # (norms and linears compute in fp32 and round once).
            last = r.ops[-1]
            r.ops[-1] = Op(last.kind, last.inputs, _retype(meaning, node), last.attrs)
            return r.ops[-1].output
        raise NotRecognised(f"{node.name}: a cast of {meaning.name} that no op can fold")
    if isinstance(meaning, Partial):
        return meaning  # casts inside a pattern (RMSNorm's x.float()) are the kernels' own fp32 math
    raise NotRecognised(f"{node.name}: a cast of {_describe(meaning)}")


def _index(r: _Reader, node: Node):
    table = r.meaning.get(node.args[0])
    indices = node.args[1]
    pos = r.meaning.get(indices[0]) if len(indices) == 1 and isinstance(indices[0], Node) else None
    if isinstance(table, Value) and table.kind == CONSTANT and isinstance(pos, Partial) and pos.what == "positions":
        return Partial("table_rows", (table, pos))  # cos or sin: the multiplication says which
    raise NotRecognised(f"{node.name}: index of {_describe(table)} by {_describe(pos)}")


def _slice(r: _Reader, node: Node):
    x = r.value(node.args[0], "input", node)
    dim, start, end = node.args[1], node.args[2], node.args[3]
    half = x.shape[-1] // 2
    step = node.args[4] if len(node.args) > 4 else 1
    if dim in (-1, len(x.shape) - 1) and step == 1:
        if start == half and end >= x.shape[-1]:
            return Partial("upper_half", (x,))
        if start == 0 and end == half:
            return Partial("lower_half", (x,))
    if _is_last_row(x, dim, start, end, step):
        out = Value(node.name, INTERMEDIATE, _shape(node), _val(node).dtype)
        r.ops.append(Op("last_row", {"x": x}, out))
        return out
    raise NotRecognised(f"{node.name}: a slice that is neither a half of the last dim nor the last token's row")


def _is_last_row(x: Value, dim, start, end, step) -> bool:
    """x[:, -1:, :] of [B, L, hidden] activations (Decoder.last_row_logits: the last token's row only)."""
    return (x.kind == INTERMEDIATE and len(x.shape) == 3 and dim == 1 and step == 1
            and start in (-1, x.shape[1] - 1) and end >= x.shape[1])


def _neg(r: _Reader, node: Node):
    upper = r.partial(node.args[0], "upper_half")
    if upper is None:
        raise NotRecognised(f"{node.name}: neg of something other than rotate_half's upper half")
    return Partial("neg_upper", upper.parts)


def _cat(r: _Reader, node: Node):
    parts = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else 0
    if len(parts) == 2 and dim in (-1, len(_val(node).shape) - 1):
        neg, lower = r.partial(parts[0], "neg_upper"), r.partial(parts[1], "lower_half")
        if neg is not None and lower is not None and neg.parts == lower.parts:
            return Partial("rotated", neg.parts)
    raise NotRecognised(f"{node.name}: a cat other than rotate_half's")


def _compare(r: _Reader, node: Node):
    """keys <= query positions (and keys > positions - window): the causal mask of a cache."""
    a, b = r.meaning.get(node.args[0]), r.meaning.get(node.args[1])
    target = _aten_target(node)
    if isinstance(a, Partial) and a.what == "arange" and isinstance(b, Partial) and b.what == "positions":
        if target == aten.le.Tensor:
            return Partial("causal_mask", (b, None))
    if isinstance(a, Partial) and a.what == "arange" and isinstance(b, Partial) and b.what == "positions_minus":
        if target == aten.gt.Tensor:
            return Partial("window_floor", (b.parts[0], b.parts[1]))
    raise NotRecognised(f"{node.name}: a comparison that is not a causal or sliding-window mask")


def _sub(r: _Reader, node: Node):
    pos, window = r.meaning.get(node.args[0]), node.args[1]
    scalar = r.partial(window, "scalar")
    window = int(scalar.parts[0]) if scalar is not None and scalar.parts[0] == int(scalar.parts[0]) else window
    if isinstance(pos, Partial) and pos.what == "positions" and isinstance(window, int) and window > 0:
        return Partial("positions_minus", (pos, window))
    raise NotRecognised(f"{node.name}: a subtraction outside a sliding-window mask")


def _logical_and(r: _Reader, node: Node):
    a, b = r.meaning.get(node.args[0]), r.meaning.get(node.args[1])
    if (isinstance(a, Partial) and a.what == "causal_mask" and isinstance(b, Partial)
            and b.what == "window_floor" and a.parts[0] == b.parts[0]):
        return Partial("causal_mask", (a.parts[0], b.parts[1]))
    raise NotRecognised(f"{node.name}: a logical and outside a sliding-window mask")


def _where(r: _Reader, node: Node):
    """where(mask, 0, -inf): the causal mask in its additive form (as ExecuTorch may rewrite a bool mask)."""
    cond, a, b = (r.meaning.get(x) if isinstance(x, Node) else Partial("scalar", (float(x),)) for x in node.args)
    values = tuple(m.parts[0] if isinstance(m, Partial) and m.what == "scalar" else None for m in (a, b))
    if isinstance(cond, Partial) and cond.what == "causal_mask" and values == (0.0, float("-inf")):
        return cond
    raise NotRecognised(f"{node.name}: a where() that is not a causal mask made additive")


def _sym_size(r: _Reader, node: Node):
    rows = r.plan.rows
    source = r.meaning.get(node.args[0])
    if rows is None or not isinstance(source, Value) or source.name != rows.name or node.args[1] != rows.dim:
        raise NotRecognised(f"{node.name}: a symbolic size other than the step's token count")
    return Partial("rows", (rows.hi,))


def _embedding(r: _Reader, node: Node):
    table = r.value(node.args[0], "table", node)
    tokens = r.value(node.args[1], "indices", node)
    if table.kind != CONSTANT or tokens.kind != INPUT:
        raise NotRecognised(f"{node.name}: an embedding of {table.name} by {tokens.name}")
    return r.emit(node, "embedding", {"table": table, "tokens": tokens}, scale=1.0)


def _linear(r: _Reader, node: Node):
    x = r.value(node.args[0], "input", node)
    weight = r.value(node.args[1], "weight", node)
    bias = r.value(node.args[2], "bias", node) if len(node.args) > 2 and node.args[2] is not None else None
    if weight.kind != CONSTANT or (bias is not None and bias.kind != CONSTANT):
        raise NotRecognised(f"{node.name}: a linear whose weight is not a constant of the program")
    inputs = {"x": x, "weight": weight, **({"bias": bias} if bias is not None else {})}
    return r.emit(node, "linear", inputs, norm_eps=None, gated="")


def _index_put(r: _Reader, node: Node):
    indices = node.args[1]
    if len(indices) != 3 or indices[0] is not None or indices[1] is not None or (len(node.args) > 3 and node.args[3]):
        raise NotRecognised(f"{node.name}: an index_put that is not a KV-cache row write")
    return _cache_rows(r, node, node.args[0], 2, indices[2], node.args[2])


def _cache_rows(r: _Reader, node: Node, cache_node, dim, positions_node, rows_node):
    """cache rows `rows` written along dim 2 at the step's positions (index_put / index_copy)."""
    cache = r.value(cache_node, "cache", node)
    rows = r.value(rows_node, "values", node)
    pos = r.meaning.get(positions_node) if isinstance(positions_node, Node) else None
    if cache.kind != STATE or dim not in (2, -2):
        raise NotRecognised(f"{node.name}: a write that is not a KV-cache row write along the sequence")
    if not (isinstance(pos, Partial) and pos.what == "positions"):
        raise NotRecognised(f"{node.name}: cache rows written at {_describe(pos)}, not the step's positions")
    r.ops.append(Op("cache_write", {"cache": cache, "rows": rows, "positions": pos.parts[0]},
                    cache, {"name": cache.name}))
    return cache  # the state, now holding the rows


def _attention(r: _Reader, node: Node):
    args = list(node.args) + [None] * (4 - len(node.args))
    q = r.value(args[0], "query", node)
    k, v = r.value(args[1], "key", node), r.value(args[2], "value", node)
    mask = r.meaning.get(args[3]) if args[3] is not None else None
    if k.kind != STATE or v.kind != STATE:
        raise NotRecognised(f"{node.name}: attention over K/V that are not the program's caches")
    if not (isinstance(mask, Partial) and mask.what == "causal_mask"):
        raise NotRecognised(f"{node.name}: attention with a mask that is not causal over the cache "
                            f"({_describe(mask)})")
    kw = node.kwargs
    if kw.get("dropout_p", 0.0) or kw.get("is_causal", False):
        raise NotRecognised(f"{node.name}: attention with dropout or is_causal beside a mask")
    positions, window = mask.parts
    scale = kw.get("scale") or q.shape[-1] ** -0.5
    return r.emit(node, "attention", {"q": q, "k_cache": k, "v_cache": v, "positions": positions.parts[0]},
                  scale=float(scale), window=window)


def _sigmoid(r: _Reader, node: Node):
    return Partial("sigmoid", (r.value(node.args[0], "input", node),))


def _gelu(r: _Reader, node: Node):
    if node.kwargs.get("approximate", "none") != "tanh":
        raise NotRecognised(f"{node.name}: gelu without the tanh approximation")
    return Partial("gelu_tanh", (r.value(node.args[0], "input", node),))


def _silu(r: _Reader, node: Node):
    return Partial("silu", (r.value(node.args[0], "input", node),))


def _argmax(r: _Reader, node: Node):
    """Greedy token ids: argmax over the last dim of a float tensor the plan computes."""
    x = r.value(node.args[0], "input", node)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dim is None or dim not in (-1, len(x.shape) - 1) or not x.dtype.is_floating_point:
        raise NotRecognised(f"{node.name}: an argmax that is not over the last dim of float values "
                            f"(dim {dim}, {x.dtype})")
    return r.emit(node, "argmax", {"x": x}, keepdim=bool(keepdim))


_HANDLERS = {
    aten.scalar_tensor.default: _scalar_tensor, aten.where.self: _where, aten.arange.start_step: _arange, aten.arange.default: _arange, aten.arange.start: _arange,
    aten.add.Tensor: _add, aten.mul.Tensor: _mul, aten.pow.Tensor_Scalar: _pow, aten.mean.dim: _mean,
    aten.rsqrt.default: _rsqrt, aten._to_copy.default: _to_copy, _TO_DIM_ORDER_COPY: _to_copy, aten.index.Tensor: _index,
    aten.slice_copy.Tensor: _slice, aten.slice.Tensor: _slice, aten.neg.default: _neg, aten.cat.default: _cat,
    aten.le.Tensor: _compare, aten.gt.Tensor: _compare, aten.sub.Tensor: _sub,
    aten.logical_and.default: _logical_and, aten.bitwise_and.Tensor: _logical_and, aten.__and__.Tensor: _logical_and,
    aten.index_copy.default: lambda r, node: _cache_rows(r, node, node.args[0], node.args[1], node.args[2], node.args[3]),
    aten.embedding.default: _embedding, aten.linear.default: _linear, aten.index_put.default: _index_put,
    aten.sigmoid.default: _sigmoid, aten.gelu.default: _gelu, aten.silu.default: _silu,
    aten.sym_size.int: _sym_size, aten.argmax.default: _argmax,
}


from .recognize_hf import extend, written_out_attention  # noqa: E402  (Hugging Face transformers' graphs)

extend(_HANDLERS, VIEW_OPS, _view, SDPA_TARGETS, _attention)


def recognise(program: ExportedProgram) -> ModelPlan:
    """The op plan of `program`'s whole graph, or NotRecognised naming the first node it cannot hold."""
    eager_attention = written_out_attention(program.graph)
    if eager_attention:
        raise NotRecognised(eager_attention)
    plan = _Reader(program).read()
    if not plan.outputs:
        raise NotRecognised("the graph returns nothing the plan computes")
    _check_rows_fit_caches(plan)
    return plan


def _check_rows_fit_caches(plan: ModelPlan) -> None:
    """A dynamic token count's bound must fit the KV caches (the buffers are sized for it)."""
    caches = [cache_heads_and_length(op, op.inputs["cache"])[1] for op in plan.ops if op.kind == "cache_write"]
    if plan.rows is not None and caches and plan.rows.hi > min(caches):
        raise NotRecognised(f"{plan.rows.name}: up to {plan.rows.hi} tokens a step, more than the "
                            f"{min(caches)}-row KV cache holds: export with torch.export.Dim(max={min(caches)})")


from .recognize_llama import extend as _extend_for_llama  # noqa: E402  (reads this module's names)

_extend_for_llama(_HANDLERS)
