"""linear_gemv and linear_gemm match a float64 PyTorch reference for every epilogue variant
(CPU, under TRITON_INTERPRET=1; all cases run in one subprocess, see linear_cases.py).

bf16 runs through the GEMV only: Triton 3.9's interpreter computes tl.dot on
bf16 operands wrongly (tests/kernels/interpreter.py); the GEMM's bf16 path is
tested on the GPU (test_linear_gpu.py).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Max abs error over the reference's largest magnitude, by output dtype: a
# few output roundings (bf16 keeps 8 mantissa bits, fp16 11).
TOLERANCE = {"bfloat16": 1e-2, "float16": 2e-3, "float32": 1e-5}

# Explicit tiles make tails happen: N = 40 is not a multiple of BLOCK_N = 16, K = 48 not of BLOCK_K = 32.
GEMV = dict(kind="gemv", config=[1, 16, 32])
GEMV_3 = dict(kind="gemv", m=3, config=[4, 8, 16])
GEMM = dict(kind="gemm", m=17, config=[16, 16, 16])
CASES = {
    "gemv-plain-fp32": dict(GEMV, m=1, n=16, k=32, dtype="float32"),
    "gemv-bias-bf16": dict(GEMV, m=1, n=40, k=64, dtype="bfloat16", bias=True),
    "gemv-k-tail-strided-fp16": dict(GEMV, m=1, n=40, k=48, dtype="float16", strided=True),
    "gemv-3rows-norm-bias-fp16": dict(GEMV_3, n=40, k=64, dtype="float16", norm=True, bias=True),
    "gemv-3rows-silu-inplace-residual-bf16": dict(GEMV_3, n=40, k=64, dtype="bfloat16", gated="silu",
                                                  residual="inplace"),
    "gemv-gelu-norm-bias-fp32": dict(GEMV, m=1, n=16, k=64, dtype="float32", gated="gelu_tanh", norm=True,
                                     bias=True),
    "gemv-lm-head-norm-softcap-fp32-out-bf16": dict(GEMV, m=1, n=40, k=64, dtype="bfloat16", out_dtype="float32",
                                                    norm=True, softcap=2.0),
    "gemv-3rows-in-2-row-blocks-residual-fp32": dict(kind="gemv", m=3, n=16, k=32, dtype="float32",
                                                     config=[2, 8, 16], residual="separate"),
    "gemv-heuristic-tiles-bf16": dict(kind="gemv", m=1, n=40, k=64, dtype="bfloat16", bias=True),
    "gemm-residual-strided-fp16": dict(GEMM, n=40, k=64, dtype="float16", residual="separate", strided=True),
    "gemm-silu-norm-bias-fp32": dict(GEMM, n=16, k=32, dtype="float32", gated="silu", norm=True, bias=True),
    "gemm-gelu-inplace-residual-fp16": dict(GEMM, n=40, k=64, dtype="float16", gated="gelu_tanh",
                                            residual="inplace"),
    "gemm-k-tail-softcap-fp32-out-fp16": dict(kind="gemm", m=17, n=40, k=48, dtype="float16", out_dtype="float32",
                                              softcap=2.0, config=[16, 16, 32]),
}


@pytest.fixture(scope="module")
def results():
    payload = [dict(case, id=name) for name, case in CASES.items()]
    script = Path(__file__).with_name("linear_cases.py")
    done = subprocess.run([sys.executable, str(script)], input=json.dumps(payload), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return {r["id"]: r for r in map(json.loads, done.stdout.splitlines())}


@pytest.mark.parametrize("name", list(CASES))
def test_linear_matches_float64_reference(results, name):
    case, result = CASES[name], results[name]
    assert not result["nan"], f"{name}: NaN left in the output (an element not written)"
    assert result["padding_untouched"], f"{name}: wrote past N into the output row's padding"
    tolerance = TOLERANCE[case.get("out_dtype", case["dtype"])]
    assert result["max_rel_err"] <= tolerance, f"{name}: relative error {result['max_rel_err']:.2e}"


@pytest.mark.parametrize("bad, message", [
    (dict(weight=torch.zeros(8, 32)), r"contiguous \[N_w, K=16\]"),
    (dict(gated="relu"), "gated='relu'"),
    (dict(weight=torch.zeros(7, 16), gated="silu"), "rows are odd"),
    (dict(bias=torch.zeros(4)), r"bias must be \[8\]"),
    (dict(residual=torch.zeros(2, 8, dtype=torch.float16)), "residual is torch.float16"),
    (dict(out=torch.zeros(2, 8, dtype=torch.float16)), "x's dtype"),
    (dict(x=torch.zeros(16, 2).t()), "K contiguous"),
])
def test_bad_arguments_are_refused_before_launch(bad, message):
    """Checked on the host: nothing is launched (this runs without the interpreter or a GPU)."""
    from cuda_gqa.backends.kernels.linear_launch import linear

    args = dict(x=torch.zeros(2, 16), weight=torch.zeros(8, 16))
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        linear(args.pop("x"), args.pop("weight"), **args)
