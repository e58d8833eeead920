"""Runs linear kernel cases under TRITON_INTERPRET=1 on the cases given as JSON on stdin.

A separate process because triton.jit picks the interpreter when the kernel
module is imported. Each case launches through kernels/linear_launch.linear
into an output poisoned with NaN, and compares it with a float64 reference.
Prints one JSON line per case: the max abs error relative to the reference's
largest magnitude, whether any output is NaN, and whether the output
buffer's padding (strided cases) was left untouched.

Case keys: kind ("gemv" | "gemm"), m, n, k, dtype; optional: out_dtype,
bias, residual ("separate" | "inplace"), norm (an RMSNorm folded in),
gated ("silu" | "gelu_tanh"), softcap, strided (X and Out are views of
wider buffers), config ([block_m, block_n, block_k]; else the heuristics').
"""

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cuda_gqa.backends.heuristics import LinearConfig  # noqa: E402
from cuda_gqa.backends.kernels.linear_launch import linear  # noqa: E402

EPS = 1e-5
PAD = 16  # extra columns of the wider buffers strided cases view


def reference(case, x, w, bias, residual):
    """float64: residual + softcap(act(gate) * up), gate/up = [rmsnorm](x) @ W^T + bias."""
    x, w = x.double(), w.double()
    if case.get("norm"):
        x = F.rms_norm(x, (x.shape[1],), eps=EPS)
    y = x @ w.T
    if bias is not None:
        y = y + bias.double()
    if case.get("gated"):
        gate, up = y[:, :case["n"]], y[:, case["n"]:]
        act = F.silu(gate) if case["gated"] == "silu" else F.gelu(gate, approximate="tanh")
        y = act * up
    if case.get("softcap"):
        y = case["softcap"] * torch.tanh(y / case["softcap"])
    if residual is not None:
        y = y + residual.double()
    return y


def run_case(case: dict) -> dict:
    torch.manual_seed(case.get("seed", 0))
    dtype = getattr(torch, case["dtype"])
    out_dtype = getattr(torch, case.get("out_dtype", case["dtype"]))
    m, n, k = case["m"], case["n"], case["k"]
    n_w = 2 * n if case.get("gated") else n
    pad = PAD if case.get("strided") else 0
    x = torch.randn(m, k + pad).to(dtype)[:, :k]
    w = (torch.randn(n_w, k) / k**0.5).to(dtype)
    bias = torch.randn(n_w).to(dtype) if case.get("bias") else None
    residual = torch.randn(m, n).to(dtype) if case.get("residual") else None
    if case.get("norm"):
        # Activations far from unit RMS, and W as the export leaves it: the
        # norm's weight multiplied into its columns (rmsnorm(x) * g @ W^T == rmsnorm(x) @ (W * g)^T).
        x = (x * 3.0 + 0.5).to(dtype)
        w = (w.float() * (1.0 + 0.5 * torch.randn(k))).to(dtype)
    expected = reference(case, x, w, bias, residual)

    buffer = torch.full((m, n + pad), float("nan"), dtype=out_dtype)
    out = buffer[:, :n]
    if case.get("residual") == "inplace":
        out.copy_(residual)
    linear(x, w, bias=bias, residual=out if case.get("residual") == "inplace" else residual, out=out,
           norm_eps=EPS if case.get("norm") else None, gated=case.get("gated", ""),
           softcap=case.get("softcap", 0.0), kind=case["kind"],
           config=LinearConfig(*case["config"], num_warps=4, num_stages=1) if "config" in case else None)
    err = (out.double() - expected).abs().max().item() / expected.abs().max().item()
    return {"max_rel_err": err, "nan": bool(out.isnan().any()),
            "padding_untouched": bool(buffer[:, n:].isnan().all())}


def main() -> None:
    for case in json.loads(sys.stdin.read()):
        print(json.dumps(dict(run_case(case), id=case["id"])), flush=True)


if __name__ == "__main__":
    main()
