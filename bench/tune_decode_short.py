"""Short-context decode on this GPU: key blocks, stages, warps and split counts around the heuristics' pick.

    python3 bench/tune_decode_short.py

llama3-8b (32/8) and MQA (32/1) decode steps at L_kv 512, 1024 and 2048,
bf16, through the Triton JIT (gqa_decode_split, then gqa_decode_combine
launched plainly), each checked against the float32 reference and timed as
bench_attention.py times (CUDA-graph replay). Prints the heuristics' pick
(heuristics.decode_launch) and the six fastest configs per shape; the H100
run behind heuristics.MIN_BLOCK_N is in bench/results/h100_decode_short.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import time_us  # noqa: E402

from cuda_gqa.backends.heuristics import KernelConfig, decode_launch, split_plan  # noqa: E402
from cuda_gqa.backends.kernels.jit_launch import attention_decode, decode_workspace, device_arch  # noqa: E402

MODELS = ((32, 8, 128), (32, 1, 128))  # H_q, H_kv, head dim
LENGTHS = (512, 1024, 2048)
# (BLOCK_N, stages, warps)
TILES = ((128, 3, 4), (128, 2, 4), (128, 1, 4), (64, 3, 4), (64, 2, 4), (64, 1, 4), (32, 2, 4), (128, 2, 8), (64, 2, 2))
SPLITS = (1, 2, 4, 8, 16, 32, 64)


def sweep(heads_q: int, heads_kv: int, head_dim: int, l_kv: int) -> None:
    torch.manual_seed(0)
    q = torch.randn(1, heads_q, 1, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, heads_kv, l_kv, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
    out = torch.empty_like(q)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    picked, picked_splits = decode_launch(head_dim, q.dtype, heads_q // heads_kv, 1, 1, heads_kv, l_kv, sms,
                                          device_arch(q))
    results = []
    for block_n, stages, warps in TILES:
        config = KernelConfig(picked.block_m, block_n, warps, stages)
        for splits in SPLITS:
            if split_plan(l_kv, splits, block_n)[1] != splits:
                continue  # that count rounds to another
            workspace = decode_workspace(q, splits, heads_kv)

            def run():
                return attention_decode(q, k, v, out=out, workspace=workspace, num_splits=splits, config=config,
                                        fused=False)
            try:
                run()
                err = (out.float() - expected).abs().max().item()
                if not err <= 2e-2:
                    print(f"  block_n {block_n} stages {stages} warps {warps} splits {splits}: wrong ({err:.1e})")
                    continue
                results.append((time_us(run), block_n, stages, warps, splits))
            except Exception as e:  # out of resources
                print(f"  block_n {block_n} stages {stages} warps {warps} splits {splits}: {type(e).__name__}")
    print(f"{heads_q}/{heads_kv} D={head_dim} L_kv {l_kv}: heuristics pick block_n {picked.block_n}, "
          f"{picked_splits} splits", flush=True)
    for us, block_n, stages, warps, splits in sorted(results)[:6]:
        print(f"  block_n {block_n} stages {stages} warps {warps} splits {splits}: {us:.2f} us", flush=True)


def main() -> int:
    print(torch.cuda.get_device_name(), "triton", triton.__version__, flush=True)
    for heads_q, heads_kv, head_dim in MODELS:
        for l_kv in LENGTHS:
            sweep(heads_q, heads_kv, head_dim, l_kv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
