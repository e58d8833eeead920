"""Where the split-KV decode should merge its splits, and the MQA decode's tiles, on this GPU.

    python3 bench/tune_decode_merge.py --out results

1. merge: per decode shape (L_q = 1) and context length, the heuristics' tiles
   and split count, timed with the splits merged by gqa_decode_combine (two
   launches) and inside the split kernel (FUSED_COMBINE, one launch), next to
   the fastest PyTorch SDPA backend. heuristics.fused_combine_for /
   MAX_FUSED_MERGE_BYTES are set from this table.
2. mqa: the MQA decode (32/1 heads, D128) over split counts, BLOCK_N, stages,
   warps and the combine's BLOCK_S.

Triton JIT on the GPU machine (not the AOT compiler), CUDA-graph timing as
bench_attention.py. Writes DIR/tune_decode_merge.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import _reference_rows, time_us  # noqa: E402

from cuda_gqa.backends.heuristics import (  # noqa: E402
    KernelConfig, decode_config, decode_split_count, fused_combine_for, split_plan)
from cuda_gqa.backends.kernels.jit_launch import Variant, attention_decode, decode_workspace  # noqa: E402

# name, batch, H_q, H_kv, head dim
MODELS = (("llama3-8b", 1, 32, 8, 128), ("qwen2.5-7b", 1, 28, 4, 128), ("qwen3.5-moe", 1, 16, 2, 256),
          ("mqa", 1, 32, 1, 128), ("llama3-8b", 8, 32, 8, 128))
LENGTHS = (1024, 2048, 4096, 8192, 32768)
# The MQA sweep: BLOCK_N, stages, warps, split counts, combine BLOCK_S.
MQA_SWEEP = ((64, 128), (2, 3), (4,), (64, 96, 128), (16, 64))
TORCH_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION)


def best_torch_us(q, k, v) -> float:
    best = time_us(lambda: scaled_dot_product_attention(q, k, v, enable_gqa=True))
    for backend in TORCH_BACKENDS:
        def run(backend=backend):
            with sdpa_kernel([backend]):
                return scaled_dot_product_attention(q, k, v, enable_gqa=True)
        try:
            run()
        except RuntimeError:
            continue
        best = min(best, time_us(run))
    return best


def problem(batch, heads_q, heads_kv, head_dim, l_kv):
    torch.manual_seed(0)
    q = torch.randn(batch, heads_q, 1, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, heads_kv, l_kv, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    return q, k, v, _reference_rows(q, k, v, 0, 1)


def timed(run, out, expected) -> float | str:
    try:
        run()
        err = (out.float() - expected).abs().max().item()
    except Exception as e:  # out of resources on this GPU
        return f"{type(e).__name__}"
    return time_us(run) if err <= 3e-2 else f"wrong ({err:.1e})"


def merge_table(arch: int, sms: int, lengths) -> list[dict]:
    rows = []
    for (name, batch, heads_q, heads_kv, head_dim), l_kv in itertools.product(MODELS, lengths):
        q, k, v, expected = problem(batch, heads_q, heads_kv, head_dim, l_kv)
        out = torch.empty_like(q)
        group = heads_q // heads_kv
        config = decode_config(head_dim, q.dtype, group, 1, arch)
        splits = split_plan(l_kv, decode_split_count(batch, heads_kv, l_kv, sms, config.block_n), config.block_n)[1]
        workspace = decode_workspace(q, max(splits, 1), heads_kv)
        row = dict(model=name, batch=batch, heads=f"{heads_q}/{heads_kv}", head_dim=head_dim, l_kv=l_kv,
                   splits=splits, merge_bytes=splits * group * triton.next_power_of_2(head_dim) * 4,
                   heuristic_fused=fused_combine_for(splits, group, 1, head_dim))
        for fused in (False, True):
            if fused and splits == 1:
                continue
            row["fused_us" if fused else "two_launch_us"] = timed(
                lambda: attention_decode(q, k, v, out=out, num_splits=splits, workspace=workspace, config=config,
                                         fused=fused), out, expected)
        row["torch_best_us"] = best_torch_us(q, k, v)
        print(row, flush=True)
        rows.append(row)
    return rows


def mqa_sweep(l_kv: int) -> list[dict]:
    q, k, v, expected = problem(1, 32, 1, 128, l_kv)
    out = torch.empty_like(q)
    workspace = decode_workspace(q, 256, 1)
    results = []
    for block_n, stages, warps, splits, block_s in itertools.product(*MQA_SWEEP):
        config = KernelConfig(block_m=32, block_n=block_n, num_warps=warps, num_stages=stages)
        us = timed(lambda: attention_decode(q, k, v, out=out, num_splits=splits, workspace=workspace, config=config,
                                            combine_block_s=block_s, fused=False), out, expected)
        entry = dict(block_n=block_n, num_stages=stages, num_warps=warps, splits=splits, block_s=block_s, us=us)
        print(entry, flush=True)
        results.append(entry)
    return sorted(results, key=lambda e: e["us"] if isinstance(e["us"], float) else 1e9)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--parts", default="merge,mqa")
    args = parser.parse_args(argv)
    props = torch.cuda.get_device_properties(0)
    arch, sms = props.major * 10 + props.minor, props.multi_processor_count
    table = {"device": props.name, "sms": sms, "torch": torch.__version__, "triton": triton.__version__}
    parts = args.parts.split(",")
    if "merge" in parts:
        table["merge"] = merge_table(arch, sms, [int(n) for n in args.lengths.split(",")])
    if "mqa" in parts:
        table["mqa_32768"] = mqa_sweep(32768)
        table["mqa_torch_best_us"] = best_torch_us(*problem(1, 32, 1, 128, 32768)[:3])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune_decode_merge.json").write_text(json.dumps(table, indent=1) + "\n")
    lines = [f"{props.name}, torch {torch.__version__}, Triton {triton.__version__} JIT, bf16, L_q=1, "
             "CUDA-graph medians (us)", "",
             "| shape | L_kv | splits | merge KiB | two launches | fused | best torch | fused by heuristics |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda t: f"{t:.2f}" if isinstance(t, float) else str(t)
    for r in table.get("merge", []):
        lines.append(f"| {r['model']} B={r['batch']} {r['heads']} D{r['head_dim']} | {r['l_kv']} | {r['splits']} | "
                     f"{r['merge_bytes'] / 1024:.0f} | {fmt(r.get('two_launch_us', '-'))} | "
                     f"{fmt(r.get('fused_us', '-'))} | {fmt(r['torch_best_us'])} | {r['heuristic_fused']} |")
    if "mqa_32768" in table:
        lines += ["", f"MQA 32/1 D128 L_kv 32768, best torch {table['mqa_torch_best_us']:.2f} us; fastest 10:"]
        lines += [f"- {e}" for e in table["mqa_32768"][:10]]
    text = "\n".join(lines) + "\n"
    (args.out / "tune_decode_merge.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
