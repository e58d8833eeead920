"""One decode step of a whole LLM, the ways a user could run it, against the memory-bandwidth bound
(issue 17's targets).

    python3 bench/llm_step.py --out $OUT                                  # GPU machine, every default model
    python3 bench/llm_step.py --models llama3.2-1b --pte llama3.2-1b=.gpu-step/llama3.2-1b.pte --out $OUT
    python bench/llm_step.py --device cpu --models tiny-llama3 --context 64 --prefill 16 --no-compile  # smoke

For each model (a preset of export/llm/presets.py, seeded random weights, no
checkpoint), batch 1, --dtype (bfloat16), a static KV cache of --context keys
filled with random rows, this times in one process on one GPU:

- decode: forward(tokens [1, 1], input_pos [context - 1]): the step that
  attends over a full cache;
  - PyTorch eager of the project's decoder (export/llm/decoder.py);
  - the same eager step captured in one CUDA graph (static inputs);
  - torch.compile (--compile-mode, default "default": Inductor's kernels, no
    CUDA graphs of its own), its step captured in one CUDA graph the same way
    as eager's, so the two graph rows differ only in their kernels
    ("reduce-overhead" would bring Inductor's CUDA-graph trees, which manage
    the mutated KV-cache buffers themselves; "max-autotune-no-cudagraphs"
    autotunes every matmul shape, minutes per model);
  - the exported program through the C++ runner (--pte MODEL=PATH), its
    `--decode-at` median (steps at positions context - N .. context - 1; host
    wall time per step, logits to the host and argmax included); the runner
    is the one beside the .pte (or --runner), its libraries beside it; the
    weights a .ptd beside it (PTE.ptd or weights.ptd), or rebuilt from that
    file's manifest (export/llm/ptd_manifest.py) and deleted afterwards;
- prefill of a --prefill-token prompt (time to first token: forward(tokens
  [1, P], input_pos [0]), the last row's logits, as export_llm's prefill
  returns them) for the same routes; the runner's figure is one prefill of a
  random prompt after two untimed ones (--prefill-warmup 2);
- the bound: bytes a step must read (every weight once, of the token
  embedding only its row unless tied to the LM head; K and V of every layer
  up to the context, a sliding layer's window only) over the device-to-device
  copy bandwidth measured in this run (bytes read + written).

Timing: CUDA events around each step (no synchronisation between steps),
--warmup untimed steps, the median of --steps. A compiled or graph-captured
step is checked against eager's logits of the same step (relative L2
difference in the notes). Every model and route runs in a try/except: a
failure becomes a row with its error. torch.compile stops being tried once
less than its last compile time (at least 60 s) is left of --budget-s.

Writes OUT/llm_step.md and OUT/llm_step.json and prints the table last.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from cuda_gqa.export.llm.decoder import Decoder
from cuda_gqa.export.llm.presets import PRESETS, randomize_weights
from llm_runner_cli import RUNNER, error_line, parse_decode_at, parse_prefill, run_logged, runner_env

DEFAULT_MODELS = ("llama3.2-1b", "qwen2.5-1.5b", "gemma3-1b", "llama3-8b")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
EAGER, GRAPH, COMPILED, RUNNER_ROUTE, BOUND = ("eager", "eager + CUDA graph", "torch.compile + CUDA graph",
                                               "exported .pte (C++ runner)", "bound (bytes / copy bandwidth)")
RUNNER_PLAIN_LAUNCH_ROUTE = "exported .pte, no programmatic launch"
ROUTES = (EAGER, GRAPH, COMPILED, RUNNER_ROUTE, RUNNER_PLAIN_LAUNCH_ROUTE, BOUND)
MISMATCH = 5e-2  # relative L2 difference from eager's logits past which a row is flagged (bf16 is ~1e-2)
MIN_COMPILE_S = 60.0


def log(message: str) -> None:
    print(f"[llm_step] {message}", flush=True)


@dataclass
class Row:
    model: str
    route: str
    decode_ms: Optional[float] = None
    prefill_ms: Optional[float] = None
    notes: list[str] = field(default_factory=list)
    error: Optional[str] = None


# ---------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step: Callable[[], object], device: torch.device, warmup: int, steps: int) -> float:
    """Median milliseconds of `step` over `steps` calls after `warmup` untimed ones: CUDA events
    on a GPU (the step's span on the stream; no synchronisation between steps), the host clock
    on the CPU."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type != "cuda":
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read and written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    src.random_(0, 255)  # not zeros: never time on zeros
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, warmup=3, steps=20)
    return 2 * nbytes / (ms * 1e-3)


def capture_graph(step: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """`step` captured in one CUDA graph (warmed up on a side stream first, as capture needs:
    compiles, autotuning and allocator growth stay outside); the graph and its output tensor."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64 (NaN when either holds a non-finite value)."""
    got, want = got.double(), want.double()
    if not (torch.isfinite(got).all() and torch.isfinite(want).all()):
        return float("nan")
    return ((got - want).norm() / want.norm()).item()


# ---------------------------------------------------------------- models


def build_model(name: str, context: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Decoder:
    """The preset with seeded weights, built directly on `device` (no host copy of an 8B model), its
    KV cache filled with random rows (as after a prefill of `context` tokens, without one)."""
    model = Decoder.uninitialized(PRESETS[name], device=device, max_seq_len=context, dtype=dtype)
    randomize_weights(model, seed, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            for cache in (layer.self_attn.k_cache, layer.self_attn.v_cache):
                cache.normal_(generator=generator)
    return model.eval()


def step_bytes(model: Decoder, context: int) -> int:
    """The fewest bytes one decode step at `context` must read: every weight once (the token
    embedding's one row, unless it is also the LM head), the K and V rows each layer attends to."""
    config = model.config
    seen, total = set(), 0
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel() * param.element_size()
    if not config.tie_word_embeddings:
        embedding = model.embed_tokens.weight
        total -= (embedding.shape[0] - 1) * embedding.shape[1] * embedding.element_size()
    for i, layer in enumerate(model.layers):
        cache = layer.self_attn.k_cache
        window = config.window(i)
        keys = context if window is None else min(window, context)
        total += 2 * cache.shape[0] * cache.shape[1] * keys * cache.shape[3] * cache.element_size()
    return total


@dataclass
class Inputs:
    decode_tokens: torch.Tensor
    decode_pos: torch.Tensor
    prefill_tokens: torch.Tensor
    prefill_pos: torch.Tensor


def make_inputs(model: Decoder, context: int, prefill: int, device: torch.device) -> Inputs:
    generator = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    return Inputs(decode_tokens=torch.randint(vocab, (1, 1), generator=generator).to(device),
                  decode_pos=torch.tensor([context - 1], device=device),
                  prefill_tokens=torch.randint(vocab, (1, prefill), generator=generator).to(device),
                  prefill_pos=torch.tensor([0], device=device))


# ---------------------------------------------------------------- one model


@dataclass
class Settings:
    context: int
    prefill: int
    dtype: torch.dtype
    device: torch.device
    steps: int
    warmup: int
    prefill_steps: int
    compile: bool
    compile_mode: str
    compile_backend: str
    deadline: float
    runner: Optional[Path]
    runner_timeout_s: float
    log_file: Path
    plain_launch_row: bool = False  # also time the runner's decode with programmatic launch off
    compiles: list[tuple[float, int]] = field(default_factory=list)  # (seconds, layers) of each, newest last

    def compile_graphs_itself(self) -> bool:
        """Whether the compile mode brings Inductor's CUDA graphs (then its step is not captured again)."""
        return self.compile_backend == "inductor" and self.compile_mode in ("reduce-overhead", "max-autotune")

    def compile_skipped(self, layers: int) -> Optional[str]:
        """Why torch.compile of a model of `layers` layers is not tried now, or None: it is not
        when less is left of the budget than the last compile took, scaled by the layers (Dynamo
        unrolls them), at least MIN_COMPILE_S."""
        if not self.compile:
            return "skipped (--no-compile)"
        left = self.deadline - time.perf_counter()
        needed = MIN_COMPILE_S
        if self.compiles:
            seconds, last_layers = self.compiles[-1]
            needed = max(needed, seconds * layers / last_layers)
        if left < needed:
            return f"skipped: {max(left, 0):.0f} s of --budget-s left, a compile needs about {needed:.0f} s"
        return None


def guarded(row: Row, what: str, action: Callable[[], None]) -> None:
    """Runs `action`; a failure goes to the row's notes (or error) instead of ending the run."""
    try:
        action()
    except Exception as e:  # one route's failure must not cost the rest of the table
        message = f"{what}: {type(e).__name__}: {first_line(e)}"
        log(message)
        traceback.print_exc()
        if row.decode_ms is None and row.prefill_ms is None and row.error is None:
            row.error = message
        else:
            row.notes.append(message)
        with contextlib.suppress(Exception):  # a failed capture may leave an error behind it
            synchronize(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


def time_decode_routes(model: Decoder, inputs: Inputs, s: Settings, rows: dict[str, Row],
                       compiled: Optional[Callable]) -> None:
    """eager, eager + graph and compiled + graph decode steps, each graph checked against eager."""
    cuda = s.device.type == "cuda"
    decode = lambda fn=model: fn(inputs.decode_tokens, inputs.decode_pos)
    reference = decode().float().clone()

    def eager():
        rows[EAGER].decode_ms = median_ms(decode, s.device, s.warmup, s.steps)

    guarded(rows[EAGER], "decode", eager)

    def graph_of(fn, row: Row):
        graph, out = capture_graph(lambda: decode(fn))
        row.decode_ms = median_ms(graph.replay, s.device, s.warmup, s.steps)
        note_difference(row, "decode", out, reference)
        del graph, out

    if cuda:
        guarded(rows[GRAPH], "decode", lambda: graph_of(model, rows[GRAPH]))
    else:
        rows[GRAPH].error = "needs a CUDA device"
    if compiled is not None:
        def compile_decode():
            seconds = first_call_seconds(lambda: decode(compiled), s, model.config.num_layers)
            rows[COMPILED].notes.append(f"decode compiled in {seconds:.0f} s")
            if cuda and not s.compile_graphs_itself():
                graph_of(compiled, rows[COMPILED])
            else:  # the compiled step as it is: on the CPU, or with Inductor's own CUDA graphs
                rows[COMPILED].notes.append("Inductor's own CUDA graphs" if cuda else "no CUDA graph on the CPU")
                rows[COMPILED].decode_ms = median_ms(lambda: decode(compiled), s.device, s.warmup, s.steps)
                note_difference(rows[COMPILED], "decode", decode(compiled), reference)

        guarded(rows[COMPILED], "decode", compile_decode)


def time_prefill_routes(model: Decoder, inputs: Inputs, s: Settings, rows: dict[str, Row],
                        compiled: Optional[Callable]) -> None:
    cuda = s.device.type == "cuda"
    prefill = lambda fn=model: fn(inputs.prefill_tokens, inputs.prefill_pos)
    warmup, steps = min(s.warmup, 3), s.prefill_steps
    reference = prefill()[:, -1].float().clone()  # the last row: the first token's logits

    def eager():
        rows[EAGER].prefill_ms = median_ms(prefill, s.device, warmup, steps)

    guarded(rows[EAGER], "prefill", eager)

    def graph_of(fn, row: Row):
        graph, out = capture_graph(lambda: prefill(fn))
        row.prefill_ms = median_ms(graph.replay, s.device, warmup, steps)
        note_difference(row, "prefill", out[:, -1], reference)
        del graph, out

    if cuda:
        guarded(rows[GRAPH], "prefill", lambda: graph_of(model, rows[GRAPH]))
    if compiled is not None and rows[COMPILED].error is None:
        def compile_prefill():
            why = s.compile_skipped(model.config.num_layers)
            if why:
                rows[COMPILED].notes.append(f"prefill {why}")
                return
            seconds = first_call_seconds(lambda: prefill(compiled), s, model.config.num_layers)
            rows[COMPILED].notes.append(f"prefill compiled in {seconds:.0f} s")
            if cuda and not s.compile_graphs_itself():
                graph_of(compiled, rows[COMPILED])
            else:
                rows[COMPILED].prefill_ms = median_ms(lambda: prefill(compiled), s.device, warmup, steps)

        guarded(rows[COMPILED], "prefill", compile_prefill)


def first_call_seconds(call: Callable[[], object], s: Settings, layers: int) -> float:
    """Seconds of a compiled function's first call (its compile), recorded for the budget."""
    start = time.perf_counter()
    call()
    synchronize(s.device)
    seconds = time.perf_counter() - start
    s.compiles.append((seconds, layers))
    return seconds


def note_difference(row: Row, what: str, got: torch.Tensor, want: torch.Tensor) -> None:
    difference = relative_difference(got.float(), want)
    flag = " MISMATCH" if not difference <= MISMATCH else ""
    row.notes.append(f"{what} logits vs eager: rel. diff {difference:.1e}{flag}")


def bench_model(name: str, s: Settings, bandwidth: float) -> tuple[list[Row], dict]:
    """The torch rows and the bound of one model; its facts (bytes, parameters) for the report."""
    rows = {route: Row(name, route) for route in (EAGER, GRAPH, COMPILED, BOUND)}
    facts: dict = {}
    model = compiled = None
    try:
        start = time.perf_counter()
        model = build_model(name, s.context, s.dtype, s.device)
        inputs = make_inputs(model, s.context, s.prefill, s.device)
        facts.update(build_s=round(time.perf_counter() - start, 1), step_bytes=step_bytes(model, s.context),
                     parameters=sum(p.numel() for p in model.parameters()))
        log(f"{name}: built in {facts['build_s']} s, {facts['parameters'] / 1e6:,.1f} M parameters, "
            f"{facts['step_bytes'] / 1e6:,.1f} MB per decode step")
        rows[BOUND].decode_ms = facts["step_bytes"] / bandwidth * 1e3
        why = s.compile_skipped(model.config.num_layers)
        if why:
            rows[COMPILED].error = why
        else:
            # A mode is Inductor's; another backend (the smoke test's "eager") takes none.
            options = dict(mode=s.compile_mode) if s.compile_backend == "inductor" else {}
            compiled = torch.compile(model, backend=s.compile_backend, dynamic=False, **options)
        with torch.no_grad():
            time_decode_routes(model, inputs, s, rows, compiled)
            with model.last_row_logits():  # as export_llm's prefill: the first token's logits only
                time_prefill_routes(model, inputs, s, rows, compiled)
    except Exception as e:  # a model that does not build or fit: one row says so
        traceback.print_exc()
        message = f"{type(e).__name__}: {first_line(e)}"
        for row in rows.values():
            if row.decode_ms is None and row.prefill_ms is None and row.error is None:
                row.error = message
    finally:
        del model, compiled
        release(s.device)
    return list(rows.values()), facts


def release(device: torch.device) -> None:
    """Frees what one model held before the next is built."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the exported program


def runner_rows(name: str, pte: Path, s: Settings) -> list[Row]:
    """The C++ runner's decode-at median and a prefill of a random prompt (after two untimed ones);
    with s.plain_launch_row, a second row: its decode with programmatic dependent launch off."""
    row = Row(name, RUNNER_ROUTE)
    runner = s.runner or pte.parent / RUNNER
    if not runner.exists():
        row.error = f"no runner at {runner} (--runner)"
        return [row]
    if not pte.exists():
        row.error = f"no program at {pte}"
        return [row]
    env = runner_env(runner.parent)
    rows = [row]
    with contextlib.ExitStack() as stack:
        try:
            data = stack.enter_context(program_data(pte, s.device))
        except Exception as e:
            row.error = f"weights: {type(e).__name__}: {first_line(e)}"
            return rows
        command = [runner, pte, *(["--data", data] if data else [])]
        time_runner_decode(row, command, s, env)
        if s.plain_launch_row:
            rows.append(Row(name, RUNNER_PLAIN_LAUNCH_ROUTE))
            time_runner_decode(rows[-1], [*command, "--no-programmatic-launch"], s, env)
        prompt = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "prompt.bin"
        generator = torch.Generator().manual_seed(1)
        vocab = PRESETS[name].vocab_size if name in PRESETS else 256
        torch.randint(vocab, (s.prefill,), generator=generator).numpy().tofile(prompt)
        code, output = run_logged([*command, "--prompt", prompt, "--new-tokens", 1, "--prefill-warmup", 2],
                                  s.log_file, env, log, s.runner_timeout_s)
        prefill = parse_prefill(output) if code == 0 else {}
        if "prefill_ms" in prefill:
            row.prefill_ms = prefill["prefill_ms"]
            row.notes.append(f"prefill: {prefill['calls']} x {prefill['chunk']} tokens after 2 untimed")
        else:
            row.notes.append(f"prefill: {error_line(output, code)}")
    return rows


def time_runner_decode(row: Row, command: list, s: Settings, env: dict) -> None:
    """row.decode_ms: the runner's --decode-at median over the last steps before the context."""
    steps = min(s.steps, s.context)
    code, output = run_logged([*command, "--decode-at", s.context - steps, "--steps", steps, "--warmup", s.warmup],
                              s.log_file, env, log, s.runner_timeout_s)
    decode = parse_decode_at(output) if code == 0 else {}
    if "median_ms" in decode:
        row.decode_ms = decode["median_ms"]
        if "attention_ms" in decode:
            row.notes.append(f"delegate execute {decode['attention_ms']:.3f} ms per step")
    else:
        row.error = f"decode: {error_line(output, code)}"


@contextlib.contextmanager
def program_data(pte: Path, device: torch.device):
    """The .ptd the program needs, if any: PTE.ptd or weights.ptd beside it, else one rebuilt from
    a manifest beside it (export/llm/ptd_manifest.py: PTE.ptd.manifest.json or
    weights.ptd.manifest.json), deleted afterwards. None for a program that carries its weights."""
    for candidate in (pte.with_suffix(".ptd"), pte.parent / "weights.ptd"):
        if candidate.exists():
            yield candidate
            return
    for candidate in (pte.with_suffix(".ptd"), pte.parent / "weights.ptd"):
        manifest = candidate.with_name(candidate.name + ".manifest.json")
        if manifest.exists():
            from cuda_gqa.export.llm.ptd_manifest import rebuild_ptd

            rebuild_ptd(manifest, candidate, device=str(device), log=log)
            release(device)
            try:
                yield candidate
            finally:
                candidate.unlink(missing_ok=True)
            return
    yield None


# ---------------------------------------------------------------- report


def fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def derived(rows: list[Row]) -> list[dict]:
    """Each row as a dict, with tokens_per_s, fraction_of_bound (bound ms over the row's) and
    speed_vs_compile_graph (torch.compile + graph ms over the row's; above 1: faster), routes in
    ROUTES order within each model."""
    by_model: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_model.setdefault(row.model, {})[row.route] = row
    found = []
    for routes in by_model.values():
        bound, compiled = routes.get(BOUND), routes.get(COMPILED)
        for route in ROUTES:
            row = routes.get(route)
            if row is None:
                continue
            ms = row.decode_ms
            found.append(dict(row.__dict__, tokens_per_s=1e3 / ms if ms else None,
                              fraction_of_bound=bound.decode_ms / ms if ms and bound and bound.decode_ms else None,
                              speed_vs_compile_graph=compiled.decode_ms / ms if ms and compiled and compiled.decode_ms
                              else None))
    return found


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [f"# One decode step at {meta['context']} keys, bf16 batch 1: eager, CUDA graph, torch.compile, the "
             f"exported program, and the bound" if meta["dtype"] == "bfloat16" else
             f"# One decode step at {meta['context']} keys ({meta['dtype']}, batch 1)", "",
             f"{meta['device_name']}; torch {meta['torch']}, triton {meta['triton']}; host "
             f"{meta['host']}, {meta['cpus']} CPUs. Copy bandwidth measured in this run: "
             f"{meta['bandwidth'] / 1e12:.3f} TB/s (read + write). torch.compile mode `{meta['compile_mode']}`, "
             f"{meta['compile_capture']}.", "",
             f"Command: `{meta['command']}`", "",
             f"| model | route | decode ms/step | tokens/s | fraction of bound | speed vs compile + graph | "
             f"prefill {meta['prefill']} tok ms (TTFT) | notes |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in derived(rows):
        fraction, speed = row["fraction_of_bound"], row["speed_vs_compile_graph"]
        notes = "; ".join(([f"error: {row['error']}"] if row["error"] else []) + row["notes"])
        lines.append(f"| {row['model']} | {row['route']} | {fmt(row['decode_ms'], 3)} | {fmt(row['tokens_per_s'], 0)} | "
                     f"{'-' if fraction is None else f'{100 * fraction:.0f}%'} | "
                     f"{'-' if speed is None else f'{speed:.2f}x'} | {fmt(row['prefill_ms'], 2)} | "
                     f"{notes.replace('|', '/')} |")
    lines += ["", f"Decode: forward(tokens [1, 1], input_pos [{meta['context'] - 1}]) over a static cache of "
              f"{meta['context']} keys filled with random rows; median of {meta['steps']} steps after "
              f"{meta['warmup']} warm-up steps, "
              f"{meta['timer']}. Prefill: "
              f"forward(tokens [1, {meta['prefill']}], input_pos [0]) returning the last row's logits (as export_llm's "
              f"prefill does), median of "
              f"{meta['prefill_steps']}. The runner's decode: host wall time of each step of its --decode-at loop "
              f"(logits copied to the host, greedy argmax), median of --steps; its prefill: host wall time of one "
              f"call after two untimed ones (--prefill-warmup 2), the last row's logits copied to the host. "
              f"Bound: every "
              f"weight read once (the token embedding's one row unless tied to the LM head), K and V up to the "
              f"context (a sliding layer's window), over the copy bandwidth. Speed vs compile + graph: its ms "
              f"over the row's (above 1: faster). Weights are seeded random values (export/llm/presets.py), "
              f"never zeros.", ""]
    facts = meta.get("models", {})
    if facts:
        lines += ["| model | parameters | bytes per decode step | built in s |", "|---|---:|---:|---:|"]
        for model, f in facts.items():
            if f:
                lines.append(f"| {model} | {f['parameters'] / 1e6:,.1f} M | {f['step_bytes'] / 1e6:,.1f} MB | "
                             f"{f['build_s']} |")
        lines.append("")
    lines.append(f"Total run time {meta['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def parse_ptes(values: list[str], models: list[str]) -> dict[str, Path]:
    ptes = {}
    for value in values:
        model, sep, path = value.partition("=")
        if not sep or not path:
            raise SystemExit(f"--pte {value!r}: expected MODEL=PATH (for example llama3.2-1b=.gpu-step/model.pte)")
        if model not in models:
            raise SystemExit(f"--pte {value!r}: {model!r} is not one of --models ({', '.join(models)})")
        ptes[model] = Path(path)
    return ptes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated presets (default %(default)s)")
    parser.add_argument("--context", type=int, default=4096, help="keys in the cache at the decode step")
    parser.add_argument("--prefill", type=int, default=512, help="prompt tokens of the prefill timed")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke test)")
    parser.add_argument("--steps", type=int, default=100, help="timed decode steps per route")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument("--prefill-steps", type=int, default=10, help="timed prefills per route")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--compile-mode", default="default",
                        choices=("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"))
    parser.add_argument("--compile-backend", default="inductor", choices=("inductor", "aot_eager", "eager"),
                        help="torch.compile's backend; not inductor only to test this script's compile path fast")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="no torch.compile starts when less than its last compile time is left of this")
    parser.add_argument("--pte", action="append", default=[], metavar="MODEL=PATH",
                        help="an exported program of MODEL, timed through the C++ runner; repeatable")
    parser.add_argument("--runner", type=Path, help=f"the runner binary (default: {RUNNER} beside each .pte)")
    parser.add_argument("--runner-timeout-s", type=float, default=240.0)
    parser.add_argument("--compare-programmatic-launch", action="store_true",
                        help="also time the runner's decode with programmatic dependent launch off (a second row)")
    parser.add_argument("--out", type=Path, help="writes llm_step.md, llm_step.json and llm_step.log there")
    args = parser.parse_args(argv)

    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {', '.join(unknown)}: choose from {', '.join(PRESETS)}")
    ptes = parse_ptes(args.pte, models)
    if args.prefill < 1 or args.context < 2 or args.prefill > args.context:
        parser.error(f"need 1 <= --prefill ({args.prefill}) <= --context ({args.context}) and --context >= 2")
    if args.steps < 1 or args.warmup < 0 or args.prefill_steps < 1:
        parser.error("--steps and --prefill-steps must be at least 1, --warmup at least 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu for the smoke test)")

    start = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="llm_step_"))
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "llm_step.log"
    log_file.write_text("")
    settings = Settings(context=args.context, prefill=args.prefill, dtype=DTYPES[args.dtype], device=device,
                        steps=args.steps, warmup=args.warmup, prefill_steps=args.prefill_steps,
                        compile=not args.no_compile, compile_mode=args.compile_mode,
                        compile_backend=args.compile_backend,
                        deadline=start + args.budget_s, runner=args.runner, runner_timeout_s=args.runner_timeout_s,
                        log_file=log_file, plain_launch_row=args.compare_programmatic_launch)
    import triton

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test, not a benchmark)"
    bandwidth = copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 24))
    log(f"{device_name}; copy bandwidth {bandwidth / 1e12:.3f} TB/s (read + write)")
    meta = dict(context=args.context, prefill=args.prefill, dtype=args.dtype, device_name=device_name,
                torch=torch.__version__, triton=triton.__version__, host=platform.processor() or platform.machine(),
                cpus=os.cpu_count(), bandwidth=bandwidth,
                compile_mode=args.compile_mode if args.compile_backend == "inductor" else f"backend {args.compile_backend}", steps=args.steps,
                warmup=args.warmup, prefill_steps=args.prefill_steps,
                timer=("CUDA events, no synchronisation between steps" if device.type == "cuda" else "the host clock"),
                compile_capture=("no CUDA graph on the CPU" if device.type != "cuda" else
                                 "with Inductor's own CUDA graphs" if settings.compile_graphs_itself() else
                                 "its step captured in one CUDA graph as eager's is"),
                command="python3 bench/llm_step.py " + " ".join(sys.argv[1:] if argv is None else argv), models={})
    rows: list[Row] = []
    for name in models:
        log(f"{name}: {time.perf_counter() - start:.0f} s into the run")
        model_rows, meta["models"][name] = bench_model(name, settings, bandwidth)
        rows += model_rows
        if name in ptes:
            rows += runner_rows(name, ptes[name], settings)
        meta["seconds"] = time.perf_counter() - start
        write(out, rows, meta)  # after every model: a run cut short keeps what it measured
    table = write(out, rows, meta)
    print(table, flush=True)
    return 0


def write(out: Path, rows: list[Row], meta: dict) -> str:
    table = markdown(rows, meta)
    (out / "llm_step.md").write_text(table)
    (out / "llm_step.json").write_text(json.dumps(dict(meta=meta, rows=derived(rows)), indent=1)
                                       + "\n")
    return table


if __name__ == "__main__":
    sys.exit(main())
