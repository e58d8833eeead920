"""What one scaled_dot_product_attention node asks for, and whether we can run it.

The partitioner and the AOT stage both read SDPA nodes through `SdpaCall`,
so they agree on what a node means and on what the kernels support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from executorch.exir.dialects.edge._ops import EdgeOpOverload
from torch.fx import Node

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


@dataclass(frozen=True)
class SdpaCall:
    """The arguments of one SDPA node, with shapes taken from its fake tensors."""

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

    @classmethod
    def from_node(cls, node: Node) -> "SdpaCall":
        schema = _aten_target(node)._schema.arguments
        bound = {a.name: a.default_value for a in schema if a.has_default_value()}
        bound.update(zip((a.name for a in schema), node.args))
        bound.update(node.kwargs)
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
    def dtype(self) -> torch.dtype:
        return self._val(self.query).dtype

    @property
    def shapes(self) -> tuple[tuple, tuple, tuple]:
        return tuple(tuple(self._val(n).shape) for n in (self.query, self.key, self.value))

    @property
    def num_heads_q(self) -> int:
        return int(self._val(self.query).shape[1])

    @property
    def num_heads_kv(self) -> int:
        return int(self._val(self.key).shape[1])

    @property
    def head_dim(self) -> int:
        return int(self._val(self.query).shape[3])

    @property
    def softmax_scale(self) -> float:
        return float(self.scale) if self.scale is not None else 1.0 / math.sqrt(self.head_dim)

    @property
    def lengths(self) -> tuple[LengthRange, LengthRange]:
        """(L_q range, L_kv range)."""
        return length_range(self._val(self.query).shape[2]), length_range(self._val(self.key).shape[2])

    @property
    def is_dynamic(self) -> bool:
        return any(lo != hi for lo, hi in self.lengths)

    @property
    def kv_follows_query(self) -> bool:
        """L_kv is L_q's symbol (self-attention over a dynamic length)."""
        q, k = self._val(self.query).shape[2], self._val(self.key).shape[2]
        return not isinstance(q, int) and same_size(q, k)

    @property
    def keys_follow_query(self) -> bool:
        """A dynamic causal call whose kernels must attend only the first L_q keys
        (the dynamic form of attended_keys)."""
        return self.is_causal and self.is_dynamic and not self.kv_follows_query

    @property
    def attended_keys(self) -> Optional[int]:
        """How many leading keys the kernels must attend, when not all of L_kv.

        PyTorch's is_causal is top-left aligned (query i sees keys j <= i)
        while the kernels' causal mask is bottom-right aligned. For L_q < L_kv
        the two agree once the key range is cut to its first L_q keys; for
        L_q == L_kv they are the same mask. Static calls only (see keys_follow_query).
        """
        if self.is_dynamic:
            return None
        (_, _, l_q, _), (_, _, l_kv, _), _ = self.shapes
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
        if self.is_dynamic:
            (q_lo, q_hi), (kv_lo, kv_hi) = self.lengths
            parts.append(f"dynamic L_q {q_lo}..{q_hi}, " +
                         ("L_kv = L_q" if self.kv_follows_query else f"L_kv {kv_lo}..{kv_hi}"))
        if self.is_causal:
            parts.append("causal")
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
        full = (q.shape[0], q.shape[1], q.shape[2], self._val(self.key).shape[2])
        if all(isinstance(s, int) for s in (*mask.shape, *full)):
            return mask_shape_problem(mask.shape, full)
        # Dynamic lengths: a mask dim is 1 (broadcast) or the very size it meets.
        shape = tuple(mask.shape)
        if not 1 <= len(shape) <= 4 or not all(m == 1 if isinstance(m, int) else same_size(m, n)
                                               for m, n in zip(shape[::-1], full[::-1])):
            return f"attn_mask shape {shape} does not broadcast to [B, H_q, L_q, L_kv] = {list(full)}"
        return None

    @property
    def mask_shape(self) -> Optional[tuple[int, ...]]:
        """The attn_mask's shape, -1 where it has a dynamic length (L_q or L_kv), or None."""
        mask = self.mask
        return None if mask is None else tuple(s if isinstance(s, int) else -1 for s in mask.shape)

    def unsupported_reason(self, include_mha: bool = False) -> Optional[str]:
        """None when the kernels run this node, else why not (for the partition report).

        include_mha: also take plain multi-head attention (H_q == H_kv).
        """
        vals = [self._val(n) for n in (self.query, self.key, self.value)]
        if any(v.dim() != 4 for v in vals):
            return "query/key/value are not 4-D [B, H, L, D]"
        if any(not isinstance(v.shape[d], int) for v in vals for d in (0, 1, 3)):
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
        mask_problem = self._mask_problem()
        if mask_problem is not None:
            return mask_problem
        if self.dropout_p != 0.0:
            return f"dropout_p={self.dropout_p}: only 0 is supported"
        if q.dtype not in SUPPORTED_DTYPES:
            return f"dtype {q.dtype} is not one of {[str(d) for d in SUPPORTED_DTYPES]}"
        if k.dtype != q.dtype or v.dtype != q.dtype:
            return f"mixed dtypes q={q.dtype} k={k.dtype} v={v.dtype}"
        if (not all(same_size(a, b) for a, b in zip(k.shape, v.shape)) or q.shape[0] != k.shape[0]
                or q.shape[3] != k.shape[3]):
            return f"inconsistent shapes q={tuple(q.shape)} k={tuple(k.shape)} v={tuple(v.shape)}"
        (q_lo, q_hi), (kv_lo, kv_hi) = self.lengths
        if self.is_causal and not self.kv_follows_query and q_hi > kv_lo:
            if not self.is_dynamic:
                return (f"is_causal with L_q={q_hi} > L_kv={kv_lo}: PyTorch's top-left causal mask "
                        "leaves no key for some queries")
            return (f"is_causal with L_q (up to {q_hi}) that may exceed L_kv (from {kv_lo}): give them one "
                    "dynamic dim, or bounds that keep L_q <= L_kv")
        return head_dim_problem(self.head_dim)
