"""Recognise attention written out with a logit soft-cap (Gemma 2), which SDPA cannot express.

Gemma 2 caps its attention logits as cap * tanh(logits / cap); SDPA has no
such argument, so models spell the attention out:

  scores = q @ k.transpose(-2, -1) [.float()] * scale     (or / sqrt(d))
  scores = cap * tanh(scores / cap)                        (or tanh(..) * cap)
  scores = scores.masked_fill(~mask, -inf)                 (or + additive_mask, or no mask)
  out    = softmax(scores, -1) [.to(dtype)] [dropout(p=0)] @ v

with K/V possibly expanded per query head first (kv_expansion.py folds that
afterwards). A match becomes one TAKEN_SDPA_OP call with `softcap` set, which
the kernels run (their SOFTCAP constexpr). Matching is on torch.export's ATen
graph, before decompositions, by node targets and fake-tensor shapes; every
intermediate result must feed only the next step, so nothing else in the
model reads a value the rewrite removes. A no-op dropout (p=0, or
train=False) between the softmax and the value matmul, as Hugging Face's
eager attention leaves one, is seen through. Plain written-out attention
without a cap is left as written, with a reason for the partition report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch.fx import Node

from ..sdpa import TAKEN_SDPA_OP
from .kv_expansion import find_kv_expansion

aten = torch.ops.aten
_CASTS = (aten.to.dtype, aten._to_copy.default)
_ASSERTS = (aten._assert_tensor_metadata.default,)


@dataclass(frozen=True)
class SoftcappedAttention:
    query: Node
    key: Node  # as the model passes it (maybe expanded per query head)
    value: Node
    mask: Optional[Node]  # bool (True: visible) or additive; None: no mask
    hidden_mask: Optional[Node]  # a bool mask given as "True: hidden" (masked_fill without ~)
    scale: float
    softcap: float
    output: Node  # the final matmul
    nodes: tuple[Node, ...]  # the pattern's own nodes, output first


def _call(node, *targets) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def _val(node):
    return node.meta.get("val") if isinstance(node, Node) else None


def _users(node: Node) -> list[Node]:
    """The node's users, less the dtype asserts torch.export puts after casts."""
    return [u for u in node.users if not _call(u, *_ASSERTS)]


def _scalar(x) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _skip_casts(node, chain: list[Node]):
    while _call(node, *_CASTS):
        chain.append(node)
        node = node.args[0]
    return node


def _match_cap(node, chain: list[Node]) -> Optional[tuple[Node, float]]:
    """cap * tanh(x / cap) in either operand order -> (x, cap)."""
    if not _call(node, aten.mul.Tensor, aten.mul.Scalar):
        return None
    tanh, cap = node.args
    if _scalar(tanh) is not None:
        tanh, cap = cap, tanh
    cap = _scalar(cap)
    if cap is None or cap <= 0 or not _call(tanh, aten.tanh.default):
        return None
    div = tanh.args[0]
    if not _call(div, aten.div.Tensor, aten.div.Scalar) or _scalar(div.args[1]) != cap:
        return None
    chain += [node, tanh, div]
    return div.args[0], cap


def _match_scores(node, chain: list[Node]) -> Optional[tuple[Node, Node, float]]:
    """q @ k^T, optionally cast and scaled -> (q, k, scale)."""
    scale = 1.0
    if _call(node, aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar):
        factor = _scalar(node.args[1])
        if factor is None or factor == 0:
            return None
        scale = factor if node.target in (aten.mul.Tensor, aten.mul.Scalar) else 1.0 / factor
        chain.append(node)
        node = node.args[0]
    node = _skip_casts(node, chain)
    if not _call(node, aten.matmul.default):
        return None
    q, kt = node.args
    if not _call(kt, aten.transpose.int) or sorted(d % 4 for d in kt.args[1:3]) != [2, 3]:
        return None
    chain += [node, kt]
    return q, kt.args[0], scale


def _is_noop_dropout(node) -> bool:
    """aten.dropout with p=0 or train=False: the identity (Hugging Face's eager attention keeps one)."""
    if not _call(node, aten.dropout.default):
        return False
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p")
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train")
    return _scalar(p) == 0.0 or train is False


def _probabilities_user(softmax: Node, chain: list[Node]) -> tuple[Node, Optional[Node]]:
    """(the node holding the probabilities, its one user) past casts and no-op dropouts."""
    probs, users = softmax, _users(softmax)
    while len(users) == 1 and (_call(users[0], *_CASTS) or _is_noop_dropout(users[0])):
        chain.append(users[0])
        probs, users = users[0], _users(users[0])
    return probs, users[0] if len(users) == 1 else None


def find_softcapped_attention(softmax: Node) -> Union[SoftcappedAttention, str, None]:
    """The soft-capped attention ending in this softmax node; else, when the softmax is
    written-out attention (its probabilities, past casts and no-op dropouts, multiply a
    value tensor), why it is not taken; else (no attention) None."""
    if not _call(softmax, aten.softmax.int, aten._softmax.default) or softmax.args[1] not in (-1, 3):
        return None
    chain: list[Node] = []
    probs, user = _probabilities_user(softmax, chain)
    if not _call(user, aten.matmul.default) or user.args[0] is not probs:
        return None
    output, value = user, user.args[1]
    chain = [output] + chain[::-1] + [softmax]

    mask = hidden = None
    scores = softmax.args[0]
    if _call(scores, aten.masked_fill.Scalar) and _scalar(scores.args[2]) == -math.inf:
        chain.append(scores)
        fill = scores.args[1]
        if _call(fill, aten.bitwise_not.default, aten.logical_not.default) and len(_users(fill)) == 1:
            chain.append(fill)
            mask = fill.args[0]
        else:
            hidden = fill
        scores = scores.args[0]
    elif _call(scores, aten.add.Tensor) and all(isinstance(a, Node) for a in scores.args):
        chain.append(scores)
        scores, mask = scores.args
    capped = _match_cap(scores, chain)
    if capped is None:
        return ("written-out attention without a logit soft-cap (cap * tanh(scores / cap)) is left as written: "
                "export it with scaled_dot_product_attention")
    matched = _match_scores(capped[0], chain)
    if matched is None:
        return "written-out soft-capped attention whose scores are not q @ k.transpose(-2, -1) [* scale]"
    query, key, scale = matched

    vals = [_val(n) for n in (query, key, value, output)]
    if not all(isinstance(v, torch.Tensor) and v.dim() == 4 for v in vals):
        return "written-out soft-capped attention over tensors that are not 4-D"
    if vals[3].dtype != vals[0].dtype:
        return (f"written-out soft-capped attention whose output dtype {vals[3].dtype} is not the query's "
                f"{vals[0].dtype}")
    owned = set(chain)
    for node in chain[1:]:  # every intermediate feeds only the pattern (and dtype asserts)
        outside = [u.name for u in _users(node) if u not in owned]
        if outside:
            return (f"written-out soft-capped attention: its intermediate {node.name} is also read by "
                    f"{', '.join(outside)}")
    return SoftcappedAttention(query, key, value, mask, hidden, scale, capped[1], output, tuple(chain))


def match_softcapped_attention(softmax: Node) -> Optional[SoftcappedAttention]:
    """The soft-capped attention ending in this softmax node, or None."""
    found = find_softcapped_attention(softmax)
    return found if isinstance(found, SoftcappedAttention) else None


def attention_output(softmax: Node) -> Node:
    """The value matmul of written-out attention ending in this softmax (find_softcapped_attention
    returned a reason for it): the node the report names the call after."""
    return _probabilities_user(softmax, [])[1]


def insert_taken_sdpa(match: SoftcappedAttention) -> Node:
    """A TAKEN_SDPA_OP node computing the match, placed after its output (not yet used)."""
    graph = match.output.graph
    with graph.inserting_after(match.output):
        mask = match.mask
        if match.hidden_mask is not None:
            mask = graph.call_function(aten.bitwise_not.default, (match.hidden_mask,))
            mask.meta["val"] = ~_val(match.hidden_mask)
        node = graph.call_function(TAKEN_SDPA_OP, (match.query, match.key, match.value),
                                   {"attn_mask": mask, "scale": match.scale, "softcap": match.softcap})
    node.meta.update({k: v for k, v in match.output.meta.items() if k in ("nn_module_stack", "stack_trace")})
    node.meta["val"] = _val(match.output).new_empty(_val(match.output).shape)
    # The report's name for the call (unique: the written-out output's node name).
    node.meta["torch_fn"] = (f"softcapped_attention_{match.output.name}", "cuda_gqa.sdpa")
    return node


def replace_match(match: SoftcappedAttention, node: Node) -> None:
    """Route the match's users to `node` and erase the written-out nodes, and the
    K/V expansions they read when `node` reads the unexpanded K/V."""
    match.output.replace_all_uses_with(node)
    graph = node.graph
    for n in match.nodes:
        for user in list(n.users):
            if _call(user, *_ASSERTS):
                graph.erase_node(user)
        graph.erase_node(n)
    for operand in (match.key, match.value):
        expansion = find_kv_expansion(operand)
        for n in expansion.nodes if expansion is not None else ():  # last first
            if not n.users:
                graph.erase_node(n)


def discard(node: Node) -> None:
    """Undo insert_taken_sdpa (the call stays written out)."""
    mask = node.kwargs.get("attn_mask")
    node.graph.erase_node(node)
    if _call(mask, aten.bitwise_not.default) and not mask.users:
        mask.graph.erase_node(mask)
