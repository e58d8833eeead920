""".pte size of a Llama-3-8B-shaped attention stack for 1, 8 and 32 layers, images inline vs in named data.

    python bench/pte_size.py [--layers 1,8,32] [--shape prefill]

"inline": each delegate payload carries its own cubins and PTX (preprocess
with the move into named data switched off, as before named data);
"named data": each image is stored once in the program's named data. Two
stacks: identical layers, whose equal payloads ExecuTorch already stores
once, and layers that differ only in softmax scale (bench/attention_stack.py),
whose payloads differ while their kernels do not. Default archs (five
cubins per kernel plus PTX).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))
from attention_stack import SHAPES, lower_stack  # noqa: E402


def pte_size(layers: int, shape: str, distinct_layers: bool, named_data: bool) -> int:
    if named_data:
        return len(lower_stack(layers, shape, distinct_layers).buffer)
    with mock.patch("cuda_gqa.backends.cuda_gqa_backend.move_images_to_named_data", lambda payload, store: None):
        return len(lower_stack(layers, shape, distinct_layers).buffer)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="1,8,32")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="prefill")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.layers.split(",")]
    print(f"| layers | stack | inline images | named data |\n| ---: | --- | ---: | ---: |", flush=True)
    for distinct in (False, True):
        for n in counts:
            sizes = [pte_size(n, args.shape, distinct, named) / 2**20 for named in (False, True)]
            stack = "layers differ in scale" if distinct else "identical layers"
            print(f"| {n} | {stack} | {sizes[0]:.2f} MiB | {sizes[1]:.2f} MiB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
