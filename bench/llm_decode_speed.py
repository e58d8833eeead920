"""Long-context decode of a real-shaped LLM: attention on the GPU (CudaGqaBackend) against attention on the CPU.

    python bench/llm_decode_speed.py export DIR         # here (make gpu-llm-1b): the .pte files and the weights' manifest
    python3 bench/llm_decode_speed.py run DIR --out OUT # GPU machine, one command, no executorch

The model is a preset with seeded weights (default llama3.2-1b, float16), its
parameters in one .ptd shared by every .pte (ExecuTorch external weights):

- `gpu-<S>.pte`: attention and its KV cache on the GPU (cubins for --archs),
  everything else on XNNPACK; S = the longest context, one program for all.
- `cpu-<S>.pte` for each context S: the same model with attention left on the
  CPU (XNNPACK and ExecuTorch's kernels), exported at S, because that program
  attends over its whole cache (max_seq_len keys, the mask hiding the unfilled
  ones) whatever the position: each context gets a baseline of its own size.

The .ptd (2.5 GB in float16) cannot travel to the GPU machine (64 MiB a run),
so `export` keeps only its prefix and manifest (export/llm/ptd_manifest.py),
and `run` rebuilds it from the preset's seed, checking every segment's
SHA-256. `run` then

1. writes eager PyTorch's greedy generation (prefill of an 11-token prompt,
   then 64 decode steps; on CUDA in float32 from the same float16 weights)
   and checks the logits of the GPU program and of the shortest CPU program
   against it, every row (cuda_gqa_llm_runner --teacher-forcing: each step
   is fed eager's token, so a near-tie that flips a token does not end the
   comparison). A float32 program must meet the runner's element tolerance;
   a float16/bfloat16 one must be as close to eager as the CPU-attention
   program is (half_precision_verdict: float16 projections alone put both
   far outside a float32 tolerance);
2. times decode steps at each context C (runner --decode-at C-N: N steps at
   positions up to C, the cache holding whatever is there; the delegate
   attends kv_len = position + 1 keys) for the GPU program and for the CPU
   program of that context (and the longest CPU program at every context:
   its step time against the position); measurements stop after --budget-s;
3. measures the share of step time in attention: for the GPU program,
   the wall time inside CudaGqaBackend's execute calls during each step (the
   backend's own clock, cuda_gqa_execute_time_ns(): the mask and q/k/v
   staging copies, the kernels and the wait for them) over the step's wall
   time; for the CPU program, whose attention is spread over XNNPACK
   partitions and ExecuTorch kernels, it is derived: its step time minus the
   GPU program's non-attention time at the same context (the projections,
   norms, embedding and lm_head are the same XNNPACK and CPU work in both);
4. writes OUT/llm_decode_speed.md (the table, the correctness check, the
   commands) and OUT/llm_decode_speed.png (step time against context).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from llm_runner_cli import parse_decode_at, run_logged, runner_env

PRESET = "llama3.2-1b"
CONTEXTS = (4096, 16384, 32768)
REFERENCE_TOKENS = 65  # the prefill's row, then 64 decode steps
REFERENCE_PROMPT_LEN = 11
STEPS = 32  # timed decode steps of a GPU-attention program
CPU_STEPS = 12  # of a CPU-attention program (up to a second each at 32K)
WARMUP = 3
BUDGET_S = 480  # measurements stop (and the report is written) after this; a run has 10 minutes
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PTD = "weights.ptd"
SANITY_PRESET = "tiny-llama3"


def _log(message: str) -> None:
    print(f"[llm_decode_speed] {message}", flush=True)


def export_sanity(folder: Path, archs: list[str]) -> None:
    """folder/sanity/: tiny-llama3 (float32) with GPU attention and external weights, rebuilt and
    checked first on the GPU machine: the same route in seconds, and a program whose numbers
    should match eager closely (it tells a wrong route from float16 rounding)."""
    import warnings

    from cuda_gqa.export.llm.pipeline import export_llm
    from cuda_gqa.export.llm.presets import build_preset
    from cuda_gqa.export.llm.ptd_manifest import describe_ptd

    warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")
    warnings.filterwarnings("ignore", category=FutureWarning)
    model = build_preset(SANITY_PRESET, max_seq_len=128)
    result = export_llm(model, archs=archs, out=folder / "sanity" / "model.pte", external_weights=True,
                        log=lambda m: _log(f"sanity: {m}"))
    describe_ptd(result.ptd, model, preset=SANITY_PRESET, seed=0, dtype="float32")
    result.ptd.unlink()
    _log(result.summary().replace("\n", "; "))


def export_variant(folder: Path, preset: str, dtype: str, attention: str, length: int, archs: list[str]) -> None:
    """One program, in a process of its own (ExecuTorch's lowering keeps memory across exports: the
    third export of llama3.2-1b in one process went past 23 GB). Writes NAME.pte and NAME.json; the
    first also writes the shared weights file, its prefix and manifest, the others check that their
    .ptd holds the same named data and delete it."""
    import warnings

    from cuda_gqa.export.llm.pipeline import export_llm
    from cuda_gqa.export.llm.presets import build_preset
    from cuda_gqa.export.llm.ptd_manifest import describe_ptd, ptd_contents

    warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")
    warnings.filterwarnings("ignore", category=FutureWarning)
    name = f"{attention}-{length}"
    start = time.perf_counter()
    model = build_preset(preset, max_seq_len=length, dtype=DTYPES[dtype])
    _log(f"{name}: built {preset} ({dtype}, seeded weights) in {time.perf_counter() - start:.0f} s")
    result = export_llm(model, archs=archs if attention == "gpu" else None, out=folder / f"{name}.pte",
                        external_weights=True, log=lambda m: _log(f"{name}: {m}"))
    _log(result.summary().replace("\n", "; "))
    variant = dict(name=name, attention=attention, max_seq_len=length, pte=f"{name}.pte",
                   pte_bytes=result.size_bytes, ptd_bytes=result.ptd_size_bytes,
                   export_seconds=round(result.seconds, 1),
                   delegated={m: len(result.delegated(m)) for m in result.reports})
    ptd, shared = result.ptd, folder / PTD
    del result
    if not shared.exists():
        ptd.rename(shared)
        manifest = describe_ptd(shared, model, preset=preset, seed=0, dtype=dtype)
        _log(f"{PTD}: {manifest['size'] / 2**20:.1f} MiB, {len(manifest['entries'])} segments, prefix "
             f"{manifest['prefix']['size']} bytes")
    elif ptd_contents(ptd) != ptd_contents(shared):  # the same named data, maybe in another order
        raise RuntimeError(f"{ptd} holds other data than {shared}: the variants cannot share a weights file")
    else:
        ptd.unlink()
    (folder / f"{name}.json").write_text(json.dumps(variant, indent=1) + "\n")


def export(folder: Path, preset: str, dtype: str, contexts: list[int], archs: list[str], keep_ptd: bool) -> None:
    """The programs, each exported by a child process (export_variant); one already in the folder
    (NAME.pte and NAME.json) is kept, so an interrupted export resumes."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    variants = [("gpu", max(contexts))] + [("cpu", c) for c in contexts]
    info = dict(preset=preset, dtype=dtype, contexts=contexts, archs=archs, variants=[])
    for attention, length in variants:
        name = f"{attention}-{length}"
        done = folder / f"{name}.json"
        if done.exists() and (folder / f"{name}.pte").exists() and (folder / f"{PTD}.manifest.json").exists():
            _log(f"{name}: already exported")
        else:
            subprocess.run([sys.executable, __file__, "export-variant", str(folder), "--preset", preset, "--dtype",
                            dtype, "--attention", attention, "--max-seq-len", str(length), "--archs",
                            ",".join(archs)], check=True)
        info["variants"].append(json.loads(done.read_text()))
        (folder / "export.json").write_text(json.dumps(info, indent=1) + "\n")
    if not keep_ptd:
        (folder / PTD).unlink(missing_ok=True)
    if not (folder / "sanity" / "model.ptd.manifest.json").exists():
        export_sanity(folder, archs)
    _log(f"exported {len(variants)} programs to {folder} in {time.perf_counter() - start:.0f} s")


# ---------------------------------------------------------------- GPU machine


def _run(command: list, log_file: Path, env=None) -> tuple[int, str]:
    return run_logged(command, log_file, env, _log)


def _summary_line(line: str) -> bool:
    """The runner's lines a report keeps (not its token list)."""
    return (line.startswith(("loaded", "prompt", "decode:", "decode-at:", "attention:", "logits:", "error:"))
            or line.startswith("tokens:") and "match eager" in line)


def _check_sanity(sanity: Path, out: Path, runner: Path, device: str, log_file: Path, env) -> tuple[int, list[str]]:
    from cuda_gqa.export.llm.presets import build_preset
    from cuda_gqa.export.llm.ptd_manifest import PtdRebuildError, rebuild_ptd
    from cuda_gqa.export.llm.reference import write_reference

    model = build_preset(SANITY_PRESET, max_seq_len=REFERENCE_PROMPT_LEN + REFERENCE_TOKENS, device=device)
    try:
        rebuild_ptd(sanity / "model.ptd.manifest.json", sanity / "model.ptd", model=model, log=_log)
    except PtdRebuildError as e:
        return 1, [f"error: {e}"]
    reference = out / "sanity"
    write_reference(model.to(device), sanity / "model.pte", REFERENCE_TOKENS, REFERENCE_PROMPT_LEN, folder=reference)
    code, summary = _check_generation(runner, sanity / "model.pte", sanity / "model.ptd", reference, log_file, env)
    (sanity / "model.ptd").unlink()
    return code, summary


def _check_generation(runner: Path, pte: Path, ptd: Path, reference: Path, log_file: Path, env,
                      extra: tuple = ()) -> tuple[int, list[str]]:
    """The runner's prefill and decode of `pte` against the eager reference in `reference`, each
    step fed eager's token (every row of logits compared); its exit code and summary lines."""
    code, output = _run([runner, pte, "--data", ptd, "--prompt", reference / "prompt.bin", "--new-tokens",
                         REFERENCE_TOKENS, "--expected-tokens", reference / "expected_tokens.bin",
                         "--expected-logits", reference / "expected_logits.bin", "--teacher-forcing", *extra],
                        log_file, env)
    return code, [line for line in output.splitlines() if _summary_line(line)]


# A float16 program's logits sit as far from float32 eager as float16 allows, our delegate or not:
# the rest of the model runs in float16 on XNNPACK (on the H200, both the GPU- and the
# CPU-attention program of llama3.2-1b: max |error| 0.31 and 0.34 for logits up to 4.9, 59% of elements
# outside the float32 tolerance). Such a program passes when it is no farther from eager than the
# same export with attention left to ExecuTorch's CPU kernels, up to rounding noise: mean |error|
# within 5%, max |error| within 25%. A float32 program is held to the runner's element tolerance.
HALF_MEAN_SLACK = 1.05
HALF_MAX_SLACK = 1.25


def half_precision_verdict(gpu: torch.Tensor, cpu: torch.Tensor, eager: torch.Tensor,
                           names: tuple[str, str] = ("gpu", "cpu")) -> tuple[int, list[str]]:
    """(0 pass / 1 fail, summary lines): is the GPU-attention program's logits' distance from eager
    within HALF_MEAN_SLACK (mean) and HALF_MAX_SLACK (max) of the CPU-attention program's?"""
    if not gpu.shape == cpu.shape == eager.shape:
        return 1, [f"logits of {gpu.numel()}, {cpu.numel()} and {eager.numel()} values: the programs did not "
                   f"write every row"]
    gpu_error, cpu_error = (gpu - eager).abs(), (cpu - eager).abs()
    ok = (gpu_error.mean() <= HALF_MEAN_SLACK * cpu_error.mean()
          and gpu_error.max() <= HALF_MAX_SLACK * cpu_error.max())
    return (0 if ok else 1), [
        f"max |logits| of eager: {eager.abs().max().item():.3f}",
        f"{names[0]} vs eager: mean_abs_diff={gpu_error.mean().item():.4g}, max_abs_diff={gpu_error.max().item():.4g}",
        f"{names[1]} vs eager: mean_abs_diff={cpu_error.mean().item():.4g}, max_abs_diff={cpu_error.max().item():.4g}",
        f"{names[0]} vs {names[1]}: mean_abs_diff={(gpu - cpu).abs().mean().item():.4g}, "
        f"max_abs_diff={(gpu - cpu).abs().max().item():.4g}",
        f"{names[0]} within {HALF_MEAN_SLACK}x (mean) and {HALF_MAX_SLACK}x (max) of {names[1]}'s distance from "
        f"eager: {'PASS' if ok else 'FAIL'}"]


def _compare_programs(out: Path, checked: list, reference: Path) -> tuple:
    """The decisive check of a float16/bfloat16 export: the GPU-attention program's logits against
    eager's, next to the CPU-attention program's (same XNNPACK projections; only where attention
    runs differs)."""
    def floats(path: Path) -> torch.Tensor:
        return torch.from_file(str(path), dtype=torch.float32, size=path.stat().st_size // 4)

    files = [out / f"{v['name']}_logits.bin" for v in checked]
    missing = [path.name for path in files if not path.exists()]
    if missing:
        return (f"{checked[0]['name']} against eager", 1, [f"no logits written: {', '.join(missing)}"])
    gpu, cpu = (floats(path) for path in files)
    code, lines = half_precision_verdict(gpu, cpu, floats(reference / "expected_logits.bin"),
                                         (checked[0]["name"], checked[1]["name"]))
    return (f"{checked[0]['name']} against eager, as close as {checked[1]['name']} (logits rows)", code, lines)


def run(folder: Path, out: Path, device: str, steps: int, cpu_steps: int, warmup: int, budget_s: float,
        check_only: bool = False) -> int:
    from cuda_gqa.export.llm.presets import build_preset
    from cuda_gqa.export.llm.ptd_manifest import PtdRebuildError, rebuild_ptd
    from cuda_gqa.export.llm.reference import write_reference

    deadline = time.perf_counter() + budget_s
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "llm_decode_speed.log"
    log_file.write_text("")
    info = json.loads((folder / "export.json").read_text())
    runner = folder / "cuda_gqa_llm_runner"
    env = runner_env(folder)
    gpu_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    _log(f"{gpu_name}, torch {torch.__version__}, {os.cpu_count()} CPUs")

    checks = []
    sanity = folder / "sanity"
    if sanity.is_dir():  # the tiny program first: the same route in seconds
        code, summary = _check_sanity(sanity, out, runner, device, log_file, env)
        checks.append((f"sanity/model.pte ({SANITY_PRESET}, float32, attention on the GPU)", code, summary))

    # 1. The weights: rebuilt from the seed, every segment checked.
    ptd = folder / PTD
    start = time.perf_counter()
    model = build_preset(info["preset"], max_seq_len=REFERENCE_PROMPT_LEN + REFERENCE_TOKENS,
                         dtype=DTYPES[info["dtype"]], device=device)
    build_s = time.perf_counter() - start
    try:
        rebuild_ptd(folder / f"{PTD}.manifest.json", ptd, model=model, log=_log)
    except PtdRebuildError as e:
        if device == "cpu":
            _log(f"FAILED: {e}")
            (out / "llm_decode_speed.md").write_text(f"# llm_decode_speed: the weights could not be rebuilt\n\n{e}\n")
            return 1
        # Should not happen (integer ops and one rounding are exact on any device); the CPU is
        # where the export computed them.
        _log(f"weights computed on {device} differ ({e}); computing them on the CPU")
        model = build_preset(info["preset"], max_seq_len=REFERENCE_PROMPT_LEN + REFERENCE_TOKENS,
                             dtype=DTYPES[info["dtype"]])
        try:
            rebuild_ptd(folder / f"{PTD}.manifest.json", ptd, model=model, log=_log)
        except PtdRebuildError as e:
            _log(f"FAILED: {e}")
            (out / "llm_decode_speed.md").write_text(f"# llm_decode_speed: the weights could not be rebuilt\n\n{e}\n")
            return 1
    ptd_s = time.perf_counter() - start - build_s

    # 2. Eager reference (CUDA, float32 from the same weights) and the GPU program's generation against it.
    start = time.perf_counter()
    reference = out / "reference"
    eager = model.to(device=device, dtype=torch.float32)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    gpu = next(v for v in info["variants"] if v["attention"] == "gpu")
    write_reference(eager, folder / gpu["pte"], REFERENCE_TOKENS, REFERENCE_PROMPT_LEN, folder=reference)
    del eager, model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    reference_s = time.perf_counter() - start
    checked = [gpu] + [v for v in info["variants"] if v["attention"] == "cpu"][:1]
    half = info["dtype"] != "float32"
    for variant in checked:
        code, summary = _check_generation(runner, folder / variant["pte"], ptd, reference, log_file, env,
                                          ("--logits-out", out / f"{variant['name']}_logits.bin"))
        if half:  # the float32 element tolerance, reported; the relative check below decides
            summary = [f"float32 element tolerance, informational for a {info['dtype']} program: runner exit "
                       f"{code}", *summary]
            code = 0
        checks.append((variant["name"], code, summary))
    if half:
        checks.append(_compare_programs(out, checked, reference))
    if check_only:
        ptd.unlink()
        (out / "llm_decode_speed_checks.json").write_text(json.dumps(checks, indent=1))
        for name, code, lines in checks:
            print(f"{name} (exit {code})", *lines, sep="\n  ")
        return 0 if all(code == 0 for _, code, _ in checks) else 1

    # 3. Decode steps at each context.
    # The longest CPU program is timed at the shorter contexts too ("cpu_full"): does its step
    # time depend on the position (it attends its whole cache whatever the position)?
    # Each context's GPU and CPU program first, the extra positions of the longest CPU program
    # after them: what the budget cuts, if anything, is the least needed.
    cpu = {v["max_seq_len"]: v for v in info["variants"] if v["attention"] == "cpu"}
    rows = [dict(context=context) for context in info["contexts"]]
    runs = [(row, side, variant) for row in rows for side, variant in (("gpu", gpu), ("cpu", cpu[row["context"]]))]
    runs += [(row, "cpu_full", cpu[max(cpu)]) for row in rows if row["context"] < max(cpu)]
    for row, side, variant in runs:
        context = row["context"]
        if time.perf_counter() > deadline:
            row[side] = dict(error=f"skipped: past the {budget_s:.0f} s budget", program=variant["name"])
            continue
        n = steps if variant["attention"] == "gpu" else cpu_steps
        code, output = _run([runner, folder / variant["pte"], "--data", ptd, "--decode-at", context - n,
                             "--steps", n, "--warmup", warmup], log_file, env)
        row[side] = parse_decode_at(output) if code == 0 else dict(error=f"exit {code}")
        row[side]["program"] = variant["name"]
        _log(f"context {context}, {side}: {json.dumps(row[side])}")
    ptd.unlink()

    table = _markdown(info, rows, checks, gpu_name, dict(build=build_s, ptd=ptd_s, reference=reference_s), steps,
                      cpu_steps, warmup)
    (out / "llm_decode_speed.md").write_text(table)
    (out / "llm_decode_speed.json").write_text(json.dumps(dict(info=info, rows=rows, checks=checks), indent=1))
    try:
        _plot(rows, info, out / "llm_decode_speed.png")
    except Exception as e:  # the table matters more than the picture
        _log(f"no plot: {e}")
    print(table)
    return 0 if all(code == 0 for _, code, _ in checks) else 1


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def _markdown(info, rows, checks, gpu_name, seconds, steps, cpu_steps, warmup) -> str:
    lines = [f"# Decode at long context: {info['preset']} ({info['dtype']}, seeded weights), attention on the GPU "
             f"vs on the CPU", "",
             f"{gpu_name}; host {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch "
             f"{torch.__version__}. Programs exported with `python bench/llm_decode_speed.py export` (ExecuTorch "
             f"1.5.1, XNNPACK for the rest of the model); weights rebuilt here from the seed in "
             f"{seconds['build']:.0f} s + {seconds['ptd']:.0f} s (every SHA-256 as exported); eager reference "
             f"{seconds['reference']:.0f} s.", "",
             "## Correctness: prefill of an 11-token prompt, then 64 decode steps, against eager PyTorch "
             "(CUDA, float32 from the same weights; each step fed eager's greedy token, every row of logits "
             "compared)", ""]
    for name, code, summary in checks:
        lines.append(f"- `{name}` (exit {code}):")
        lines += [f"  - `{line}`" for line in summary]
    lines += ["", f"## Decode step time (median over the last {steps} positions before the context for GPU "
                  f"attention, {cpu_steps} for CPU attention, after {warmup} warm-up steps)", "",
              "| context | GPU attention: median ms | p90 ms | tokens/s | attention ms | attention share | "
              "CPU attention: median ms | p90 ms | tokens/s | attention share (derived) | speed-up |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        g, c = row.get("gpu", {}), row.get("cpu", {})
        non_attention = (g["median_ms"] - g["attention_ms"]) if "attention_ms" in g else None
        cpu_share = (1 - non_attention / c["median_ms"]) if non_attention is not None and "median_ms" in c else None
        speedup = (c["median_ms"] / g["median_ms"]) if "median_ms" in g and "median_ms" in c else None
        share = g.get("attention_share")
        lines.append(f"| {row['context']} | {_fmt(g.get('median_ms'))} | {_fmt(g.get('p90_ms'))} | "
                     f"{_fmt(g.get('tokens_per_s'), 1)} | {_fmt(g.get('attention_ms'))} | "
                     f"{'-' if share is None else f'{100 * share:.1f}%'} | {_fmt(c.get('median_ms'))} | "
                     f"{_fmt(c.get('p90_ms'))} | {_fmt(c.get('tokens_per_s'), 1)} | "
                     f"{'-' if cpu_share is None else f'{100 * cpu_share:.1f}%'} | "
                     f"{'-' if speedup is None else f'{speedup:.2f}x'} |")
        for side in ("gpu", "cpu", "cpu_full"):
            if "error" in row.get(side, {}):
                lines.append(f"| | {side} program {row[side]['program']}: {row[side]['error']} |")
    full = [(row["context"], row["cpu_full"]) for row in rows if "median_ms" in row.get("cpu_full", {})]
    own = [(row["context"], row["cpu"]) for row in rows if "median_ms" in row.get("cpu", {})
           and row["cpu"]["program"] == (full[0][1]["program"] if full else None)]
    if full:
        lines += ["", f"The longest CPU program (`{full[0][1]['program']}`) at every position, median step: "
                  + ", ".join(f"{f['median_ms']:.2f} ms at context {c}" for c, f in full + own)
                  + " (a program with attention on the CPU attends its whole cache at every step)."]
    lines += ["", "GPU attention: one program (`" + next(v["pte"] for v in info["variants"] if v["attention"] == "gpu")
              + "`) for every context; its delegates attend kv_len = position + 1 keys. CPU attention: a program "
                "per context exported at that max_seq_len (it attends its whole cache at every step). Attention "
                "share, GPU: wall time inside CudaGqaBackend execute during the step (mask and q/k/v/out copies "
                "between host and device, kernels, the wait) over the step's wall time, median over steps. "
                "CPU (derived): 1 - (GPU step - GPU attention) / CPU step, the non-attention work being the same "
                "XNNPACK and CPU kernels in both programs.", ""]
    lines += ["Programs:", "", "| program | attention | max_seq_len | .pte MiB | export s (2-core build machine) |",
              "|---|---|---:|---:|---:|"]
    for v in info["variants"]:
        lines.append(f"| {v['pte']} | {v['attention']} | {v['max_seq_len']} | {v['pte_bytes'] / 2**20:.1f} | "
                     f"{v['export_seconds']} |")
    lines.append(f"\nShared weights file `{PTD}`: {info['variants'][0]['ptd_bytes'] / 2**20:.1f} MiB.\n")
    return "\n".join(lines) + "\n"


def _plot(rows, info, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_share) = plt.subplots(1, 2, figsize=(9, 3.6))
    longest = max(info["contexts"])
    for side, label in (("gpu", "attention on the GPU (cuda_gqa)"), ("cpu", "attention on the CPU (max_seq_len = context)"),
                        ("cpu_full", f"attention on the CPU (max_seq_len {longest})")):
        points = [(r["context"], r[side]) for r in rows if "median_ms" in r.get(side, {})]
        if side == "cpu_full":
            points += [(r["context"], r["cpu"]) for r in rows if r["context"] == longest and "median_ms" in r.get("cpu", {})]
        if points:
            ax_time.plot([c for c, _ in points], [s["median_ms"] for _, s in points], marker="o", label=label)
    points = [(r["context"], r["gpu"]) for r in rows if "attention_ms" in r.get("gpu", {})]
    if points:
        ax_time.plot([c for c, _ in points], [s["attention_ms"] for _, s in points], marker="x", linestyle="--",
                     label="GPU program: inside CudaGqaBackend execute")
        ax_share.bar([str(c) for c, _ in points], [100 * s["attention_share"] for _, s in points])
    for ax in (ax_time,):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens in the cache)")
        ax.set_ylabel("ms per decode step (median)")
        ax.legend(fontsize=7)
    ax_time.set_title(f"{info['preset']} {info['dtype']} decode")
    ax_share.set_title("GPU program: attention share of a step")
    ax_share.set_xlabel("context")
    ax_share.set_ylabel("%")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="build machine: the .pte files and the weights' prefix and manifest")
    e.add_argument("folder", type=Path)
    e.add_argument("--preset", default=PRESET)
    e.add_argument("--dtype", choices=DTYPES, default="float16")
    e.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    e.add_argument("--archs", default="sm_90")
    e.add_argument("--keep-ptd", action="store_true", help=f"keep {PTD} (to run the programs here)")
    v = sub.add_parser("export-variant", help="one program (export runs each in a process of its own)")
    v.add_argument("folder", type=Path)
    v.add_argument("--preset", default=PRESET)
    v.add_argument("--dtype", choices=DTYPES, default="float16")
    v.add_argument("--attention", choices=("gpu", "cpu"), required=True)
    v.add_argument("--max-seq-len", type=int, required=True)
    v.add_argument("--archs", default="sm_90")
    r = sub.add_parser("run", help="GPU machine: rebuild the weights, check against eager, time, write OUT")
    r.add_argument("folder", type=Path)
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/llm_decode_speed")))
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the seeded weights and the eager reference are computed")
    r.add_argument("--steps", type=int, default=STEPS, help="timed steps of the GPU-attention program")
    r.add_argument("--cpu-steps", type=int, default=CPU_STEPS, help="timed steps of a CPU-attention program")
    r.add_argument("--warmup", type=int, default=WARMUP)
    r.add_argument("--budget-s", type=float, default=BUDGET_S,
                   help="no new measurement starts after this many seconds (default %(default)s)")
    r.add_argument("--check-only", action="store_true", help="the correctness checks only, no timing")
    args = parser.parse_args(argv)
    if args.command == "export":
        export(args.folder, args.preset, args.dtype, [int(c) for c in args.contexts.split(",")],
               args.archs.split(","), args.keep_ptd)
        return 0
    if args.command == "export-variant":
        export_variant(args.folder, args.preset, args.dtype, args.attention, args.max_seq_len, args.archs.split(","))
        return 0
    return run(args.folder, args.out, args.device, args.steps, args.cpu_steps, args.warmup, args.budget_s,
               args.check_only)


if __name__ == "__main__":
    sys.exit(main())
