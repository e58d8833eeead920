"""ExecuTorch's llama attention: `llama::custom_sdpa` and its `llama::update_cache` cache writes.

ExecuTorch's LLM export (executorch.examples.models.llama with
use_sdpa_with_kv_cache, executorch.extension.llm.custom_ops) writes each
layer's attention on [B, S, H, D] tensors and static caches [B, S_max, H_kv, D]:

    start = input_pos[0].item()                  # select + item: an unbacked SymInt
    llama.update_cache(k, k_cache, start)        # rows k[:, i] -> k_cache[:, start + i]
    llama.update_cache(v, v_cache, start)
    y = llama.custom_sdpa(q, k_cache, v_cache, start, None, 0, True)
        # keys [0, start + S) of the caches; causal: query i sees keys up to start + i

Export leaves each update_cache as an auto_functionalized_v2 node and a
getitem (the new cache, written back to the buffer), and often a pair of
transposes that cancel in front of custom_sdpa's operands.

Before decompositions the partitioner turns each custom_sdpa it takes into
TAKEN_LLAMA_SDPA_OP (backends/sdpa.py): the start position becomes the
one-element integer tensor it was read from (`input_pos[0]`), which the
delegate takes as an input and reads on the device; no SymInt crosses the
delegate boundary. When both caches are written by update_cache of buffers
nothing else reads, from the same start, each update becomes
TAKEN_LLAMA_UPDATE_OP (functional: it returns the new cache), which the
partitioner takes with the attention like any owned cache update
(kv_cache_update.py): the delegate keeps the caches in device memory and
writes the new rows there itself. Otherwise the attention alone is taken
and reads the caches the program's own update_cache wrote.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import TensorArgument
from torch.fx import Node

from ..kv_cache_update import LlamaCacheUpdate, llama_cache_update, rows_fit_cache
from ..sdpa import TAKEN_LLAMA_SDPA_OP, TAKEN_LLAMA_UPDATE_OP, SdpaCall, same_size, start_position_source

aten = torch.ops.aten
_TRANSPOSE = aten.transpose.int


def _transposed_dims(node) -> Optional[frozenset]:
    """The two dims an aten.transpose node swaps (non-negative), else None."""
    if not isinstance(node, Node) or node.op != "call_function" or node.target != _TRANSPOSE:
        return None
    rank = node.meta["val"].dim()
    return frozenset(d % rank for d in node.args[1:3])


def strip_cancelling_transposes(node: Node) -> Node:
    """`x` for transpose(transpose(x, a, b), a, b) (any depth of such pairs), else `node`:
    the same view of the same tensor, without the two copies the edge dialect would make."""
    while True:
        outer = _transposed_dims(node)
        inner = _transposed_dims(node.args[0]) if outer is not None else None
        if outer is None or inner != outer:
            return node
        node = node.args[0].args[0]


def _only_feeds(node: Node, reader: Node) -> bool:
    """Every use of `node` is the program's output, `reader`, or a transpose only feeding `reader`."""
    for user in node.users:
        if user.op == "output" or user is reader:
            continue
        if _transposed_dims(user) is None or any(u.op == "output" for u in user.users) or not _only_feeds(user, reader):
            return False
    return True


_POSITION_VIEWS = (aten.select.int, aten.slice.Tensor, aten.view.default, aten.reshape.default)


def same_position(a: Node, b: Node) -> bool:
    """a and b hold the same start position: one node, or the same view of one tensor
    (the export reads `input_pos[0]` again for each op)."""
    if a is b:
        return True
    return (a.op == b.op == "call_function" and a.target == b.target and a.target in _POSITION_VIEWS
            and a.args == b.args and a.kwargs == b.kwargs)


def _ownable_updates(call: SdpaCall, key: Node, value: Node, start: Node,
                     program: ExportedProgram) -> Optional[tuple[LlamaCacheUpdate, LlamaCacheUpdate]]:
    """The K and V llama::update_cache writes feeding `call`, when the delegate can own both caches."""
    k, v = llama_cache_update(key, program), llama_cache_update(value, program)
    if k is None or v is None or k.update is v.update or k.buffer is v.buffer:
        return None
    q_len = call.query.meta["val"].shape[1]
    for update in (k, v):
        source = start_position_source(update.start_pos)
        if source is None or not same_position(source, start):
            return None  # written from another position than the attention reads from
        if not _only_feeds(update.result, call.node):
            return None  # the new cache is read elsewhere: the program keeps it
        new = update.value.meta.get("val")
        if not rows_fit_cache(new, update.buffer.meta.get("val")) or not same_size(new.shape[1], q_len):
            return None
    return k, v


def _replace_update(update: LlamaCacheUpdate, start: Node, program: ExportedProgram) -> Node:
    """TAKEN_LLAMA_UPDATE_OP in place of the update's auto_functionalized_v2 + getitem; the
    program's buffer-mutation output is the new node."""
    graph = update.result.graph
    with graph.inserting_before(update.result):
        taken = graph.call_function(TAKEN_LLAMA_UPDATE_OP,
                                    (update.buffer, strip_cancelling_transposes(update.value), start))
    taken.meta.update(update.result.meta)
    old_name = update.result.name
    update.result.replace_all_uses_with(taken)
    for spec in program.graph_signature.output_specs:
        if isinstance(spec.arg, TensorArgument) and spec.arg.name == old_name:
            spec.arg = TensorArgument(name=taken.name)
    graph.erase_node(update.result)
    graph.erase_node(update.update)
    return taken


def _erase_dead_transposes(nodes) -> None:
    for node in nodes:
        while _transposed_dims(node) is not None and not node.users:
            source = node.args[0]
            node.graph.erase_node(node)
            node = source


def take_llama_sdpa(node: Node, program: ExportedProgram, own_kv_cache: bool) -> tuple[Node, Optional[str]]:
    """Replace the llama::custom_sdpa `node` (which the kernels run: SdpaCall.unsupported_reason
    is None) with TAKEN_LLAMA_SDPA_OP, its cache updates too when the delegate can own them.

    Returns the new node, and the owned buffers' names for the report (None: not owned).
    """
    call = SdpaCall.from_node(node)
    graph = node.graph
    q, k, v = (strip_cancelling_transposes(n) for n in (call.query, call.key, call.value))
    start = call.start_tensor
    owned = None
    updates = _ownable_updates(call, k, v, start, program) if own_kv_cache else None
    if updates is not None:
        # The updates' own reading of the start position comes before both updates
        # and the attention: the one delegate input for the cache write and the attention.
        start = start_position_source(updates[0].start_pos)
        k, v = (_replace_update(u, start, program) for u in updates)
        owned = ", ".join(u.buffer_name for u in updates)
    with graph.inserting_before(node):
        taken = graph.call_function(TAKEN_LLAMA_SDPA_OP, (q, k, v, start),
                                    {"is_causal": call.is_causal, "scale": call.scale})
    taken.meta.update(node.meta)
    # The report names a call by its torch_fn (stable across dialects), else the node: keep the original's.
    taken.meta.setdefault("torch_fn", (node.name, "llama.custom_sdpa"))
    node.replace_all_uses_with(taken)
    graph.erase_node(node)
    _erase_dead_transposes([call.query, call.key, call.value] +
                           ([u.value for u in updates] if updates is not None else []))
    return taken, owned
