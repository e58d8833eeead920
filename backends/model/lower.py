"""preprocess for a whole-step delegate: its graph -> op plan -> fusions -> payload and named data."""

from __future__ import annotations

from executorch.exir._serialize._named_data_store import NamedDataStore
from executorch.exir.backend.backend_details import PreprocessResult
from torch.export import ExportedProgram

from ..named_images import move_images_to_named_data
from ..serialization import deserialize_payload, serialize_payload
from ..sdpa import _aten_target
from .emit import emit_payload
from .fuse import fuse
from .recognize import recognise

import torch

# Nodes only a whole-step delegate holds (an attention-only one has its SDPA and cache writes).
MODEL_OPS = (torch.ops.aten.linear.default, torch.ops.aten.embedding.default)


def is_whole_model(program: ExportedProgram) -> bool:
    return any(n.op == "call_function" and _aten_target(n) in MODEL_OPS for n in program.graph.nodes)


def preprocess_whole_model(program: ExportedProgram, options) -> PreprocessResult:
    plan = fuse(recognise(program))
    payload, constants = emit_payload(plan, archs=options.archs, ptx=options.ptx)
    store = NamedDataStore()
    with_keys = deserialize_payload(payload)
    move_images_to_named_data(with_keys, store)
    constants.add_to_named_data(store, external_tag=_external_tag(program))
    return PreprocessResult(processed_bytes=serialize_payload(with_keys),
                            data_store_output=store.get_named_data_store_output())


def _external_tag(program: ExportedProgram):
    """The .ptd the program's parameters go to (export_llm's external_weights marks their
    placeholders as ExecuTorch's delegates read it), or None: in the .pte."""
    tags = {n.meta.get("custom", {}).get("delegate_constant_tag") for n in program.graph.nodes
            if n.op == "placeholder" and n.name in program.graph_signature.inputs_to_parameters}
    tags.discard(None)
    if len(tags) > 1:
        raise ValueError(f"the program's parameters go to several external files: {sorted(tags)}")
    return tags.pop() if tags else None
