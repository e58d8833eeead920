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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.export import ExportedProgram
from torch.fx import Node

from .sdpa import SdpaCall, _aten_target

_INDEX_COPY = torch.ops.aten.index_copy.default
_INDEX_PUT = torch.ops.aten.index_put.default
POSITION_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class CacheUpdate:
    node: Node  # the functional update; its result is the new cache
    buffer: Node  # the mutable buffer's placeholder
    buffer_name: str  # its FQN (the state's name in the payload)
    positions: Node  # [L_new] integer positions along dim 2
    new_rows: Node  # [B, H_kv, L_new, D], or its last dims when the leading ones are 1 (index_put broadcasts)


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


def cache_update(node: Node, program: ExportedProgram) -> Optional[CacheUpdate]:
    """The cache update `node` is, when the delegate can own that cache, else None."""
    operands = _update_operands(node)
    if operands is None:
        return None
    cache, positions, new = operands
    signature = program.graph_signature
    if not isinstance(cache, Node) or cache.op != "placeholder":
        return None
    name = signature.inputs_to_buffers.get(cache.name)
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
    if call.is_causal:
        return None  # a cache is attended with a mask; kv_len bounds only what no query sees
    updates = [cache_update(n, program) if isinstance(n, Node) else None for n in (call.key, call.value)]
    if None in updates:
        return None
    k, v = updates
    if k.node is v.node or k.positions is not v.positions:
        return None
    if _val(k.new_rows).shape != _val(v.new_rows).shape:
        return None  # one layout for both (the payload binds them alike)
    for update in (k, v):
        # Read only by this SDPA (the output node writes it back to the buffer).
        if any(user is not call.node and user.op != "output" for user in update.node.users):
            return None
    return k, v
