"""Runs gqa_decode_split (+ gqa_decode_combine) under TRITON_INTERPRET=1 on the cases given as JSON on stdin.

A separate process because triton.jit picks the interpreter when the kernel
module is imported. Prints one JSON line per case: the max abs error against
the float32 reference, and the split count actually launched.
"""

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402

from cuda_gqa.backends.kernels.attention_decode import (  # noqa: E402
    decode_combine_grid, decode_split_grid, decode_workspace_shape, gqa_decode_combine, gqa_decode_split)
from cuda_gqa.backends.heuristics import split_plan  # noqa: E402
from interpret_expected import expected_output, kernel_keys  # noqa: E402  (this folder, on sys.path)


def run_case(case: dict) -> tuple[float, int]:
    torch.manual_seed(case.get("seed", 0))
    dtype = getattr(torch, case["dtype"])
    b, h_q, h_kv, d, l_q, l_kv = (case[k] for k in ("batch", "heads_q", "heads_kv", "head_dim", "l_q", "l_kv"))
    group = h_q // h_kv
    q = torch.randn(b, h_q, l_q, d, dtype=dtype)
    if case.get("bshd"):
        # [B, L, H, D] storage viewed as [B, H, L, D]: strided, no copy.
        q = torch.randn(b, l_q, h_q, d, dtype=dtype).transpose(1, 2)
        k = torch.randn(b, l_kv, h_kv, d, dtype=dtype).transpose(1, 2)
        v = torch.randn(b, l_kv, h_kv, d, dtype=dtype).transpose(1, 2)
    else:
        k = torch.randn(b, h_kv, l_kv, d, dtype=dtype)
        v = torch.randn(b, h_kv, l_kv, d, dtype=dtype)
    out = torch.full_like(q, float("nan"))
    scale = case.get("scale") or d**-0.5
    block_m = case.get("block_m", max(16, triton.next_power_of_2(group * l_q)))
    block_n = case.get("block_n", 16)
    split_len, num_splits = split_plan(kernel_keys(case), case["splits"], block_n)
    # An over-sized workspace, as the runtime allocates once for its largest problem.
    partial_shape, lse_shape = decode_workspace_shape(b + 1, h_q, l_q + 1, d, num_splits + 2)
    partial = torch.full(partial_shape, float("nan"))
    lse = torch.full(lse_shape, float("nan"))
    launched = num_splits + case.get("extra_splits", 0)
    gqa_decode_split[decode_split_grid(launched, b, h_kv, group, l_q, block_m)](
        q, k, v, out, partial, lse, scale,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], l_q, kernel_keys(case), split_len,
        NUM_HEADS_Q=h_q, GROUP_SIZE=group, HEAD_DIM=d, BLOCK_D=triton.next_power_of_2(d),
        BLOCK_M=block_m, BLOCK_N=block_n, IS_CAUSAL=case["causal"], SINGLE_SPLIT=launched == 1,
    )
    if launched > 1:
        gqa_decode_combine[decode_combine_grid(b, h_q, l_q)](
            partial, lse, out, *out.stride()[:3], l_q, launched,
            NUM_HEADS_Q=h_q, HEAD_DIM=d, BLOCK_D=triton.next_power_of_2(d), BLOCK_S=case.get("block_s", 16),
        )
    expected = expected_output(case, q, k, v, scale)
    return (out.float() - expected).abs().max().item(), launched


if __name__ == "__main__":
    for case in json.load(sys.stdin):
        err, launched = run_case(case)
        print(json.dumps({"id": case["id"], "max_abs_err": err, "splits": launched}), flush=True)
