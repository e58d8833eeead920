"""Sweep the attention kernels' launch configs on this GPU and write a tuning table.

    python3 bench/tune_attention.py --out bench/results/h100_tune_attention.json

Forward kernel: every (BLOCK_M, BLOCK_N, warps, stages) whose estimated
shared memory fits this GPU's per-block limit, on a causal llama-shaped
prefill (32/8 heads, L = --length) per head dim and dtype.
Split-KV decode: every (BLOCK_N, warps, stages, split count) on decode
steps of real models (L_q = 1) at two context lengths.
Each config is checked against the float32 reference before it is timed
(CUDA-graph replay, as bench_attention.py), and the fastest is recorded with
the time of the config the heuristics pick now (heuristic_us). The entries
worth keeping go, by hand, into backends/tuning/sm_<arch>.json, which the
heuristics (and so the AOT stage, without a GPU) read.
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

from cuda_gqa.backends.heuristics import (  # noqa: E402
    KernelConfig, attention_config, decode_config, estimated_shared_bytes)
from cuda_gqa.backends.kernels.attention_decode import decode_workspace_shape  # noqa: E402
from cuda_gqa.backends.kernels.jit_launch import Variant, attention_decode, attention_fwd  # noqa: E402

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
FWD_BLOCKS_M = (64, 128)
FWD_BLOCKS_N = (32, 64, 128)
WARPS = (4, 8)
STAGES = (2, 3, 4)
DECODE_BLOCKS_N = (32, 64, 128)
DECODE_SPLITS = (8, 16, 24, 32, 48, 64, 96)
# name, H_q, H_kv, head dim: decode shapes of the models in bench_attention.py
DECODE_MODELS = (("llama3-8b", 32, 8, 128), ("qwen3.5-moe", 16, 2, 256), ("mqa", 32, 1, 128), ("phi3", 32, 8, 96))


def run_fwd(q, k, v, out, **config):
    return attention_fwd(q, k, v, Variant(is_causal=True), out=out, config=KernelConfig(**config))


def run_decode(q, k, v, out, workspace, num_splits, **config):
    return attention_decode(q, k, v, out=out, num_splits=num_splits, workspace=workspace,
                            config=KernelConfig(**config))[0]


def sweep(configs, run, check) -> list[tuple[float, dict]]:
    """Time every config that compiles, fits and is correct; print each."""
    results = []
    for config in configs:
        try:
            run(**config)
            err = check()
            if not err <= 3e-2:
                print(f"  {config}: wrong (err {err:.1e})", flush=True)
                continue
            us = time_us(lambda: run(**config))
        except Exception as e:  # out of resources on this GPU
            print(f"  {config}: {type(e).__name__}: {str(e)[:100]}", flush=True)
            continue
        results.append((us, config))
        print(f"  {config}: {us:.1f} us", flush=True)
    return sorted(results, key=lambda r: r[0])


def tune_fwd(head_dim: int, dtype: torch.dtype, length: int, shared_limit: int) -> dict:
    torch.manual_seed(0)
    q = torch.randn(1, 32, length, head_dim, device="cuda", dtype=dtype)
    k = torch.randn(1, 8, length, head_dim, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    out = torch.empty_like(q)
    expected = _reference_rows(q, k, v, length - 256, length)  # the last rows see every key
    configs = [dict(block_m=m, block_n=n, num_warps=w, num_stages=s)
               for m, n, w, s in itertools.product(FWD_BLOCKS_M, FWD_BLOCKS_N, WARPS, STAGES)
               if estimated_shared_bytes(m, n, head_dim, dtype, s) <= shared_limit]
    ranked = sweep(configs, lambda **c: run_fwd(q, k, v, out, **c),
                   lambda: (out[:, :, -256:].float() - expected).abs().max().item())
    major, minor = torch.cuda.get_device_capability()
    default = attention_config(head_dim, dtype, 10 * major + minor)  # what the heuristics pick now
    default_us = time_us(lambda: attention_fwd(q, k, v, Variant(is_causal=True), out=out, config=default))
    (us, best), *_ = ranked
    return dict(best, measured_us=round(us, 2), heuristic_us=round(default_us, 2),
                top5=[dict(c, us=round(t, 2)) for t, c in ranked[:5]])


def tune_decode(heads_q: int, heads_kv: int, head_dim: int, l_kv: int, dtype: torch.dtype,
                shared_limit: int) -> dict:
    torch.manual_seed(0)
    q = torch.randn(1, heads_q, 1, head_dim, device="cuda", dtype=dtype)
    k = torch.randn(1, heads_kv, l_kv, head_dim, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    out = torch.empty_like(q)
    workspace = [torch.empty(s, device="cuda", dtype=torch.float32)
                 for s in decode_workspace_shape(1, heads_q, 1, head_dim, max(DECODE_SPLITS))]
    expected = _reference_rows(q, k, v, 0, 1)  # L_q = 1 sees every key
    block_m = decode_config(head_dim, dtype, heads_q // heads_kv, 1).block_m
    configs = [dict(block_m=block_m, block_n=n, num_warps=w, num_stages=s, num_splits=p)
               for n, w, s, p in itertools.product(DECODE_BLOCKS_N, WARPS, STAGES, DECODE_SPLITS)
               if estimated_shared_bytes(block_m, n, head_dim, dtype, s) <= shared_limit]
    ranked = sweep(configs, lambda **c: run_decode(q, k, v, out, workspace, **c),
                   lambda: (out.float() - expected).abs().max().item())
    default_us = time_us(lambda: attention_decode(q, k, v, out=out))
    (us, best), *_ = ranked
    return dict(best, measured_us=round(us, 2), heuristic_us=round(default_us, 2),
                top5=[dict(c, us=round(t, 2)) for t, c in ranked[:5]])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kernels", default="fwd,decode", help="comma separated (fwd, decode)")
    parser.add_argument("--length", type=int, default=4096, help="prefill length of the forward sweep")
    parser.add_argument("--decode-lengths", default="8192,32768", help="comma separated L_kv of the decode sweep")
    parser.add_argument("--decode-models", default=",".join(m[0] for m in DECODE_MODELS),
                        help="decode sweep models, comma separated (default %(default)s)")
    parser.add_argument("--dtypes", default="bfloat16", help="comma separated (float16, bfloat16)")
    parser.add_argument("--head-dims", default="64,128,256", help="forward sweep head dims, comma separated")
    args = parser.parse_args(argv)
    props = torch.cuda.get_device_properties(0)
    shared_limit = props.shared_memory_per_block_optin
    table = {"arch": props.major * 10 + props.minor, "device": props.name, "sms": props.multi_processor_count,
             "shared_memory_per_block_optin": shared_limit, "torch": torch.__version__,
             "triton": triton.__version__, "fwd": {}, "decode": {}}
    kernels = args.kernels.split(",")
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        if "fwd" in kernels:
            for head_dim in map(int, args.head_dims.split(",")):
                print(f"fwd D={head_dim} {dtype_name} causal prefill 32/8 heads L={args.length}", flush=True)
                table["fwd"][f"{dtype_name}/{head_dim}"] = tune_fwd(head_dim, dtype, args.length, shared_limit)
        if "decode" in kernels:
            models = [m for m in DECODE_MODELS if m[0] in args.decode_models.split(",")]
            for (name, heads_q, heads_kv, head_dim), l_kv in itertools.product(
                    models, map(int, args.decode_lengths.split(","))):
                print(f"decode {name} {heads_q}/{heads_kv} D={head_dim} {dtype_name} L_kv={l_kv}", flush=True)
                table["decode"][f"{dtype_name}/{name}/{l_kv}"] = tune_decode(heads_q, heads_kv, head_dim, l_kv,
                                                                           dtype, shared_limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    summary = {kind: {key: {k: v for k, v in entry.items() if k != "top5"} for key, entry in table[kind].items()}
               for kind in ("fwd", "decode")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
