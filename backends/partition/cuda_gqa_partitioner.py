"""CudaGqaPartitioner: tags the GQA attention nodes CudaGqaBackend runs.

Each supported scaled_dot_product_attention node (or ExecuTorch's
llama::custom_sdpa, llama_attention.py) becomes its own delegate; everything
else stays with the CPU (or another partitioner). The partition report says,
node by node, what was delegated and why not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from executorch.exir.backend.compile_spec_schema import CompileSpec
from executorch.exir.backend.partitioner import DelegationSpec, Partitioner, PartitionResult
from torch.export import ExportedProgram

from ..compile_specs import make_compile_specs, parse_compile_specs
from ..cuda_gqa_backend import CudaGqaBackend
from ..kv_cache_update import sdpa_cache_updates
from ..sdpa import (TAKEN_LLAMA_UPDATE_OP, TAKEN_SDPA_OP, SdpaCall, _aten_target, is_attention,
                    is_contiguous_clone, is_llama_sdpa, is_sdpa)
from .kv_expansion import fold_kv_expansion
from .llama_attention import take_llama_sdpa
from .softcapped_attention import (attention_output, discard, find_softcapped_attention, insert_taken_sdpa,
                                   replace_match)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttentionDecision:
    node: str  # the SDPA call, as torch.export names it (stable across dialects)
    module: str  # path of the nn.Module that made the call ("" for the root)
    delegated: bool
    reason: str  # why not, or what the delegate runs


# A call taken before decompositions holds its report entry with this until partition() decides.
_NOT_SEEN = "kept whole but not seen by partition()"


def _call_site(node: torch.fx.Node) -> tuple[str, str]:
    torch_fn = node.meta.get("torch_fn")
    stack = node.meta.get("nn_module_stack") or {}
    module = list(stack.values())[-1][0] if stack else ""
    return (torch_fn[0] if torch_fn else node.name), module


class CudaGqaPartitioner(Partitioner):
    def __init__(self, compile_specs: Optional[Sequence[CompileSpec]] = None, *, include_mha: bool = False,
                 own_kv_cache: bool = True, **options):
        """compile_specs: as made by `make_compile_specs(...)`; or pass its keyword options.

        include_mha: also delegate plain multi-head attention (H_q == H_kv).
        own_kv_cache: take a static KV cache's update (index_copy_ / index_put_
        of a mutable buffer, or ExecuTorch's llama::update_cache) with its
        SDPA, so the delegate keeps the cache in device memory
        (kv_cache_update.py); False leaves the caches to the program, which
        then copies them to the delegate on every call.
        """
        specs = list(compile_specs) if compile_specs is not None else make_compile_specs(**options)
        super().__init__()
        self.include_mha = include_mha
        self.own_kv_cache = own_kv_cache
        # ExecuTorch finds the backend by its class name among BackendDetails subclasses.
        self.delegation_spec = DelegationSpec(CudaGqaBackend.__name__, specs)
        self.options = parse_compile_specs(specs)
        self._decisions: dict[str, AttentionDecision] = {}
        self._folded: dict[str, str] = {}  # call site -> K/V expansion style folded into it

    @property
    def report(self) -> list[AttentionDecision]:
        """Every SDPA call of the last program lowered, in graph order: delegated, or why not."""
        return list(self._decisions.values())

    def _reason(self, node: torch.fx.Node) -> Optional[str]:
        call = SdpaCall.from_node(node)
        reason = call.unsupported_reason(include_mha=self.include_mha)
        if reason is not None:
            return reason
        if call.dtype not in self.options.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in self.options.dtypes)
            return f"dtype {str(call.dtype).removeprefix('torch.')} is not in the compile spec dtypes ({names})"
        (_, l_q), (_, l_kv) = call.lengths  # upper bounds of dynamic ones
        if self.options.max_seq_len is not None and max(l_q, l_kv) > self.options.max_seq_len:
            return f"L_q={l_q}, L_kv={l_kv} exceed the compile spec max_seq_len={self.options.max_seq_len}"
        return None

    def _accept(self, node: torch.fx.Node, refusals: list[str]) -> bool:
        """Whether the partitioner takes `node`; its refusal, if any, is added to refusals."""
        reason = self._reason(node)
        if reason is not None:
            refusals.append(reason)
        return reason is None

    def _decide(self, node: torch.fx.Node, delegated: bool, reason: str, name: Optional[str] = None) -> None:
        call_site, module = _call_site(node)
        name = name or call_site
        self._decisions[name] = AttentionDecision(name, module, delegated, reason)
        logger.info("%s%s: %s (%s)", module + "." if module else "", name,
                    "delegated" if delegated else "left on CPU", reason)

    def transform_for_pre_decomposition(self, exported_program: ExportedProgram) -> ExportedProgram:
        """Fold hand-written K/V expansion into SDPA, turn each SDPA we take into
        TAKEN_SDPA_OP (backends/sdpa.py: it survives every partitioner's
        decompositions), and follow it with a contiguous clone, taken into the
        delegate too. ExecuTorch's llama::custom_sdpa calls we take become
        TAKEN_LLAMA_SDPA_OP, their owned llama::update_cache writes
        TAKEN_LLAMA_UPDATE_OP (llama_attention.py).

        Folding (kv_expansion.py) makes an SDPA over K/V repeated per query
        head read the unexpanded K/V with enable_gqa=True: same result, and
        the expansion is never materialised.

        ExecuTorch keeps the SDPA whole by re-tracing it as another op, whose
        output is contiguous where eager SDPA's followed the query's layout; a
        `.view` the model applies downstream (e.g. after transpose(1, 2)) was
        traced for the eager layout and would fail. The clone pins the layout
        the rest of the graph sees; the kernel writes contiguous output anyway.
        The SDPA calls we leave are decomposed before partition() runs, so
        they enter the report here.
        """
        self._decisions, self._folded = {}, {}
        graph = exported_program.graph_module.graph
        self._take_llama_attention(exported_program)
        self._take_softcapped_attention(graph)
        for node in list(graph.nodes):
            if not is_sdpa(node):
                continue
            folded_refusal = []  # why the folded (GQA) form was refused, when it was
            style = fold_kv_expansion(node, accept=lambda n: self._accept(n, folded_refusal))
            if style is not None:
                self._folded[_call_site(node)[0]] = style
            reason = self._reason(node)
            if reason is not None and folded_refusal:
                # The call is GQA written as MHA: the folded form's refusal is the real one
                # (not "MHA ...: pass include_mha=True", an artefact of the expansion).
                reason = folded_refusal[0]
            if reason is not None:
                self._decide(node, False, reason)
                continue
            # Holds this call's place in the report until partition() decides.
            name, module = _call_site(node)
            self._decisions[name] = AttentionDecision(name, module, False, _NOT_SEEN)
            node.target = TAKEN_SDPA_OP
            if all(user.op == "output" for user in node.users):
                continue  # returned as is: no view of it to protect
            with graph.inserting_after(node):
                clone = graph.call_function(torch.ops.aten.clone.default, (node,),
                                            {"memory_format": torch.contiguous_format})
            clone.meta["val"] = node.meta["val"].clone(memory_format=torch.contiguous_format)
            node.replace_all_uses_with(clone, delete_user_cb=lambda user: user is not clone and user.op != "output")
        exported_program.graph_module.recompile()
        return exported_program

    def _take_llama_attention(self, exported_program: ExportedProgram) -> None:
        """ExecuTorch's llama::custom_sdpa calls the kernels run become TAKEN_LLAMA_SDPA_OP
        (llama_attention.py), with their llama::update_cache writes where the delegate can
        own the caches; the rest stay as they are, with a report entry."""
        for node in list(exported_program.graph_module.graph.nodes):
            if not is_llama_sdpa(node):
                continue
            reason = self._reason(node)
            if reason is not None:
                self._decide(node, False, reason)
                continue
            name, module = _call_site(node)
            take_llama_sdpa(node, exported_program, own_kv_cache=self.own_kv_cache)  # keeps the call site's name
            self._decisions[name] = AttentionDecision(name, module, False, _NOT_SEEN)

    def _take_softcapped_attention(self, graph: torch.fx.Graph) -> None:
        """Soft-capped attention written out (softcapped_attention.py) that the kernels run
        becomes one TAKEN_SDPA_OP call; the rest, and written-out attention of any other
        form, stays as written, with a report entry."""
        for softmax in list(graph.nodes):
            match = find_softcapped_attention(softmax)
            if match is None:
                continue
            if isinstance(match, str):  # written-out attention the kernels are not given
                output = attention_output(softmax)
                self._decide(output, False, match, name=f"written_out_attention_{output.name}")
                continue
            node = insert_taken_sdpa(match)
            # Judged in its folded (GQA) form; a call we leave is discarded whole.
            style = fold_kv_expansion(node, accept=lambda n: True)
            reason = self._reason(node)
            if reason is not None:
                self._decide(node, False, f"written-out soft-capped attention: {reason}")
                discard(node)
                continue
            replace_match(match, node)
            if style is not None:
                self._folded[_call_site(node)[0]] = style

    def partition(self, exported_program: ExportedProgram) -> PartitionResult:
        tags = {}
        taken_updates = set()
        for node in exported_program.graph_module.graph.nodes:
            if not is_attention(node):
                continue
            call = SdpaCall.from_node(node)
            reason = self._reason(node)
            if reason is not None:
                earlier = self._decisions.get(_call_site(node)[0])
                if earlier is None or earlier.reason == _NOT_SEEN:  # else refused before, and said why then
                    self._decide(node, False, reason)
                continue
            tag = f"cuda_gqa_{len(tags)}"
            node.meta["delegation_tag"] = tag
            for user in node.users:
                if is_contiguous_clone(user):
                    user.meta["delegation_tag"] = tag
            tags[tag] = self.delegation_spec
            folded = self._folded.get(_call_site(node)[0])
            what = call.describe() + (f", K/V expansion ({folded}) folded in" if folded else "")
            updates = sdpa_cache_updates(call, exported_program) if self.own_kv_cache else None
            if updates is not None:
                # The buffers and their updates join the SDPA: ExecuTorch moves
                # the buffers and their mutations into the delegate.
                for update in updates:
                    update.node.meta["delegation_tag"] = tag
                    update.buffer.meta["delegation_tag"] = tag
                    taken_updates.add(update.node)
                what += f", KV cache owned by the delegate ({', '.join(u.buffer_name for u in updates)})"
            self._decide(node, True, what)
        for node in exported_program.graph_module.graph.nodes:
            # Made only for caches the delegate owns: it has no CPU kernel in ExecuTorch.
            if node.op == "call_function" and _aten_target(node) == TAKEN_LLAMA_UPDATE_OP and node not in taken_updates:
                raise RuntimeError(f"CudaGqaPartitioner: the llama cache update {node.name} it took before "
                                   "decompositions is not taken with its attention now")
        return PartitionResult(tagged_exported_program=exported_program, partition_tags=tags)
