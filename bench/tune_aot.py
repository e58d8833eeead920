"""Sweep the forward kernel's tiles as AOT cubins: what the product ships, not the Triton JIT.

The GPU machine's Triton may differ from the one that compiles .pte files
(there: 3.6; here: the pinned 3.9), and the same tiles can time differently
under the two compilers. So the sweep compiles here and times there:

    python bench/tune_aot.py emit DIR [--head-dims 128,96,256] [--blocks-n 64,128] [--stages 2,3]
                                      [--dtype bfloat16|float16] [--warp-specialized]   # build machine
    python3 bench/tune_aot.py time DIR [--out FILE]                 # GPU machine: time each through CubinLauncher

Shape: causal prefill, B=1, 32/8 heads, L = 4096 (the tuning table's
attention_fwd shape). --warp-specialized sweeps the sm_90 warp-specialized
forward (kernels/attention_fwd_ws.py: BLOCK_M and warps fixed) instead of
gqa_attention_fwd: the attention_fwd_ws entries. Each payload is checked
against the float32 reference before it is timed, as in bench_attention.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

LENGTH = 4096


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def configs(blocks_n: list[int], stages: list[int], warp_specialized: bool) -> list[dict]:
    """BLOCK_M 64 with 4 warps, 128 with 4 or 8, for every BLOCK_N and stage count given;
    warp_specialized: the warp-specialized forward's fixed BLOCK_M and warps instead."""
    if warp_specialized:
        from cuda_gqa.backends.heuristics import WS_BLOCK_M, WS_NUM_WARPS

        return [dict(block_m=WS_BLOCK_M, block_n=n, num_warps=WS_NUM_WARPS, num_stages=s, warp_specialized=True)
                for n, s in itertools.product(blocks_n, stages)]
    return [dict(block_m=m, block_n=n, num_warps=w, num_stages=s)
            for m, n, w, s in itertools.product((64, 128), blocks_n, (4, 8), stages)
            if not (m == 64 and w == 8)]


def emit(out: Path, head_dims: list[int], arch: int, blocks_n: list[int], stages: list[int], dtype_name: str,
         warp_specialized: bool) -> None:
    from cuda_gqa.backends.attention_plan import build_attention_payload
    from cuda_gqa.backends.heuristics import KernelConfig, estimated_shared_bytes

    dtype = DTYPES[dtype_name]
    out.mkdir(parents=True, exist_ok=True)
    for head_dim, config in itertools.product(head_dims, configs(blocks_n, stages, warp_specialized)):
        if estimated_shared_bytes(config["block_m"], config["block_n"], head_dim, dtype,
                                  config["num_stages"]) > 227 * 1024:
            continue
        name = (f"d{head_dim}-m{config['block_m']}-n{config['block_n']}-w{config['num_warps']}-s{config['num_stages']}"
                f"{'-ws' if warp_specialized else ''}-{dtype_name}")
        payload = build_attention_payload(dtype=dtype, batch=1, num_heads_q=32, num_heads_kv=8,
                                          head_dim=head_dim, l_q=LENGTH, l_kv=LENGTH, is_causal=True, archs=[arch],
                                          ptx=False, fwd_config=KernelConfig(**config))
        (out / f"{name}.cgqa").write_bytes(payload)
        print(f"{name}: {len(payload) // 1024} KiB", flush=True)


def time_all(folder: Path, out: Path | None) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_attention import _reference_rows, time_us

    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    results = {}
    for path in sorted(folder.glob("*.cgqa")):
        head_dim = int(path.stem.split("-")[0][1:])
        dtype = DTYPES.get(path.stem.split("-")[-1], torch.bfloat16)  # names before --dtype: bf16
        torch.manual_seed(0)
        q = torch.randn(1, 32, LENGTH, head_dim, device="cuda", dtype=dtype)
        k = torch.randn(1, 8, LENGTH, head_dim, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        out_tensor = torch.empty_like(q)
        try:
            launcher = CubinLauncher(path.read_bytes())
            launcher(q, k, v, out=out_tensor)
        except Exception as e:  # too much shared memory for this GPU, ...
            print(f"{path.stem}: {type(e).__name__}: {str(e)[:120]}", flush=True)
            continue
        err = (out_tensor[:, :, -256:].float() - _reference_rows(q, k, v, LENGTH - 256, LENGTH)).abs().max().item()
        if not err <= 3e-2:
            print(f"{path.stem}: wrong (err {err:.1e})", flush=True)
            continue
        results[path.stem] = round(time_us(lambda: launcher(q, k, v, out=out_tensor)), 2)
        print(f"{path.stem}: {results[path.stem]} us", flush=True)
    best = {}
    for name, us in results.items():
        parts = name.split("-")  # best per head dim, kernel and dtype
        head = "-".join([parts[0]] + [p for p in parts[1:] if p == "ws" or p in DTYPES])
        if head not in best or us < results[best[head]]:
            best[head] = name
    summary = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "results_us": results,
               "best": {head: [name, results[name]] for head, name in best.items()}}
    print(json.dumps(summary["best"], indent=1))
    if out is not None:
        out.write_text(json.dumps(summary, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    emit_parser = sub.add_parser("emit")
    emit_parser.add_argument("folder", type=Path)
    emit_parser.add_argument("--head-dims", default="128,96,256")
    emit_parser.add_argument("--arch", type=int, default=90)
    emit_parser.add_argument("--blocks-n", default="64,128", help="BLOCK_N values, comma separated")
    emit_parser.add_argument("--stages", default="2,3", help="pipeline stage counts, comma separated")
    emit_parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    emit_parser.add_argument("--warp-specialized", action="store_true",
                             help="the sm_90 warp-specialized forward (attention_fwd_ws entries)")
    time_parser = sub.add_parser("time")
    time_parser.add_argument("folder", type=Path)
    time_parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "emit":
        emit(args.folder, [int(d) for d in args.head_dims.split(",")], args.arch,
             [int(n) for n in args.blocks_n.split(",")], [int(s) for s in args.stages.split(",")], args.dtype,
             args.warp_specialized)
    else:
        time_all(args.folder, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
