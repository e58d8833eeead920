"""What one scaled_dot_product_attention node asks for, and whether we can run it.

The partitioner and the AOT stage both read SDPA nodes through `SdpaCall`,
so they agree on what a node means and on what the kernels support.

ExecuTorch's own attention op, `llama::custom_sdpa(q, k_cache, v_cache,
start_pos, ...)` on [B, S, H, D] tensors (executorch.extension.llm.custom_ops),
is read through SdpaCall too, with the BSHD layout and its start position;
the partitioner turns each one it takes into TAKEN_LLAMA_SDPA_OP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from executorch.exir.dialects.edge._ops import EdgeOpOverload
from torch.fx import Node

from .layout import BHSD, BSHD, Layout
from .limits import MASK_DTYPES, SUPPORTED_DTYPES, head_dim_problem, mask_shape_problem

SDPA_OP = torch.ops.aten.scaled_dot_product_attention.default

# A sequence length as the AOT stage plans it: (min, max), equal for a static
# size; max is None for a dynamic size without an upper bound.
LengthRange = tuple[int, Optional[int]]


def length_range(size) -> LengthRange:
    """The range of one size of a node's fake tensor: (n, n) for an int, else the
    bounds torch.export recorded for the symbol. The shape env reports a lower
    bound of 2 for Dim(min=0 or 1) (it specialises 0 and 1); plans start at 1
    then, which only widens what one payload accepts."""
    if isinstance(size, int):
        return size, size
    bounds = size.node.shape_env.bound_sympy(size.node.expr)
    lower = int(bounds.lower)
    try:
        upper = int(bounds.upper)
    except (TypeError, ValueError, OverflowError, AttributeError):  # torch's int_oo: no bound
        upper = None
    return (1 if lower <= 2 else lower), upper


def same_size(a, b) -> bool:
    """a and b are the same static size, or the same symbol (never guards on symbols)."""
    if isinstance(a, int) or isinstance(b, int):
        return isinstance(a, int) and isinstance(b, int) and a == b
    return a.node.expr == b.node.expr


# The op an SDPA call the partitioner takes becomes before decompositions run:
# same schema and result as aten SDPA, but in no decomposition table, so it
# reaches partition() whole whatever other partitioners ask to decompose.
# (ExecuTorch 1.5.1's to_edge_transform_and_lower runs each partitioner's
# decomposition table in turn; XnnpackPartitioner's decomposes aten SDPA even
# when CudaGqaPartitioner asked to keep it.) Its CPU and fake kernels make the
# graph run and trace as before.
@torch.library.custom_op("cuda_gqa::sdpa", mutates_args=())
def _taken_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                enable_gqa: bool = False, softcap: float = 0.0) -> torch.Tensor:
    """aten SDPA, plus Gemma 2's logit soft-cap (softcap > 0: scaled logits become
    softcap * tanh(logits / softcap) before masks apply)."""
    if softcap == 0.0:
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa).contiguous()
    from .kernels.reference import reference_attention

    if is_causal:  # aten's top-left alignment: query i sees keys 0..i
        causal = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool).tril()
        attn_mask = causal if attn_mask is None else attn_mask & causal if attn_mask.dtype == torch.bool \
            else attn_mask.masked_fill(~causal, float("-inf"))
    return reference_attention(query, key, value, attn_mask=attn_mask, scale=scale, softcap=softcap).to(query.dtype)


@_taken_sdpa.register_fake
def _(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, softcap=0.0):
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


TAKEN_SDPA_OP = torch.ops.cuda_gqa.sdpa.default

POSITION_DTYPES = (torch.int32, torch.int64)


def _start_of(start_pos: torch.Tensor) -> int:
    return int(start_pos.reshape(-1)[0])


# What `llama::custom_sdpa` (ExecuTorch's custom op, [B, S, H, D] tensors) becomes
# when the partitioner takes it: the start position as the integer tensor it was
# read from (`input_pos[0]`) rather than a SymInt, no mask or dropout (not
# taken). Keys [0, start + S_q) of the caches are attended; is_causal: query i
# sees keys up to start + i. GQA when key/value have fewer heads than query.
@torch.library.custom_op("cuda_gqa::llama_sdpa", mutates_args=())
def _taken_llama_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, start_pos: torch.Tensor,
                      is_causal: bool = True, scale: Optional[float] = None) -> torch.Tensor:
    from .kernels.reference import reference_attention

    kv_len = _start_of(start_pos) + query.shape[1]
    out = reference_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                              is_causal=is_causal, scale=scale, kv_len=kv_len)
    return out.transpose(1, 2).to(query.dtype).contiguous()


@_taken_llama_sdpa.register_fake
def _(query, key, value, start_pos, is_causal=True, scale=None):
    return query.new_empty(query.shape)


# What `llama::update_cache(value, cache, start_pos)` becomes when the delegate
# takes it with its custom_sdpa: functional (returns the updated cache, which
# the program writes back to the buffer), the start position as a tensor. Rows
# of value [B, S, H, D] go to cache[:, start + i]; rows past the cache are skipped.
@torch.library.custom_op("cuda_gqa::llama_update_cache", mutates_args=())
def _taken_llama_update_cache(cache: torch.Tensor, value: torch.Tensor, start_pos: torch.Tensor) -> torch.Tensor:
    out = cache.clone()
    start = _start_of(start_pos)
    first, last = max(start, 0), min(start + value.shape[1], cache.shape[1])
    if first < last:
        out[:, first:last] = value[:, first - start:last - start]
    return out


@_taken_llama_update_cache.register_fake
def _(cache, value, start_pos):
    return torch.empty_like(cache, memory_format=torch.contiguous_format)


TAKEN_LLAMA_SDPA_OP = torch.ops.cuda_gqa.llama_sdpa.default
TAKEN_LLAMA_UPDATE_OP = torch.ops.cuda_gqa.llama_update_cache.default
_SCALAR_OF_TENSOR = (torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default)


def op_name(node: Node) -> Optional[str]:
    """The operator's qualified name ("llama::custom_sdpa"), aten or edge dialect; None for non-ops."""
    if node.op != "call_function":
        return None
    schema = getattr(_aten_target(node), "_schema", None)
    return None if schema is None else schema.name


def position_tensor(node) -> Optional[Node]:
    """`node` itself when it is an integer tensor of one element (a start position), else None."""
    val = node.meta.get("val") if isinstance(node, Node) else None
    if not isinstance(val, torch.Tensor) or val.dtype not in POSITION_DTYPES or val.dim() > 4:
        return None
    return node if all(isinstance(s, int) and s == 1 for s in val.shape) else None


def start_position_source(start_pos) -> Optional[Node]:
    """The one-element integer tensor a SymInt start_pos was read from
    (`input_pos[0].item()`: item/_local_scalar_dense of it), else None."""
    if not isinstance(start_pos, Node) or start_pos.op != "call_function":
        return None
    if _aten_target(start_pos) not in _SCALAR_OF_TENSOR:
        return None
    return position_tensor(start_pos.args[0])


def _aten_target(node: Node):
    return node.target._op if isinstance(node.target, EdgeOpOverload) else node.target


def is_contiguous_clone(node: Node) -> bool:
    """The clone the partitioner puts after each SDPA it takes, in the aten or edge dialect
    (where ExecuTorch turns it into a dim-order clone)."""
    if node.op != "call_function":
        return False
    target = _aten_target(node)
    if target == torch.ops.aten.clone.default:
        return node.kwargs.get("memory_format") == torch.contiguous_format
    dim_order_clone = getattr(getattr(torch.ops, "dim_order_ops", None), "_clone_dim_order", None)
    return dim_order_clone is not None and target == dim_order_clone.default


def is_sdpa(node: Node) -> bool:
    """True for SDPA nodes (aten's, or one the partitioner took), in the aten or the edge dialect."""
    if node.op != "call_function":
        return False
    return _aten_target(node) in (SDPA_OP, TAKEN_SDPA_OP)


LLAMA_SDPA = "llama::custom_sdpa"
LLAMA_UPDATE_CACHE = "llama::update_cache"


def is_llama_sdpa(node: Node) -> bool:
    """ExecuTorch's `llama::custom_sdpa`, as exported (the partitioner has not taken it)."""
    return op_name(node) == LLAMA_SDPA


def is_taken_llama_sdpa(node: Node) -> bool:
    return node.op == "call_function" and _aten_target(node) == TAKEN_LLAMA_SDPA_OP


def is_attention(node: Node) -> bool:
    """An attention call the delegate runs: a (taken) SDPA or a taken llama::custom_sdpa."""
    return is_sdpa(node) or is_taken_llama_sdpa(node)


@dataclass(frozen=True)
class SdpaCall:
    """The arguments of one SDPA node, with shapes taken from its fake tensors.

    For ExecuTorch's llama::custom_sdpa (or the op the partitioner takes it
    as), layout is BSHD and start_pos is set: the SymInt node (or int) it
    was given, or the integer tensor it was read from once taken.
    """

    node: Node
    query: Node
    key: Node
    value: Node
    attn_mask: Optional[Node]
    dropout_p: float
    is_causal: bool
    scale: Optional[float]
    enable_gqa: bool
    softcap: float = 0.0  # TAKEN_SDPA_OP's (a soft-capped attention the partitioner recognised)
    layout: Layout = BHSD
    start_pos: object = None

    @classmethod
    def from_node(cls, node: Node) -> "SdpaCall":
        target = _aten_target(node)
        schema = target._schema.arguments
        bound = {a.name: a.default_value for a in schema if a.has_default_value()}
        bound.update(zip((a.name for a in schema), node.args))
        bound.update(node.kwargs)
        if target._schema.name in (LLAMA_SDPA, TAKEN_LLAMA_SDPA_OP._schema.name):
            return cls(node=node, query=bound["query"], key=bound["key"], value=bound["value"],
                       attn_mask=bound.get("attn_mask"),
                       dropout_p=float(bound.get("drpout_p", 0.0)),  # (sic: the op's argument name)
                       is_causal=bool(bound["is_causal"]), scale=bound["scale"], enable_gqa=True, layout=BSHD,
                       start_pos=bound["start_pos"])
        return cls(
            node=node,
            query=bound["query"],
            key=bound["key"],
            value=bound["value"],
            attn_mask=bound["attn_mask"],
            dropout_p=float(bound["dropout_p"]),
            is_causal=bool(bound["is_causal"]),
            scale=bound["scale"],
            enable_gqa=bool(bound["enable_gqa"]),
            softcap=float(bound.get("softcap", 0.0)),
        )

    def _val(self, n: Node) -> torch.Tensor:
        return n.meta["val"]

    @property
    def from_start(self) -> bool:
        """llama::custom_sdpa: keys [0, start_pos + L_q) attended, causal relative to start_pos."""
        return self.start_pos is not None

    @property
    def start_tensor(self) -> Optional[Node]:
        """The one-element integer tensor holding start_pos (from_start calls), or None when
        start_pos was not read from one."""
        if not self.from_start:
            return None
        if is_taken_llama_sdpa(self.node):
            return position_tensor(self.start_pos)
        return start_position_source(self.start_pos)

    @property
    def dtype(self) -> torch.dtype:
        return self._val(self.query).dtype

    @property
    def shapes(self) -> tuple[tuple, tuple, tuple]:
        """q, k, v shapes as [B, H, L, D] (whatever the layout)."""
        layout = self.layout
        return tuple(tuple(self._val(n).shape[d] for d in (layout.batch, layout.heads, layout.seq, layout.head_dim))
                     for n in (self.query, self.key, self.value))

    @property
    def num_heads_q(self) -> int:
        return int(self._val(self.query).shape[self.layout.heads])

    @property
    def num_heads_kv(self) -> int:
        return int(self._val(self.key).shape[self.layout.heads])

    @property
    def head_dim(self) -> int:
        return int(self._val(self.query).shape[3])

    @property
    def softmax_scale(self) -> float:
        return float(self.scale) if self.scale is not None else 1.0 / math.sqrt(self.head_dim)

    @property
    def lengths(self) -> tuple[LengthRange, LengthRange]:
        """(L_q range, L_kv range)."""
        seq = self.layout.seq
        return length_range(self._val(self.query).shape[seq]), length_range(self._val(self.key).shape[seq])

    @property
    def is_dynamic(self) -> bool:
        return any(lo != hi for lo, hi in self.lengths)

    @property
    def kv_follows_query(self) -> bool:
        """L_kv is L_q's symbol (self-attention over a dynamic length)."""
        seq = self.layout.seq
        q, k = self._val(self.query).shape[seq], self._val(self.key).shape[seq]
        return not isinstance(q, int) and same_size(q, k)

    @property
    def keys_follow_query(self) -> bool:
        """A dynamic causal call whose kernels must attend only the first L_q keys
        (the dynamic form of attended_keys)."""
        return self.is_causal and self.is_dynamic and not self.kv_follows_query and not self.from_start

    @property
    def attended_keys(self) -> Optional[int]:
        """How many leading keys the kernels must attend, when not all of L_kv.

        PyTorch's is_causal is top-left aligned (query i sees keys j <= i)
        while the kernels' causal mask is bottom-right aligned. For L_q < L_kv
        the two agree once the key range is cut to its first L_q keys; for
        L_q == L_kv they are the same mask. Static calls only (see keys_follow_query).
        A from_start call bounds its keys on the device instead (start_pos + L_q).
        """
        if self.is_dynamic or self.from_start:
            return None
        (_, l_q), (_, l_kv) = self.lengths
        return l_q if self.is_causal and l_q < l_kv else None

    @property
    def mask(self) -> Optional[torch.Tensor]:
        """The attn_mask's fake tensor, or None."""
        return None if self.attn_mask is None else self._val(self.attn_mask)

    def describe(self) -> str:
        """What the delegate runs, for the partition report."""
        parts = [f"{'GQA' if self.num_heads_q > self.num_heads_kv else 'MHA'} "
                 f"{self.num_heads_q}/{self.num_heads_kv} heads", f"D={self.head_dim}",
                 str(self.dtype).removeprefix("torch.")]
        if self.from_start:
            parts.insert(0, "llama.custom_sdpa [B, S, H, D]")
        (q_lo, q_hi), (kv_lo, kv_hi) = self.lengths
        if self.from_start:  # the caches are static
            parts.append(f"L_q {q_lo}..{q_hi}" if q_lo != q_hi else f"L_q {q_lo}")
            parts.append(f"keys up to start_pos + L_q of {kv_hi}")
        elif self.is_dynamic:
            parts.append(f"dynamic L_q {q_lo}..{q_hi}, " +
                         ("L_kv = L_q" if self.kv_follows_query else
                          f"L_kv {kv_lo}" if kv_lo == kv_hi else f"L_kv {kv_lo}..{kv_hi}"))
        if self.is_causal:
            parts.append("causal" + (" from start_pos" if self.from_start else ""))
        if self.softcap > 0:
            parts.append(f"soft-cap {self.softcap:g}")
        if self.mask is not None:
            kind = "bool" if self.mask.dtype == torch.bool else f"additive {str(self.mask.dtype).removeprefix('torch.')}"
            names = {len(self.mask.shape) - 2: "L_q", len(self.mask.shape) - 1: "L_kv"}
            shape = [s if isinstance(s, int) else names.get(d, "?") for d, s in enumerate(self.mask.shape)]
            parts.append(f"{kind} mask [{', '.join(map(str, shape))}]")
        return ", ".join(parts)

    def _mask_problem(self) -> Optional[str]:
        mask = self.mask
        if mask is None:
            return None
        q = self._val(self.query)
        if mask.dtype not in MASK_DTYPES or (mask.dtype.is_floating_point and mask.dtype not in (q.dtype, torch.float32)):
            return f"attn_mask dtype {mask.dtype}: use bool, float32 or the query's dtype {q.dtype}"
        (b, h_q, l_q, _), (_, _, l_kv, _), _ = self.shapes
        full = (b, h_q, l_q, l_kv)
        if all(isinstance(s, int) for s in (*mask.shape, *full)):
            return mask_shape_problem(mask.shape, full)
        # Dynamic lengths: a mask dim is 1 (broadcast) or the very size (or symbol) it meets.
        shape = tuple(mask.shape)
        if not 1 <= len(shape) <= 4 or not all((isinstance(m, int) and m == 1) or same_size(m, n)
                                               for m, n in zip(shape[::-1], full[::-1])):
            return f"attn_mask shape {shape} does not broadcast to [B, H_q, L_q, L_kv] = {list(full)}"
        return None

    @property
    def mask_shape(self) -> Optional[tuple[int, ...]]:
        """The attn_mask's shape, -1 where it has a dynamic length (L_q or L_kv), or None."""
        mask = self.mask
        return None if mask is None else tuple(s if isinstance(s, int) else -1 for s in mask.shape)

    def _start_problem(self) -> Optional[str]:
        """Why a llama::custom_sdpa call cannot run from its start position, or None."""
        if self.attn_mask is not None:
            return "llama.custom_sdpa with an attn_mask (its start_pos is then ignored) is not supported"
        if self.start_tensor is None:
            return (f"llama.custom_sdpa start_pos {self.start_pos} is not read from a one-element integer tensor "
                    "(as input_pos[0].item() is)")
        (q_lo, q_hi), (kv_lo, kv_hi) = self.lengths
        if kv_lo != kv_hi:
            return "llama.custom_sdpa over caches of a dynamic length: the caches must be static"
        if q_hi > kv_hi:
            return f"L_q (up to {q_hi}) may exceed the cache length {kv_hi}"
        return None

    def unsupported_reason(self, include_mha: bool = False) -> Optional[str]:
        """None when the kernels run this node, else why not (for the partition report).

        include_mha: also take plain multi-head attention (H_q == H_kv).
        """
        vals = [self._val(n) for n in (self.query, self.key, self.value)]
        if any(v.dim() != 4 for v in vals):
            return f"query/key/value are not 4-D [{', '.join(self.layout.name)}]"
        static = (self.layout.batch, self.layout.heads, self.layout.head_dim)
        if any(not isinstance(v.shape[d], int) for v in vals for d in static):
            return "batch, head counts and head dim must be static (only L_q and L_kv may be dynamic)"
        for name, (_, upper) in zip(("L_q", "L_kv"), self.lengths):
            if upper is None:
                return f"{name} is dynamic without an upper bound: export it with torch.export.Dim(..., max=...)"
        q, k, v = vals
        if self.num_heads_kv > self.num_heads_q or self.num_heads_q % self.num_heads_kv:
            return f"H_q={self.num_heads_q} is not a multiple of H_kv={self.num_heads_kv}"
        if self.num_heads_kv == self.num_heads_q and not include_mha:
            return f"MHA (H_q = H_kv = {self.num_heads_q}): pass include_mha=True to delegate it"
        if self.num_heads_kv < self.num_heads_q and not self.enable_gqa:
            return f"enable_gqa=False with H_q={self.num_heads_q} != H_kv={self.num_heads_kv}"
        if self.from_start:
            start_problem = self._start_problem()
            if start_problem is not None:
                return start_problem
        mask_problem = self._mask_problem()
        if mask_problem is not None:
            return mask_problem
        if self.dropout_p != 0.0:
            return f"dropout_p={self.dropout_p}: only 0 is supported"
        if q.dtype not in SUPPORTED_DTYPES:
            return f"dtype {q.dtype} is not one of {[str(d) for d in SUPPORTED_DTYPES]}"
        if k.dtype != q.dtype or v.dtype != q.dtype:
            return f"mixed dtypes q={q.dtype} k={k.dtype} v={v.dtype}"
        (qb, _, _, qd), (kb, _, _, kd), _ = self.shapes
        if not all(same_size(a, b) for a, b in zip(k.shape, v.shape)) or qb != kb or qd != kd:
            return f"inconsistent shapes q={tuple(q.shape)} k={tuple(k.shape)} v={tuple(v.shape)}"
        (q_lo, q_hi), (kv_lo, kv_hi) = self.lengths
        if self.is_causal and not self.from_start and not self.kv_follows_query and q_hi > kv_lo:
            if not self.is_dynamic:
                return (f"is_causal with L_q={q_hi} > L_kv={kv_lo}: PyTorch's top-left causal mask "
                        "leaves no key for some queries")
            return (f"is_causal with L_q (up to {q_hi}) that may exceed L_kv (from {kv_lo}): give them one "
                    "dynamic dim, or bounds that keep L_q <= L_kv")
        return head_dim_problem(self.head_dim)
