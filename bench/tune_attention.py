"""Sweep gqa_attention_fwd's launch configs on this GPU and write the tuning table.

    python3 bench/tune_attention.py --out backends/tuning/attention_fwd_sm90.json

For each head dim and dtype, times every (BLOCK_M, BLOCK_N, warps, stages)
whose estimated shared memory fits heuristics.SHARED_MEMORY_BUDGET on a
causal llama-shaped prefill (32/8 heads, L = 4096), after checking it
against the float32 reference, and records the fastest. The table is data:
the AOT stage reads it (backends/heuristics.py) on machines without a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import _reference_rows, time_us  # noqa: E402

from cuda_gqa.backends.heuristics import SHARED_MEMORY_BUDGET, estimated_shared_bytes  # noqa: E402
from cuda_gqa.backends.kernels.attention_fwd import gqa_attention_fwd, launch_grid  # noqa: E402

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
BLOCKS_M = (64, 128)
BLOCKS_N = (32, 64, 128)
WARPS = (4, 8)
STAGES = (2, 3)


def run(q, k, v, out, block_m, block_n, num_warps, num_stages):
    b, h_q, l_q, d = q.shape
    gqa_attention_fwd[launch_grid(l_q, b, h_q, block_m)](
        q, k, v, out, d**-0.5, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        l_q, k.shape[2], NUM_HEADS_Q=h_q, GROUP_SIZE=h_q // k.shape[1], HEAD_DIM=d,
        BLOCK_D=triton.next_power_of_2(d), BLOCK_M=block_m, BLOCK_N=block_n, IS_CAUSAL=True,
        num_warps=num_warps, num_stages=num_stages)
    return out


def tune(head_dim: int, dtype: torch.dtype, length: int) -> dict:
    torch.manual_seed(0)
    q = torch.randn(1, 32, length, head_dim, device="cuda", dtype=dtype)
    k = torch.randn(1, 8, length, head_dim, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    out = torch.empty_like(q)
    expected = _reference_rows(q, k, v, length - 256, length)  # the last rows see every key
    results = []
    for block_m, block_n, warps, stages in itertools.product(BLOCKS_M, BLOCKS_N, WARPS, STAGES):
        if estimated_shared_bytes(block_m, block_n, head_dim, dtype, stages) > SHARED_MEMORY_BUDGET:
            continue
        config = dict(block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages)
        try:
            run(q, k, v, out, **config)
            err = (out[:, :, -256:].float() - expected).abs().max().item()
            if not err <= 3e-2:
                print(f"  {config}: wrong (err {err:.1e})", flush=True)
                continue
            us = time_us(lambda: run(q, k, v, out, **config))
        except Exception as e:  # out of resources for this GPU
            print(f"  {config}: {type(e).__name__}: {str(e)[:120]}", flush=True)
            continue
        results.append((us, config))
        print(f"  {config}: {us:.1f} us", flush=True)
    us, best = min(results, key=lambda r: r[0])
    return dict(best, measured_us=round(us, 2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--dtypes", default="bfloat16", help="comma separated (float16, bfloat16)")
    parser.add_argument("--head-dims", default="64,128,256", help="comma separated")
    args = parser.parse_args(argv)
    major, minor = torch.cuda.get_device_capability()
    table = {"arch": major * 10 + minor, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
             "triton": triton.__version__, "shape": f"causal prefill B=1 32/8 heads L={args.length}",
             "configs": {}}
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        for head_dim in map(int, args.head_dims.split(",")):
            print(f"D={head_dim} {dtype_name}", flush=True)
            table["configs"][f"{dtype_name}/{head_dim}"] = tune(head_dim, dtype, args.length)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
