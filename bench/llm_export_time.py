"""Export time of each tiny LLM preset, as `python -m cuda_gqa.export.llm --preset NAME` runs it
(XNNPACK for the projections, CudaGqaBackend cubins for the 5 default archs), cold and warm.

    python bench/llm_export_time.py [--presets tiny-llama3,...] [--max-seq-len 256] [--out DIR]

Cold: an empty cuda_gqa compile cache and Triton cache (fresh temporary folders); warm: the
caches the cold export filled. Each export runs in a fresh process, so imports count, as they
do for a user. Prints a markdown table (and writes DIR/llm_export_time.md); the target of
issue 6 is under 60 s per tiny preset on the 2-core build machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cuda_gqa.export.llm.presets import TINY_PRESETS


def export_seconds(preset: str, max_seq_len: int, out: Path, caches: Path) -> tuple[float, str]:
    env = {**os.environ, "CUDA_GQA_CACHE_DIR": str(caches / "cuda_gqa"), "TRITON_CACHE_DIR": str(caches / "triton")}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "cuda_gqa.export.llm", "--preset", preset, "--max-seq-len",
                             str(max_seq_len), "--out", str(out)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{preset}: export failed:\n{result.stdout}\n{result.stderr}")
    delegated = [line for line in result.stdout.splitlines() if " attention calls delegated" in line]
    return seconds, "; ".join(delegated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(TINY_PRESETS))
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = ["| preset | cold s | warm s | delegated |", "|---|---|---|---|"]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            caches = Path(tmp) / preset
            pte = Path(tmp) / f"{preset}.pte"
            cold, delegated = export_seconds(preset, args.max_seq_len, pte, caches)
            warm, _ = export_seconds(preset, args.max_seq_len, pte, caches)
            rows.append(f"| {preset} | {cold:.1f} | {warm:.1f} | {delegated} |")
            print(rows[-1], flush=True)
    table = "\n".join([f"{os.cpu_count()} CPUs, load average {load:.1f} at the start, max_seq_len "
                       f"{args.max_seq_len}", "", *rows])
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "llm_export_time.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
