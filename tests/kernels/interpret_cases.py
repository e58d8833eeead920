"""Runs the attention kernels under TRITON_INTERPRET=1 on the cases given as JSON on stdin.

A separate process because triton.jit picks the interpreter when the kernel
module is imported. Each case launches through jit_launch with explicit tiles
(and split count for decode), as a GPU run would with the heuristics' choice.
Prints one JSON line per case: the max abs error against the float32
reference, whether any output is NaN, and the split count launched.

Case keys: kernel ("fwd" | "decode"), batch, heads_q, heads_kv, head_dim,
l_q, l_kv, causal, dtype; optional: scale, bshd (K/V as [B, L, H, D] views),
block_m, block_n, splits, block_s, window_left, softcap, kv_len (a device
scalar of kv_len_dtype), mask ("bool" | "additive") with mask_shape (a
broadcastable shape, "H" for H_q, "Q"/"K" for L_q/L_kv), hidden_rows (query
rows the mask hides every key from), top_left_causal (PyTorch's own is_causal
with L_q < L_kv, run as the AOT stage runs it: bottom-right over L_q keys),
fused (decode: merge the splits in the split kernel; runs twice on one
workspace, and reports the arrival counters it leaves).
"""

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402

from cuda_gqa.backends.heuristics import KernelConfig  # noqa: E402
from cuda_gqa.backends.kernels.jit_launch import (  # noqa: E402
    Variant, attention_decode, attention_fwd, decode_workspace)
from cuda_gqa.backends.kernels.reference import reference_attention  # noqa: E402


def make_mask(case, b, h_q, l_q, l_kv):
    dims = {"B": b, "H": h_q, "Q": l_q, "K": l_kv}
    shape = [dims.get(s, 1) for s in case.get("mask_shape", "BHQK")]
    if case["mask"] == "bool":
        mask = torch.rand(shape) > 0.3
        mask[..., case.get("hidden_rows", []), :] = False
    else:
        mask = torch.randn(shape) * 2
        mask = mask.masked_fill(torch.rand(shape) < 0.2, float("-inf"))
        mask[..., case.get("hidden_rows", []), :] = float("-inf")
        mask = mask.to(getattr(torch, case.get("mask_dtype", case["dtype"])))
    return mask


def run_case(case: dict) -> dict:
    torch.manual_seed(case.get("seed", 0))
    dtype = getattr(torch, case["dtype"])
    b, h_q, h_kv, d, l_q, l_kv = (case[k] for k in ("batch", "heads_q", "heads_kv", "head_dim", "l_q", "l_kv"))
    if case.get("bshd"):
        # [B, L, H, D] storage viewed as [B, H, L, D]: strided, no copy.
        q, k, v = (torch.randn(b, n, h, d, dtype=dtype).transpose(1, 2)
                   for n, h in ((l_q, h_q), (l_kv, h_kv), (l_kv, h_kv)))
    else:
        q, k, v = (torch.randn(b, h, n, d, dtype=dtype) for n, h in ((l_q, h_q), (l_kv, h_kv), (l_kv, h_kv)))
    out = torch.full_like(q, float("nan"))
    scale = case.get("scale") or d**-0.5
    mask = make_mask(case, b, h_q, l_q, l_kv) if "mask" in case else None
    kv_len = l_q if case.get("top_left_causal") else case.get("kv_len")
    kv_len_tensor = None if kv_len is None else torch.tensor(kv_len, dtype=getattr(torch, case.get("kv_len_dtype", "int32")))
    variant = Variant(attn_mask=mask, is_causal=case["causal"], window_left=case.get("window_left", -1),
                      softcap=case.get("softcap", 0.0), kv_len=kv_len_tensor)
    launched, arrivals_left = 1, 0
    if case["kernel"] == "fwd":
        config = KernelConfig(block_m=case.get("block_m", 16), block_n=case.get("block_n", 16), num_warps=4,
                              num_stages=1)
        attention_fwd(q, k, v, variant, scale=scale, out=out, config=config)
    else:
        group = h_q // h_kv
        config = KernelConfig(block_m=case.get("block_m", max(16, triton.next_power_of_2(group * l_q))),
                              block_n=case.get("block_n", 16), num_warps=4, num_stages=1)
        fused = case.get("fused", False)
        workspace = None
        if fused:
            # Garbage partials, zero counters: what a reused workspace looks like.
            m_tiles = triton.cdiv(group * l_q, config.block_m)
            workspace = decode_workspace(q, max(case["splits"], 1), h_kv, m_tiles)
            workspace[0].fill_(float("nan"))
            workspace[1].fill_(float("nan"))
        for _ in range(2 if fused else 1):
            out.fill_(float("nan"))
            _, launched = attention_decode(q, k, v, variant, scale=scale, out=out, num_splits=case["splits"],
                                           config=config, combine_block_s=case.get("block_s", 16), fused=fused,
                                           workspace=workspace)
        if fused:
            arrivals_left = int(workspace[2].abs().sum())
    if case.get("top_left_causal"):
        expected = torch.nn.functional.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), is_causal=True, scale=scale, enable_gqa=True)
    else:
        expected = reference_attention(q, k, v, attn_mask=mask, is_causal=case["causal"], scale=scale,
                                       window_left=case.get("window_left", -1), softcap=case.get("softcap", 0.0),
                                       kv_len=kv_len)
    return {"id": case["id"], "max_abs_err": (out.float() - expected).abs().max().item(),
            "nan": bool(out.isnan().any()), "splits": launched,
            "arrivals_left": arrivals_left}


if __name__ == "__main__":
    for case in json.load(sys.stdin):
        print(json.dumps(run_case(case)), flush=True)
