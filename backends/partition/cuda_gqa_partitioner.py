"""CudaGqaPartitioner: tags the GQA attention nodes CudaGqaBackend runs.

Each supported scaled_dot_product_attention node becomes its own delegate;
everything else stays with the CPU (or another partitioner). The partition
report says, node by node, what was delegated and why not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from executorch.exir.backend.compile_spec_schema import CompileSpec
from executorch.exir.backend.partitioner import DelegationSpec, Partitioner, PartitionResult
from torch.export import ExportedProgram

from ..compile_specs import BACKEND_ID, make_compile_specs
from ..sdpa import SDPA_OP, SdpaCall, is_sdpa

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttentionDecision:
    node: str
    delegated: bool
    reason: str  # why not, or what the delegate runs


class CudaGqaPartitioner(Partitioner):
    def __init__(self, compile_specs: Optional[Sequence[CompileSpec]] = None, **options):
        """compile_specs: as made by `make_compile_specs(...)`; or pass its keyword options."""
        specs = list(compile_specs) if compile_specs is not None else make_compile_specs(**options)
        super().__init__()
        self.delegation_spec = DelegationSpec(BACKEND_ID, specs)
        self.report: list[AttentionDecision] = []

    def ops_to_not_decompose(
        self, ep: ExportedProgram
    ) -> tuple[list[torch._ops.OpOverload], Optional[Callable[[torch.fx.Node], bool]]]:
        # Keep the SDPA nodes we will take whole through to_edge; let the
        # others decompose as usual so the CPU can run them.
        def keep_whole(node: torch.fx.Node) -> bool:
            return SdpaCall.from_node(node).unsupported_reason() is None

        return [SDPA_OP], keep_whole

    def partition(self, exported_program: ExportedProgram) -> PartitionResult:
        self.report = []
        tags = {}
        for node in exported_program.graph_module.graph.nodes:
            if not is_sdpa(node):
                continue
            call = SdpaCall.from_node(node)
            reason = call.unsupported_reason()
            if reason is None:
                tag = f"cuda_gqa_{len(tags)}"
                node.meta["delegation_tag"] = tag
                tags[tag] = self.delegation_spec
                what = (
                    f"GQA {call.num_heads_q}/{call.num_heads_kv} heads, D={call.head_dim}, "
                    f"{str(call.dtype).removeprefix('torch.')}{', causal' if call.is_causal else ''}"
                )
                self.report.append(AttentionDecision(node.name, True, what))
            else:
                self.report.append(AttentionDecision(node.name, False, reason))
        for d in self.report:
            logger.info("%s: %s (%s)", d.node, "delegated" if d.delegated else "left on CPU", d.reason)
        return PartitionResult(tagged_exported_program=exported_program, partition_tags=tags)
