"""Running cuda_gqa_llm_runner (runtime/runner/llm_runner.cpp) from a benchmark on the GPU machine,
and reading its timings: shared by bench/llm_decode_speed.py and bench/llm_step.py.

The runner and the libraries it loads travel in one folder (for example `.gpu-1b/`): the
runner finds them through LD_LIBRARY_PATH set to that folder (runner_env).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

RUNNER = "cuda_gqa_llm_runner"


def runner_env(folder: Path) -> dict:
    """The environment that lets the runner in `folder` load the libraries beside it."""
    return dict(os.environ, LD_LIBRARY_PATH=f"{folder}:{os.environ.get('LD_LIBRARY_PATH', '')}")


def run_logged(command: list, log_file: Path, env=None, log: Callable[[str], None] = print,
               timeout: Optional[float] = None) -> tuple[int, str]:
    """Runs `command`, appends it and its output to `log_file`, prints the output; (exit code,
    stdout + stderr). A command past `timeout` seconds is killed and reported as exit 124."""
    log("$ " + " ".join(map(str, command)))
    start = time.perf_counter()
    try:
        result = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, timeout=timeout)
        code, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as e:
        code = 124
        output = (_text(e.stdout) + _text(e.stderr) + f"\nerror: killed after {timeout:.0f} s\n")
    with log_file.open("a") as f:
        f.write(f"$ {' '.join(map(str, command))}\n{output}\n(exit {code}, {time.perf_counter() - start:.1f} s)\n\n")
    print(output, end="", flush=True)
    return code, output


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def parse_decode_at(output: str) -> dict:
    """The runner's --decode-at lines: steps, first/last position, median_ms, p90_ms, tokens_per_s,
    and where the program has CudaGqaBackend delegates attention_ms and attention_share."""
    found = {}
    m = re.search(r"^decode-at: (\d+) steps at positions (\d+)\.\.(\d+): median ([0-9.]+) ms, p90 ([0-9.]+) ms "
                  r"per step, ([0-9.]+) tokens/s", output, re.M)
    if m:
        found.update(steps=int(m[1]), first=int(m[2]), last=int(m[3]), median_ms=float(m[4]), p90_ms=float(m[5]),
                     tokens_per_s=float(m[6]))
    m = re.search(r"^attention: CudaGqaBackend execute median ([0-9.]+) ms per step \(([0-9.]+)% of the step", output,
                  re.M)
    if m:
        found.update(attention_ms=float(m[1]), attention_share=float(m[2]) / 100)
    return found


def parse_prefill(output: str) -> dict:
    """The runner's prompt line: prompt_tokens, prefill_ms (the timed prefill),
    calls and chunk (the program's prefill length)."""
    m = re.search(r"^prompt (\d+) tokens: prefill ([0-9.]+) ms \((\d+) call\(s\) of (\d+) tokens\)", output, re.M)
    if not m:
        return {}
    return dict(prompt_tokens=int(m[1]), prefill_ms=float(m[2]), calls=int(m[3]), chunk=int(m[4]))


def error_line(output: str, code: int) -> str:
    """The runner's own `error:` line when it printed one, else the exit code."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    return errors[-1][len("error:"):].strip() if errors else f"exit {code}"
