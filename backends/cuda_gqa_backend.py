"""CudaGqaBackend.preprocess: one delegated SDPA node -> a payload with cubins.

Runs on the export machine, without a GPU: compiles the attention kernel for
every target arch with Triton, binds its entry parameters to the delegate's
tensors, and writes the flatbuffer payload the runtime shims read.
"""

from __future__ import annotations

import logging
import time
from typing import final

import numpy as np
import torch
from executorch.exir.backend.backend_details import BackendDetails, PreprocessResult
from executorch.exir.backend.compile_spec_schema import CompileSpec
from torch.export import ExportedProgram

from .aot.attention import compile_attention
from .attention_plan import BLOCK_M, BLOCK_N, NUM_STAGES, NUM_WARPS, AttentionArgs, bind_params, launch_grid
from .compile_specs import parse_compile_specs
from .sdpa import SdpaCall, is_sdpa
from .serialization import payload_generated as fb
from .serialization import serialize_payload

logger = logging.getLogger(__name__)

DTYPE_TO_PAYLOAD = {
    torch.float32: fb.DType.Float32,
    torch.float16: fb.DType.Float16,
    torch.bfloat16: fb.DType.BFloat16,
}


def _tensor_spec(value: torch.Tensor) -> fb.TensorSpecT:
    spec = fb.TensorSpecT()
    spec.dtype = DTYPE_TO_PAYLOAD[value.dtype]
    spec.sizes = [int(s) for s in value.shape]
    return spec


@final
class CudaGqaBackend(BackendDetails):
    @staticmethod
    def preprocess(edge_program: ExportedProgram, compile_specs: list[CompileSpec]) -> PreprocessResult:
        options = parse_compile_specs(compile_specs)
        graph = edge_program.graph_module.graph
        sdpa_nodes = [n for n in graph.nodes if is_sdpa(n)]
        if len(sdpa_nodes) != 1:
            raise RuntimeError(f"CudaGqaBackend expects one SDPA node per delegate, got {len(sdpa_nodes)}")
        call = SdpaCall.from_node(sdpa_nodes[0])
        reason = call.unsupported_reason()
        if reason is not None:
            raise RuntimeError(f"CudaGqaBackend cannot run {call.node.name}: {reason}")

        user_inputs = set(edge_program.graph_signature.user_inputs)
        inputs = [n for n in graph.nodes if n.op == "placeholder" and n.name in user_inputs]
        (output_node,) = [n for n in graph.nodes if n.op == "output"]
        outputs = list(output_node.args[0])
        if outputs != [call.node]:
            raise RuntimeError(f"CudaGqaBackend delegate must output exactly the SDPA result, got {outputs}")
        for operand in (call.query, call.key, call.value):
            if operand not in inputs:
                raise RuntimeError(f"SDPA operand {operand.name} is not a delegate input")
        args = AttentionArgs(
            query=inputs.index(call.query),
            key=inputs.index(call.key),
            value=inputs.index(call.value),
            out=len(inputs),
        )

        kernel = fb.KernelT()
        kernel.cubins = []
        for arch in options.archs:
            start = time.perf_counter()
            compiled = compile_attention(
                dtype=call.dtype,
                head_dim=call.head_dim,
                num_heads_q=call.num_heads_q,
                group_size=call.num_heads_q // call.num_heads_kv,
                is_causal=call.is_causal,
                arch=arch,
                block_m=BLOCK_M,
                block_n=BLOCK_N,
                num_warps=NUM_WARPS,
                num_stages=NUM_STAGES,
            )
            logger.info("%s: compiled %s for sm_%d in %.1f s", call.node.name, compiled.name, arch,
                        time.perf_counter() - start)
            if not kernel.cubins:
                first = compiled
                kernel.name = compiled.name
                kernel.numWarps = compiled.num_warps
                kernel.params = bind_params(compiled.params, args, call.softmax_scale)
                kernel.grid = launch_grid(args, BLOCK_M)
                kernel.globalScratchBytes = compiled.global_scratch_bytes
                kernel.globalScratchAlign = compiled.global_scratch_align
                kernel.profileScratchBytes = compiled.profile_scratch_bytes
                kernel.profileScratchAlign = compiled.profile_scratch_align
                kernel.sharedMemBytes = 0
                if options.ptx:
                    kernel.ptx = np.frombuffer(compiled.ptx.encode(), dtype=np.uint8)
                    kernel.ptxArch = arch
            elif (compiled.params, compiled.name) != (first.params, first.name):
                raise RuntimeError(f"sm_{arch} compiled a different entry point than sm_{first.arch}")
            # One launch config for all archs: take the largest shared memory.
            kernel.sharedMemBytes = max(kernel.sharedMemBytes, compiled.shared_mem_bytes)
            cubin = fb.CubinT()
            cubin.arch = arch
            cubin.image = np.frombuffer(compiled.cubin, dtype=np.uint8)
            kernel.cubins.append(cubin)

        payload = fb.PayloadT()
        payload.inputs = [_tensor_spec(n.meta["val"]) for n in inputs]
        payload.outputs = [_tensor_spec(call.node.meta["val"])]
        payload.kernels = [kernel]
        return PreprocessResult(processed_bytes=serialize_payload(payload))
