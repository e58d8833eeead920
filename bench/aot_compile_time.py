"""Time lowering a 32-layer Llama-3-8B-shaped attention stack for every default arch, cold and warm.

    python bench/aot_compile_time.py [--layers 32]

Cold: empty compile caches (cuda_gqa's and Triton's, in a temporary
folder). Warm: the same caches, filled by the cold run. Each run is a fresh
process that lowers a prefill stack and a decode stack (bench/attention_stack.py)
with CudaGqaPartitioner's defaults and times the AOT stage (CudaGqaBackend.preprocess
of every layer: kernel choice, Triton -> cubin, payload) and the whole lowering
(torch.export + to_edge_transform_and_lower + to_executorch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from attention_stack import SHAPES, lower_stack  # noqa: E402


def run_once(layers: int) -> dict:
    from cuda_gqa.backends.compile_specs import DEFAULT_ARCHS
    from cuda_gqa.backends.cuda_gqa_backend import CudaGqaBackend

    preprocess = CudaGqaBackend.preprocess
    in_preprocess = [0.0]

    def timed_preprocess(*args, **kwargs):
        start = time.perf_counter()
        try:
            return preprocess(*args, **kwargs)
        finally:
            in_preprocess[0] += time.perf_counter() - start

    CudaGqaBackend.preprocess = staticmethod(timed_preprocess)
    result = {"archs": list(DEFAULT_ARCHS)}
    for shape in SHAPES:
        in_preprocess[0] = 0.0
        start = time.perf_counter()
        program = lower_stack(layers, shape)
        result[shape] = {"lowering": time.perf_counter() - start, "aot": in_preprocess[0],
                         "pte_bytes": len(program.buffer)}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--run-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_once:
        print(json.dumps(run_once(args.layers)))
        return 0

    print(f"{args.layers}-layer attention stack, H_q 32, H_kv 8, D 128, bf16; prefill L=512, decode L_kv=4096; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before")
    with tempfile.TemporaryDirectory() as caches:
        env = dict(os.environ, CUDA_GQA_CACHE_DIR=f"{caches}/cuda_gqa", TRITON_HOME=f"{caches}/triton")
        for run in ("cold", "warm"):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--layers", str(args.layers), "--run-once"], env=env,
                                 check=True, capture_output=True, text=True).stdout
            wall = time.perf_counter() - start
            r = json.loads(out.splitlines()[-1])
            archs = ",".join(f"sm_{a}" for a in r["archs"])
            aot = sum(r[s]["aot"] for s in SHAPES)
            lowering = sum(r[s]["lowering"] for s in SHAPES)
            shapes = ", ".join(f"{s} {r[s]['aot']:.1f} / {r[s]['lowering']:.1f} s" for s in SHAPES)
            print(f"{run:4}: AOT stage {aot:5.1f} s, whole lowering {lowering:5.1f} s ({shapes}); "
                  f"process wall {wall:.1f} s; {archs}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
