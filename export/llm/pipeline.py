"""export_llm: a decoder with a static KV cache -> one .pte with `prefill` and `decode` methods.

Both methods are the same module exported at two static query lengths
(prefill_len tokens, and 1), so each attention call is one static problem
the AOT stage plans for (forward kernel for prefill, split-KV decode kernels
for decode). They share the KV-cache buffers (ExecuTorch's
`share_mutable_buffers`): a prompt prefilled through one is decoded by the
other. Prompts longer than prefill_len go in chunks, the last overlapping
the one before, so the prompt's last token is a chunk's last row; a prompt
shorter than one chunk is padded (its padding rows land at positions the next
writes overwrite before any query can see them), and its last token's logits
come from a decode step at its position.

The model contract: forward(tokens [B, L] int64, input_pos [1] int64) ->
logits [B, L, vocab], writing its cache at input_pos .. input_pos + L - 1,
with attributes max_seq_len and (optionally) batch_size; `Decoder` meets it,
and with its `last_row_logits()` the prefill method returns [B, 1, vocab].

With greedy_token_method, a third method `decode_token` (the model's
`greedy_token()`: one token in, the argmax of its logits out, int64 [B, 1])
shares the same caches: its whole step runs on the GPU, so a decode step
copies a token id to the host, not the vocabulary's logits.
"""

from __future__ import annotations

import contextlib

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from executorch.exir import ExecutorchBackendConfig, ExecutorchProgramManager, to_edge_transform_and_lower
from executorch.exir.passes import MemoryPlanningPass

from cuda_gqa.backends.compile_specs import DEFAULT_ARCHS
from cuda_gqa.backends.partition import AttentionDecision, CudaGqaModelPartitioner, CudaGqaPartitioner

from .decoder import Decoder
from .presets import build_preset

METHODS = ("prefill", "decode")
TOKEN_METHOD = "decode_token"
CPU_PARTITIONERS = ("xnnpack",)
DEFAULT_PREFILL_LEN = 64


@dataclass
class LlmExport:
    program: ExecutorchProgramManager  # .buffer: the .pte's bytes
    # Per method: every SDPA call, delegated or why not (empty when attention was left on the CPU).
    reports: dict[str, list[AttentionDecision]]
    # Per method, with the whole-model lowering: what its delegate took, or why only attention.
    model_reports: dict[str, str]
    metadata: dict[str, object]  # the program's constant methods
    seconds: float
    size_bytes: int
    pte: Optional[Path] = None  # where it was written
    ptd: Optional[Path] = None  # with external_weights: the weights' file, written beside the .pte
    ptd_size_bytes: int = 0

    def delegated(self, method: str) -> list[AttentionDecision]:
        return [d for d in self.reports[method] if d.delegated]

    def summary(self) -> str:
        lines = [] if self.reports else ["attention left on the CPU (no GPU archs)"]
        for method, what in self.model_reports.items():
            lines.append(f"{method}: {what}")
        for method in self.reports:
            report = self.reports[method]
            lines.append(f"{method}: {len(self.delegated(method))} of {len(report)} attention calls delegated "
                         f"to CudaGqaBackend")
            for reason, count in Counter(d.reason for d in report if not d.delegated).items():
                lines.append(f"  {count} left on the CPU: {reason}")
        where = f" to {self.pte}" if self.pte else ""
        if self.ptd is not None:
            where += f", weights {self.ptd_size_bytes / 2**20:.1f} MiB to {self.ptd}"
        lines.append(f"{self.size_bytes / 2**20:.1f} MiB written{where} in {self.seconds:.1f} s")
        return "\n".join(lines)


def _make_partitioners(archs: Optional[Sequence], cpu_partitioner: Optional[str],
                       whole: Optional[dict[str, bool]] = None, methods: Sequence[str] = METHODS):
    """Per method: CudaGqaModelPartitioner alone where `whole[method]` (the whole step is ours: a
    CPU partitioner after it would decompose the nodes it keeps whole), else CudaGqaPartitioner
    for the attention, then the CPU partitioner for the rest."""
    if cpu_partitioner not in (None, *CPU_PARTITIONERS):
        raise ValueError(f"unknown cpu_partitioner {cpu_partitioner!r}: choose from {CPU_PARTITIONERS} or None")
    partitioners = {}
    for method in methods:
        if archs is not None and (whole or {}).get(method):
            partitioners[method] = [CudaGqaModelPartitioner(archs=archs, generic_plans=False)]
            continue
        # No generic plans: every delegate argument here is a tensor ExecuTorch
        # plans itself (contiguous, 16-byte aligned, head dims multiples of 16),
        # which the aligned plans always take; skipping them halves the compiles.
        partitioners[method] = [] if archs is None else [CudaGqaPartitioner(archs=archs, generic_plans=False)]
        if cpu_partitioner == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            partitioners[method].append(XnnpackPartitioner())
    return partitioners


def _whole_step_plans(programs: dict, log) -> tuple[dict[str, bool], dict[str, str]]:
    """Per method: whether the kernels hold its whole step, and what it takes or why not."""
    from cuda_gqa.backends.model.ops import NotRecognised
    from cuda_gqa.backends.partition.whole_model_partitioner import trial_plan

    whole, why = {}, {}
    for method, program in programs.items():
        log(f"reading {method} as a whole-step plan")
        try:
            plan = trial_plan(program)
        except NotRecognised as refusal:
            whole[method], why[method] = False, f"attention only (the rest on the CPU): {refusal}"
            continue
        whole[method] = True
        why[method] = (f"whole step on the GPU: {len(plan.ops)} ops, {len(plan.constants)} weights, "
                       f"{len(plan.states)} caches")
    return whole, why


def export_llm(
    model: Union[torch.nn.Module, str],
    *,
    max_seq_len: Optional[int] = None,
    prefill_len: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    archs: Optional[Sequence[Union[int, str]]] = DEFAULT_ARCHS,
    out: Optional[Union[str, Path]] = None,
    cpu_partitioner: Optional[str] = "xnnpack",
    external_weights: bool = False,
    whole_model: bool = True,
    greedy_token_method: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> LlmExport:
    """Export `model` (a module meeting the contract above, or a preset name) to a .pte.

    max_seq_len: the cache length (needed for presets; a module has its own).
    prefill_len: tokens per prefill call (default min(64, max_seq_len)).
    dtype: converts the module (presets are built in it; default float32).
    archs: GPU archs for CudaGqaBackend; None leaves attention on the CPU.
    out: where to write the .pte (result.program.buffer holds its bytes either way).
    cpu_partitioner: "xnnpack" or None (ExecuTorch's portable kernels).
    external_weights: the model's parameters go to a .ptd file beside the .pte (ExecuTorch's
        named data, FlatTensor format; out's stem + ".ptd", needs `out`), the XNNPACK-packed
        ones and those the CPU kernels read alike; load it with the .pte (Module(pte, ptd),
        cuda_gqa_llm_runner --data). Buffers (RoPE tables) and cubins stay in the .pte, so
        exports of one model at any max_seq_len or archs share one .ptd.
    whole_model: each method's whole step (embedding to LM head) goes to CudaGqaBackend when its
        kernels hold every node (CudaGqaModelPartitioner; else its attention, with the reason in
        the summary); False: the attention calls alone (CudaGqaPartitioner), the rest to the CPU.
    greedy_token_method: also a `decode_token` method (the model's greedy_token(): one token in,
        its greedy next token id out, int64 [B, 1], the argmax on the GPU), sharing the caches;
        needs the whole-step lowering (archs and whole_model); left out, with the reason in the
        summary, where the kernels do not hold its whole step.
    log: called with a line per stage.
    """
    start = time.perf_counter()
    if isinstance(model, str):
        if max_seq_len is None:
            raise ValueError("max_seq_len is needed to build a preset")
        log(f"building preset {model} (max_seq_len {max_seq_len}, {dtype or torch.float32}, seeded random weights)")
        model = build_preset(model, max_seq_len=max_seq_len, dtype=dtype or torch.float32)
    elif dtype is not None:
        model = model.to(dtype)
    model_len = getattr(model, "max_seq_len", None)
    if model_len is None or (max_seq_len is not None and max_seq_len != model_len):
        raise ValueError(f"the model's max_seq_len attribute ({model_len}) must be set"
                         + (f" and equal max_seq_len={max_seq_len}" if max_seq_len is not None else ""))
    prefill_len = min(DEFAULT_PREFILL_LEN, model_len) if prefill_len is None else prefill_len
    if not 1 <= prefill_len <= model_len:
        raise ValueError(f"prefill_len={prefill_len} must be in 1..max_seq_len={model_len}")
    model = model.eval().requires_grad_(False)
    batch = getattr(model, "batch_size", 1)

    if external_weights and out is None:
        raise ValueError("external_weights needs `out` (the .ptd is written beside the .pte)")
    tag = Path(out).stem if external_weights else None
    if greedy_token_method:
        _check_greedy_token_method(model, archs, whole_model)

    programs = {}
    with torch.no_grad():
        for method, length in _method_lengths(prefill_len, greedy_token_method):
            log(f"torch.export: {method} ({batch} x {length} tokens)")
            tokens = torch.zeros(batch, length, dtype=torch.long)
            with _logits_rows(model, method):
                programs[method] = torch.export.export(model, (tokens, torch.tensor([0])))
            if tag is not None:
                _tag_parameters_for_delegates(programs[method], tag)

    whole, model_reports = _whole_step_plans(programs, log) if archs is not None and whole_model else ({}, {})
    if greedy_token_method and not whole[TOKEN_METHOD]:
        del programs[TOKEN_METHOD]  # on the CPU it saves nothing: decode's logits give the same token
        model_reports[TOKEN_METHOD] = f"not exported: its whole step is not the kernels' ({model_reports[TOKEN_METHOD]})"
    partitioners = _make_partitioners(archs, cpu_partitioner, whole, list(programs))
    names = [type(partitioners["decode"][0]).__name__ if archs is not None else None,
             None if whole.get("decode") else cpu_partitioner]
    log(f"lowering to ExecuTorch ({' then '.join(n for n in names if n) or 'portable kernels only'})")
    metadata = {"get_max_seq_len": model_len, "get_prefill_len": prefill_len, "get_batch_size": batch}
    if isinstance(model, Decoder):
        config = model.config
        metadata["get_vocab_size"] = config.vocab_size
        if config.bos_token_id is not None:
            metadata["get_bos_id"] = config.bos_token_id
        if config.eos_token_ids:
            metadata["get_eos_ids"] = list(config.eos_token_ids)
    edge = to_edge_transform_and_lower(programs, partitioner=partitioners, constant_methods=metadata)
    log(f"emitting the program (KV caches shared between {', '.join(programs)})")
    parameters = set()
    for method in programs:
        parameters |= set(edge.exported_program(method).graph_signature.inputs_to_parameters)
    program = edge.to_executorch(ExecutorchBackendConfig(
        memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=True),
        # The parameters the CPU kernels read (the embedding, norms): to the .ptd as well.
        external_constants=(lambda node: tag if node.name in parameters else None) if tag else False))

    reports = {} if archs is None else {method: parts[0].report for method, parts in partitioners.items()}
    if out is None:
        pte, size = None, len(program.buffer)
    else:
        pte = Path(out)
        pte.parent.mkdir(parents=True, exist_ok=True)
        with pte.open("wb") as f:
            program.write_to_file(f)  # without a contiguous copy of a multi-GB program
        size = pte.stat().st_size
    ptd = None
    if tag is not None:
        data_files = set(program._tensor_data or {})  # its names (data_files would copy the bytes)
        if data_files != {tag}:
            raise RuntimeError(f"expected one data file {tag!r} from ExecuTorch, got {sorted(data_files)}")
        log(f"writing the weights to {pte.parent / (tag + '.ptd')}")
        program.write_tensor_data_to_file(str(pte.parent))
        ptd = pte.parent / f"{tag}.ptd"
    return LlmExport(program=program, reports=reports, model_reports=model_reports, metadata=metadata,
                     seconds=time.perf_counter() - start,
                     size_bytes=size, pte=pte, ptd=ptd, ptd_size_bytes=ptd.stat().st_size if ptd else 0)


def _logits_rows(model, method: str):
    """prefill returns its last row's logits only where the model offers it (Decoder.last_row_logits):
    the runtimes read no other row, and copying every row's logits to the host dwarfs the step.
    decode_token returns the greedy token of its logits (Decoder.greedy_token)."""
    if method == "prefill" and hasattr(model, "last_row_logits"):
        return model.last_row_logits()
    if method == TOKEN_METHOD:
        return model.greedy_token()
    return contextlib.nullcontext()


def _method_lengths(prefill_len: int, greedy_token_method: bool) -> list[tuple[str, int]]:
    """(method, tokens per call) of each exported method."""
    return list(zip(METHODS, (prefill_len, 1))) + ([(TOKEN_METHOD, 1)] if greedy_token_method else [])


def _check_greedy_token_method(model, archs, whole_model: bool) -> None:
    if not hasattr(model, "greedy_token"):
        raise ValueError(f"greedy_token_method needs a model with greedy_token() (export/llm/decoder.py's "
                         f"Decoder), not {type(model).__name__}")
    if archs is None or not whole_model:
        raise ValueError("greedy_token_method needs the whole-step lowering (GPU archs, whole_model=True): "
                         "the argmax runs in the step's CudaGqaBackend delegate")


def _tag_parameters_for_delegates(program: torch.export.ExportedProgram, tag: str) -> None:
    """Marks the parameters' placeholders so that delegates put them in external named data
    under `tag` (XNNPACK's serializer reads meta["custom"]["delegate_constant_tag"], as
    ExecuTorch's delegate_external_constants_pass_unlifted sets it on unlifted graphs)."""
    parameters = program.graph_signature.inputs_to_parameters
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in parameters:
            node.meta.setdefault("custom", {})["delegate_constant_tag"] = tag
