"""KV-cache updates the delegate takes over with their SDPA (issue 6).

A static cache is a mutable buffer [B, H_kv, S, D] that each call writes
at some positions and then attends over. After export's functionalisation
the write is an op producing the updated cache, which the graph returns as
a buffer mutation and the SDPA reads as K or V:

    k_cache (buffer placeholder) -> update(k_cache, positions, k_new) -> SDPA key
                                                                    \\-> output (BUFFER_MUTATION)

Recognised updates, all along the sequence dim 2 with 1-D integer positions:
`index_copy(cache, 2, positions, new)` and `index_put(cache, [None, None,
positions], new)` (what `index_copy_` and `cache[:, :, positions] = new`
become in the edge dialect). When SDPA's K and V are both such updates of
buffers nothing else reads, the partitioner tags the buffers and updates
with the SDPA: ExecuTorch then moves the buffers and their mutations into
the delegate (lowered_backend_module._get_new_signature), the top-level
program no longer plans or copies them, and preprocess makes them payload
states the delegate keeps in device memory.

ExecuTorch's llama export writes its [B, S, H_kv, D] caches with
`llama::update_cache(value, cache, start_pos)`, which export leaves as an
`auto_functionalized_v2` node whose getitem(., 1) is the new cache.
`llama_cache_update` recognises one (before decompositions); the
partitioner replaces the pair with TAKEN_LLAMA_UPDATE_OP (functional, the
start position as a tensor), which `cache_update` then reads like the
others: rows go to start_pos onwards along dim 1.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Optional

import torch
from torch.export import ExportedProgram
from torch.fx import Node

from .sdpa import LLAMA_UPDATE_CACHE, TAKEN_LLAMA_UPDATE_OP, SdpaCall, _aten_target, position_tensor, same_size

_INDEX_COPY = torch.ops.aten.index_copy.default
_INDEX_PUT = torch.ops.aten.index_put.default
POSITION_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class CacheUpdate:
    node: Node  # the functional update; its result is the new cache
    buffer: Node  # the mutable buffer's placeholder
    buffer_name: str  # its FQN (the state's name in the payload)
    positions: Node  # [L_new] integer positions along dim 2, or (from_start) the first row's position
    new_rows: Node  # [B, H_kv, L_new, D], or its last dims when the leading ones are 1 (index_put broadcasts);
    # from_start: [B, L_new, H_kv, D]
    from_start: bool = False  # TAKEN_LLAMA_UPDATE_OP: rows go to positions[0] + i along dim 1


def _val(node) -> Optional[torch.Tensor]:
    return node.meta.get("val") if isinstance(node, Node) else None


def _update_operands(node: Node) -> Optional[tuple[Node, Node, Node]]:
    """(cache, positions, new rows) of an index_copy/index_put along dim 2, else None."""
    if node.op != "call_function":
        return None
    target = _aten_target(node)
    if target == _INDEX_COPY:
        cache, dim, positions, new = node.args[:4]
        return (cache, positions, new) if dim in (2, -2) else None
    if target == _INDEX_PUT:
        cache, indices, new = node.args[:3]
        accumulate = node.args[3] if len(node.args) > 3 else node.kwargs.get("accumulate", False)
        if accumulate or len(indices) != 3 or indices[0] is not None or indices[1] is not None:
            return None
        return cache, indices[2], new
    return None


def _buffer_name(cache, program: ExportedProgram) -> Optional[str]:
    """The FQN of the buffer `cache` is the placeholder of, or None."""
    if not isinstance(cache, Node) or cache.op != "placeholder":
        return None
    return program.graph_signature.inputs_to_buffers.get(cache.name)


def rows_fit_cache(new_rows: Optional[torch.Tensor], cache: Optional[torch.Tensor]) -> bool:
    """New rows [B, L_new, H_kv, D] that a [B, S, H_kv, D] cache takes from a start position
    (llama::update_cache): both 4-D, one dtype, the same B, H_kv and D."""
    if new_rows is None or cache is None or new_rows.dim() != 4 or cache.dim() != 4 or new_rows.dtype != cache.dtype:
        return False
    return all(same_size(new_rows.shape[d], cache.shape[d]) for d in (0, 2, 3))


def _start_update(node: Node, program: ExportedProgram) -> Optional[CacheUpdate]:
    """A TAKEN_LLAMA_UPDATE_OP the delegate can own, else None."""
    cache, new, start = node.args[:3]
    name = _buffer_name(cache, program)
    if name is None or program.graph_signature.buffers_to_mutate.get(node.name) != name:
        return None
    if position_tensor(start) is None or not rows_fit_cache(_val(new), _val(cache)):
        return None
    if list(cache.users) != [node]:
        return None
    return CacheUpdate(node=node, buffer=cache, buffer_name=name, positions=start, new_rows=new, from_start=True)


def cache_update(node: Node, program: ExportedProgram) -> Optional[CacheUpdate]:
    """The cache update `node` is, when the delegate can own that cache, else None."""
    if node.op == "call_function" and _aten_target(node) == TAKEN_LLAMA_UPDATE_OP:
        return _start_update(node, program)
    operands = _update_operands(node)
    if operands is None:
        return None
    cache, positions, new = operands
    signature = program.graph_signature
    name = _buffer_name(cache, program)
    # The update's result must be what the program writes back to that buffer.
    if name is None or signature.buffers_to_mutate.get(node.name) != name:
        return None
    cache_val, positions_val, new_val = _val(cache), _val(positions), _val(new)
    if cache_val is None or positions_val is None or new_val is None:
        return None
    if cache_val.dim() != 4 or not 1 <= new_val.dim() <= 4 or positions_val.dim() != 1:
        return None
    if positions_val.dtype not in POSITION_DTYPES or new_val.dtype != cache_val.dtype:
        return None
    b, h, _, d = cache_val.shape
    # `cache[:, :, positions] = new` traces new without its leading size-1 dims.
    aligned = (1,) * (4 - new_val.dim()) + tuple(new_val.shape)
    if aligned != (b, h, positions_val.shape[0], d) or new_val.dim() < 2:
        return None
    # The delegate owns the buffer: nothing but this update may read it.
    if list(cache.users) != [node]:
        return None
    return CacheUpdate(node=node, buffer=cache, buffer_name=name, positions=positions, new_rows=new)


def sdpa_cache_updates(call: SdpaCall, program: ExportedProgram) -> Optional[tuple[CacheUpdate, CacheUpdate]]:
    """The K and V cache updates feeding `call`, when the delegate can take both, else None."""
    if call.is_causal and not call.from_start:
        return None  # a cache is attended with a mask; kv_len bounds only what no query sees
    updates = [cache_update(n, program) if isinstance(n, Node) else None for n in (call.key, call.value)]
    if None in updates:
        return None
    k, v = updates
    if k.node is v.node or k.positions is not v.positions:
        return None
    if k.from_start != call.from_start or (call.from_start and k.positions is not call.start_tensor):
        return None  # llama::custom_sdpa attends what llama::update_cache wrote, from the same start
    if call.from_start and not same_size(_val(k.new_rows).shape[1], _val(call.query).shape[1]):
        return None  # as many new rows as queries
    if _val(k.new_rows).shape != _val(v.new_rows).shape:
        return None  # one layout for both (the payload binds them alike)
    for update in (k, v):
        # Read only by this SDPA (the output node writes it back to the buffer).
        if any(user is not call.node and user.op != "output" for user in update.node.users):
            return None
    return k, v


@dataclass(frozen=True)
class LlamaCacheUpdate:
    """One `llama::update_cache(value, cache, start_pos)` as export leaves it (before decompositions):
    `update = auto_functionalized_v2(llama.update_cache, value=, start_pos=, _all_bases=[buffer])`,
    `result = getitem(update, 1)` the new cache, written back to the buffer."""

    update: Node
    result: Node
    buffer: Node
    buffer_name: str
    value: Node
    start_pos: object  # the SymInt node (or int) it was given


_AUTO_FUNCTIONALIZED_V2 = getattr(torch.ops.higher_order, "auto_functionalized_v2", None)
# auto_functionalized_v2's kwargs when the mutated argument is its base itself (not a view of it).
_WHOLE_BASE_KWARGS = {"value", "start_pos", "_cache_base_index", "_all_bases"}


def llama_cache_update(node, program: ExportedProgram) -> Optional[LlamaCacheUpdate]:
    """The llama::update_cache whose new cache `node` is, when the delegate can own that
    cache (a whole buffer only this update reads, its result written back to the buffer),
    else None. Who reads the result is the caller's to check."""
    if not isinstance(node, Node) or node.op != "call_function" or node.target is not operator.getitem:
        return None
    update, index = node.args
    if (index != 1 or not isinstance(update, Node) or update.op != "call_function" or _AUTO_FUNCTIONALIZED_V2 is None
            or update.target is not _AUTO_FUNCTIONALIZED_V2):
        return None
    op = update.args[0] if update.args else None
    if getattr(getattr(op, "_schema", None), "name", None) != LLAMA_UPDATE_CACHE:
        return None
    if set(update.kwargs) != _WHOLE_BASE_KWARGS or update.kwargs["_cache_base_index"] != 0:
        return None
    bases = update.kwargs["_all_bases"]
    if len(bases) != 1 or list(update.users) != [node]:
        return None
    (buffer,) = bases
    name = _buffer_name(buffer, program)
    if name is None or program.graph_signature.buffers_to_mutate.get(node.name) != name:
        return None
    if list(buffer.users) != [update]:
        return None
    return LlamaCacheUpdate(update=update, result=node, buffer=buffer, buffer_name=name, value=update.kwargs["value"],
                            start_pos=update.kwargs["start_pos"])
