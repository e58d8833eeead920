"""Runs gqa_attention_fwd under TRITON_INTERPRET=1 on the cases given as JSON on stdin.

A separate process because triton.jit picks the interpreter when the kernel
module is imported. Prints one JSON line per case: the max abs error against
the float32 reference.
"""

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402

from cuda_gqa.backends.kernels.attention_fwd import gqa_attention_fwd, launch_grid  # noqa: E402
from interpret_expected import expected_output, kernel_keys  # noqa: E402  (this folder, on sys.path)


def run_case(case: dict) -> float:
    torch.manual_seed(case.get("seed", 0))
    dtype = getattr(torch, case["dtype"])
    b, h_q, h_kv, d, l_q, l_kv = (case[k] for k in ("batch", "heads_q", "heads_kv", "head_dim", "l_q", "l_kv"))
    q = torch.randn(b, h_q, l_q, d, dtype=dtype)
    if case.get("bshd"):
        # [B, L, H, D] storage viewed as [B, H, L, D]: strided, no copy.
        k = torch.randn(b, l_kv, h_kv, d, dtype=dtype).transpose(1, 2)
        v = torch.randn(b, l_kv, h_kv, d, dtype=dtype).transpose(1, 2)
    else:
        k = torch.randn(b, h_kv, l_kv, d, dtype=dtype)
        v = torch.randn(b, h_kv, l_kv, d, dtype=dtype)
    out = torch.empty_like(q)
    scale = case.get("scale") or d**-0.5
    block_m, block_n = case.get("block_m", 16), case.get("block_n", 16)
    gqa_attention_fwd[launch_grid(l_q, b, h_q, block_m)](
        q, k, v, out, scale, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], l_q, kernel_keys(case),
        NUM_HEADS_Q=h_q, GROUP_SIZE=h_q // h_kv, HEAD_DIM=d, BLOCK_D=triton.next_power_of_2(d),
        BLOCK_M=block_m, BLOCK_N=block_n, IS_CAUSAL=case["causal"],
    )
    expected = expected_output(case, q, k, v, scale)
    return (out.float() - expected).abs().max().item()


if __name__ == "__main__":
    for case in json.load(sys.stdin):
        print(json.dumps({"id": case["id"], "max_abs_err": run_case(case)}), flush=True)
