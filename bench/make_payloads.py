"""Compile the AOT payload of every benchmark shape (no GPU needed).

    python bench/make_payloads.py DIR [--archs 90]

Writes DIR/<shape key>.cgqa, read by bench_attention.py --payloads DIR on
the GPU machine, so the benchmark times the cubins a .pte would carry.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import SHAPES  # noqa: E402

from cuda_gqa.backends.attention_plan import build_attention_payload  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--archs", default="90", help="comma-separated compute capabilities (default 90)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    archs = [int(a) for a in args.archs.split(",")]
    for i, shape in enumerate(SHAPES, 1):
        payload = build_attention_payload(
            dtype=torch.bfloat16, batch=shape.batch, num_heads_q=shape.heads_q, num_heads_kv=shape.heads_kv,
            head_dim=shape.head_dim, l_q=shape.l_q, l_kv=shape.l_kv, is_causal=shape.causal, archs=archs, ptx=False)
        (args.out / f"{shape.key}.cgqa").write_bytes(payload)
        print(f"[{i}/{len(SHAPES)}] {shape.key}.cgqa ({len(payload) // 1024} KiB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
