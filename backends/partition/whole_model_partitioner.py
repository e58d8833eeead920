"""CudaGqaModelPartitioner: the whole decoder step in one CudaGqaBackend delegate.

Pick it to run everything of an exported LLM step on the GPU (embedding,
norms, projections, RoPE, KV-cache writes, attention, MLP, LM head);
CudaGqaPartitioner delegates the attention calls alone.

Before decompositions it reads a trial edge-dialect copy of the program as
an op plan (backends/model/recognize.py). When every node is one the plan
holds, the linears and SDPA are kept whole and every node, with its
weights and caches, goes to one delegate. When one is not, the reason is
kept (`model_report`) and it lowers the attention calls only, as
CudaGqaPartitioner does: an export never fails for a node the kernels lack.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from executorch.exir.backend.compile_spec_schema import CompileSpec
from executorch.exir.backend.partitioner import Partitioner, PartitionResult
from executorch.exir.backend.utils import tag_constant_data, tag_mutated_buffer
from torch.export import ExportedProgram

from ..model.fuse import fuse
from ..model.ops import NotRecognised
from ..model.recognize import recognise
from .cuda_gqa_partitioner import AttentionDecision, CudaGqaPartitioner, _call_site

logger = logging.getLogger(__name__)

KEPT_WHOLE = (torch.ops.aten.linear.default, torch.ops.aten.scaled_dot_product_attention.default)
MODEL_TAG = "cuda_gqa_model"


def trial_plan(program: ExportedProgram):
    """The fused op plan of `program` (aten dialect), read from an edge-dialect copy; or NotRecognised."""
    from executorch.exir import EdgeCompileConfig, to_edge

    config = EdgeCompileConfig(_check_ir_validity=False, preserve_ops=list(KEPT_WHOLE))
    pending = _pending_unbacked_symbols(program)
    before = list(pending) if pending is not None else None
    try:
        return fuse(recognise(to_edge(program, compile_config=config).exported_program()))
    finally:
        # The trial's trace leaves the unbacked symbols it made (ExecuTorch llama's input_pos.item())
        # pending in the program's shape env, where the real lowering's trace would find them.
        if pending is not None:
            pending[:] = before


def _pending_unbacked_symbols(program: ExportedProgram):
    """The list of fresh unbacked symbols of the program's shape env (None: it has none)."""
    from torch._guards import detect_fake_mode

    vals = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"]
    mode = detect_fake_mode([v for v in vals if isinstance(v, torch.Tensor)])
    env = getattr(mode, "shape_env", None)
    return getattr(env, "pending_fresh_unbacked_symbols", None)


class CudaGqaModelPartitioner(Partitioner):
    def __init__(self, compile_specs: Optional[Sequence[CompileSpec]] = None, **options):
        """As CudaGqaPartitioner (its options apply to the attention-only fallback)."""
        super().__init__()
        self.attention = CudaGqaPartitioner(compile_specs, **options)
        self.delegation_spec = self.attention.delegation_spec
        self.whole: Optional[bool] = None
        self.model_report = ""  # what the whole-model lowering took, or why it did not
        self.plan = None  # the fused op plan of the step taken whole (its constants as preprocess names them)

    @property
    def report(self) -> list[AttentionDecision]:
        """The attention calls' decisions (all delegated when the whole step is)."""
        return self.attention.report

    def transform_for_pre_decomposition(self, exported_program: ExportedProgram) -> ExportedProgram:
        # ExecuTorch's llama::custom_sdpa / update_cache become the taken ops first (llama_attention.py):
        # the start position as a tensor, the caches' updates functional, as either lowering reads them.
        self.attention._decisions = {}
        self.attention._take_llama_attention(exported_program)
        llama_decisions = dict(self.attention._decisions)
        try:
            plan = trial_plan(exported_program)
        except NotRecognised as refusal:
            self.whole, self.model_report = False, f"attention only: {refusal}"
            logger.info("CudaGqaModelPartitioner: %s", self.model_report)
            program = self.attention.transform_for_pre_decomposition(exported_program)
            self.attention._decisions = {**llama_decisions, **self.attention._decisions}
            return program
        self.whole, self.plan = True, plan
        self.model_report = (f"whole step: {len(plan.ops)} ops ({', '.join(sorted(set(plan.kinds())))}), "
                             f"{len(plan.constants)} constants, {len(plan.states)} states")
        return exported_program

    def ops_to_not_decompose(self, ep: ExportedProgram):
        return (list(KEPT_WHOLE), None) if self.whole else ([], None)

    def partition(self, exported_program: ExportedProgram) -> PartitionResult:
        if not self.whole:
            return self.attention.partition(exported_program)
        graph = exported_program.graph_module.graph
        for node in graph.nodes:
            if node.op == "call_function":
                node.meta["delegation_tag"] = MODEL_TAG
        tag_constant_data(exported_program)
        tag_mutated_buffer(exported_program)
        self._report_attention(exported_program)
        return PartitionResult(tagged_exported_program=exported_program,
                               partition_tags={MODEL_TAG: self.delegation_spec})

    def _report_attention(self, program: ExportedProgram) -> None:
        from ..sdpa import SdpaCall, is_attention

        buffers = program.graph_signature.inputs_to_buffers

        def cache(node) -> str:  # the buffer an index_put / index_copy of a cache writes
            source = node.args[0] if node.op == "call_function" else node
            return buffers.get(source.name, source.name)

        decisions = {}
        for node in program.graph_module.graph.nodes:
            if is_attention(node):
                name, module = _call_site(node)
                caches = f"{cache(node.args[1])}, {cache(node.args[2])}"
                decisions[name] = AttentionDecision(name, module, True, SdpaCall.from_node(node).describe()
                                                    + f", in the whole-step delegate, KV cache owned by the "
                                                    f"delegate ({caches})")
        self.attention._decisions = decisions
