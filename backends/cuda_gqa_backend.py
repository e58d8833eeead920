"""CudaGqaBackend.preprocess: one delegated SDPA node (or a whole decoder step) -> a payload with cubins.

Runs on the export machine, without a GPU: reads the SDPA node the
partitioner delegated, maps its operands to the delegate's arguments, and
hands the problem to attention_plan, which compiles and describes the launch.
The payload's cubins and PTX go to the program's named data, stored once
however many delegates share them (named_images.py).
"""

from __future__ import annotations

from typing import final

from executorch.exir._serialize._named_data_store import NamedDataStore
from executorch.exir.backend.backend_details import BackendDetails, PreprocessResult
from executorch.exir.backend.compile_spec_schema import CompileSpec
from torch.export import ExportedProgram

from .attention_plan import AttentionArgs, build_attention_payload
from .compile_specs import parse_compile_specs
from .kv_cache_plan import KvCacheArgs, StartPosition
from .kv_cache_update import sdpa_cache_updates
from .model.lower import is_whole_model, preprocess_whole_model
from .named_images import move_images_to_named_data
from .sdpa import SdpaCall, is_attention, is_contiguous_clone
from .serialization import deserialize_payload, serialize_payload


@final
class CudaGqaBackend(BackendDetails):
    @staticmethod
    def preprocess(edge_program: ExportedProgram, compile_specs: list[CompileSpec]) -> PreprocessResult:
        options = parse_compile_specs(compile_specs)
        if is_whole_model(edge_program):  # CudaGqaModelPartitioner's delegate: backends/model
            return preprocess_whole_model(edge_program, options)
        graph = edge_program.graph_module.graph
        sdpa_nodes = [n for n in graph.nodes if is_attention(n)]
        if len(sdpa_nodes) != 1:
            raise RuntimeError(f"CudaGqaBackend expects one SDPA node per delegate, got {len(sdpa_nodes)}")
        call = SdpaCall.from_node(sdpa_nodes[0])
        reason = call.unsupported_reason(include_mha=True)  # the partitioner applied the user's choice
        if reason is not None:
            raise RuntimeError(f"CudaGqaBackend cannot run {call.node.name}: {reason}")

        user_inputs = set(edge_program.graph_signature.user_inputs)
        inputs = [n for n in graph.nodes if n.op == "placeholder" and n.name in user_inputs]
        (output_node,) = [n for n in graph.nodes if n.op == "output"]
        # With the KV cache taken in, its updates are the delegate's buffer
        # mutations (outputs ExecuTorch never hands the delegate) before the result.
        updates = sdpa_cache_updates(call, edge_program)
        mutations = [] if updates is None else [u.node for u in updates]
        *written, result = output_node.args[0]
        if sorted(n.name for n in written) != sorted(n.name for n in mutations):
            raise RuntimeError(f"CudaGqaBackend delegate outputs {output_node.args[0]}: expected the KV cache "
                               "updates it owns, then the SDPA result")
        if not (result is call.node or (is_contiguous_clone(result) and result.args[0] is call.node)):
            raise RuntimeError(f"CudaGqaBackend delegate must output exactly the SDPA result, got {output_node.args[0]}")
        if updates is not None:
            k_update, v_update = updates
            operands = [call.query, k_update.new_rows, v_update.new_rows, k_update.positions]
        else:
            operands = [call.query, call.key, call.value]
        if call.from_start and updates is None:  # (with the caches taken, it is the updates' position)
            operands.append(call.start_tensor)
        operands += [call.attn_mask] if call.attn_mask is not None else []
        for operand in operands:
            if operand not in inputs:
                raise RuntimeError(f"SDPA operand {operand.name} is not a delegate input")

        (batch, num_heads_q, _, head_dim), (_, num_heads_kv, _, _), _ = call.shapes
        # Static lengths are (n, n); dynamic ones their export bounds: one payload serves the range.
        l_q, l_kv = call.lengths
        mask = call.mask
        start = None
        if call.from_start:  # llama::custom_sdpa: its start position is a delegate input
            start_val = call.start_tensor.meta["val"]
            start = StartPosition(arg=inputs.index(call.start_tensor), dtype=start_val.dtype,
                                  sizes=tuple(start_val.shape))
        cache = None
        if updates is not None:
            cache = KvCacheArgs(k_new=inputs.index(k_update.new_rows), v_new=inputs.index(v_update.new_rows),
                                positions=None if k_update.from_start else inputs.index(k_update.positions),
                                k_state=k_update.buffer_name, v_state=v_update.buffer_name, max_seq_len=l_kv[1],
                                position_dtype=k_update.positions.meta["val"].dtype,
                                new_rows_rank=k_update.new_rows.meta["val"].dim())
        payload = build_attention_payload(
            dtype=call.dtype, batch=batch, num_heads_q=num_heads_q, num_heads_kv=num_heads_kv, head_dim=head_dim,
            l_q=l_q, l_kv=l_kv, is_causal=call.is_causal, scale=call.softmax_scale, softcap=call.softcap,
            attended_keys=call.attended_keys,
            keys_follow_query=call.keys_follow_query, kv_follows_query=call.kv_follows_query,
            mask_shape=call.mask_shape, mask_dtype=None if mask is None else mask.dtype,
            archs=options.archs,
            ptx=options.ptx,
            generic=options.generic_plans,
            args=AttentionArgs(query=inputs.index(call.query),
                               key=inputs.index(call.key) if cache is None else cache.k_new,
                               value=inputs.index(call.value) if cache is None else cache.v_new, out=len(inputs),
                               mask=None if mask is None else inputs.index(call.attn_mask), layout=call.layout),
            cache=cache,
            start=start,
        )
        images = NamedDataStore()
        payload_with_keys = deserialize_payload(payload)
        move_images_to_named_data(payload_with_keys, images)
        return PreprocessResult(processed_bytes=serialize_payload(payload_with_keys),
                                data_store_output=images.get_named_data_store_output())
