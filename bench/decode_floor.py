"""How fast can a two-launch split-KV decode step be on this GPU? Minimal kernels against the shipped payload.

    python3 bench/decode_floor.py [--payloads DIR]

llama3-8b decode (B=1, 32/8 heads, D=128, bf16) at L_kv 512, 1024 and 2048,
on the grid the shipped plan uses there (8 KV heads x 16 splits of one key
block each; blocks of 32, 64 and 128 keys). Each Triton JIT kernel below does
less than gqa_decode_split, so its time bounds what any split kernel of that
grid can reach:

  empty       a launch of the split grid that does nothing;
  load_only   each program loads its K and V block and stores a column sum;
  load_dot    adds Q K^T on 16 packed rows, the softmax and P V (no masks);
  + merge     a second launch of 32 programs, each summing 16 partials
              (launched plainly, as the combine is without programmatic launch).

With --payloads (a folder of bench/make_payloads.py), the shipped payloads of
the same shapes are timed in the same run. Timing as bench_attention.py
(CUDA-graph replay, median, µs per call). The H100 figures are in
bench/results/h100_decode_2k.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import Shape, time_us  # noqa: E402

HEADS_Q, HEADS_KV, HEAD_DIM, SPLITS, ROWS = 32, 8, 128, 16, 16
BLOCK_N = {512: 32, 1024: 64, 2048: 128}  # the shipped plan's key block (one per split)


@triton.jit
def empty(X):
    pass


@triton.jit
def load_only(K, V, Partial, L_KV: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr):
    split, kv_head = tl.program_id(0), tl.program_id(1)
    block = kv_head * L_KV * D + split * BLOCK_N * D + tl.arange(0, BLOCK_N)[:, None] * D + tl.arange(0, D)[None, :]
    k = tl.load(K + block)
    v = tl.load(V + block)
    column_sum = tl.sum(k.to(tl.float32) + v.to(tl.float32), 0)
    tl.store(Partial + (kv_head * SPLITS + split) * D + tl.arange(0, D), column_sum)


@triton.jit
def load_dot(Q, K, V, Partial, L_KV: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr,
             GROUP: tl.constexpr, ROWS: tl.constexpr):
    split, kv_head = tl.program_id(0), tl.program_id(1)
    block = kv_head * L_KV * D + split * BLOCK_N * D + tl.arange(0, BLOCK_N)[:, None] * D + tl.arange(0, D)[None, :]
    rows = tl.arange(0, ROWS)  # GROUP of them are query heads, the rest padding (as in the packed decode tile)
    q = tl.load(Q + (kv_head * GROUP + rows % GROUP)[:, None] * D + tl.arange(0, D)[None, :],
                mask=(rows < GROUP)[:, None], other=0.0)
    k = tl.load(K + block)
    v = tl.load(V + block)
    scores = tl.dot(q, tl.trans(k))
    p = tl.exp2(scores - tl.max(scores, 1)[:, None])
    out = tl.dot(p.to(v.dtype), v) / tl.sum(p, 1)[:, None]
    tl.store(Partial + ((kv_head * SPLITS + split) * ROWS + rows)[:, None] * D + tl.arange(0, D)[None, :], out)


@triton.jit
def merge(Partial, Out, SPLITS: tl.constexpr, D: tl.constexpr, GROUP: tl.constexpr):
    head = tl.program_id(0)
    splits = (head // GROUP * SPLITS + tl.arange(0, SPLITS)) * D
    partials = tl.load(Partial + splits[:, None] + tl.arange(0, D)[None, :])
    tl.store(Out + head * D + tl.arange(0, D), tl.sum(partials, 0))


def floor_times(l_kv: int) -> dict[str, float]:
    block_n, group = BLOCK_N[l_kv], HEADS_Q // HEADS_KV
    k = torch.randn(HEADS_KV, l_kv, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(HEADS_Q, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    partial = torch.empty(HEADS_KV * SPLITS * ROWS, HEAD_DIM, device="cuda", dtype=torch.float32)
    out = torch.empty(HEADS_Q, HEAD_DIM, device="cuda", dtype=torch.float32)
    grid = (SPLITS, HEADS_KV)

    def run_load_only():
        load_only[grid](k, v, partial, l_kv, block_n, HEAD_DIM, SPLITS)

    def run_load_dot():
        load_dot[grid](q, k, v, partial, l_kv, block_n, HEAD_DIM, SPLITS, group, ROWS)

    def run_merge():
        merge[(HEADS_Q,)](partial, out, SPLITS, HEAD_DIM, group)

    return {
        "empty": time_us(lambda: empty[grid](k)),
        "two empty": time_us(lambda: (empty[grid](k), empty[(HEADS_Q,)](k))),
        "load_only": time_us(run_load_only),
        "load_only + merge": time_us(lambda: (run_load_only(), run_merge())),
        "load_dot": time_us(run_load_dot),
        "load_dot + merge": time_us(lambda: (run_load_dot(), run_merge())),
    }


def payload_time(folder: Path, l_kv: int) -> float:
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    shape = Shape("decode", "llama3-8b", 1, HEADS_Q, HEADS_KV, HEAD_DIM, 1, l_kv)
    launcher = CubinLauncher((folder / f"{shape.key}.cgqa").read_bytes())
    q = torch.randn(1, HEADS_Q, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, HEADS_KV, l_kv, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    out = torch.empty_like(q)
    return time_us(lambda: launcher(q, k, v, out=out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payloads", type=Path, help="folder written by bench/make_payloads.py")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("decode_floor.py needs a CUDA GPU", file=sys.stderr)
        return 1
    print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}; "
          f"llama3-8b decode, B=1, {HEADS_Q}/{HEADS_KV} heads, D={HEAD_DIM}, bf16, {SPLITS} splits; µs per call\n")
    rows = []
    for l_kv in BLOCK_N:
        times = floor_times(l_kv)
        if args.payloads:
            times["shipped payload"] = payload_time(args.payloads, l_kv)
        rows.append((l_kv, times))
    names = list(rows[0][1])
    print("| L_kv (key block) | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for l_kv, times in rows:
        print(f"| {l_kv} ({BLOCK_N[l_kv]}) | " + " | ".join(f"{times[n]:.2f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
