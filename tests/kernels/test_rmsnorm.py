"""rmsnorm matches a float64 RMSNorm (decoder.py's, with Gemma's weight offset and sandwich residual)
under TRITON_INTERPRET=1."""

import pytest

from interpreted import run_interpreted

SCRIPT = """
from cuda_gqa.backends.kernels.rmsnorm import rmsnorm
from cuda_gqa.backends.aot.rmsnorm import rmsnorm_grid

TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}  # relative, plus as much absolute

def run(case):
    dtype = getattr(torch, case["dtype"])
    rows, n_cols, offset, eps = case["rows"], case["n_cols"], case["offset"], 1e-6
    gen = torch.Generator().manual_seed(0)
    # X as a slice of a wider buffer: its row stride is not its width.
    x = (3 * torch.randn(rows, n_cols + 8, generator=gen)).to(dtype)[:, :n_cols]
    w = (0.5 * torch.randn(n_cols, generator=gen)).to(dtype)
    residual = torch.randn(rows, n_cols, generator=gen).to(dtype) if case["residual"] else None
    x64 = x.double()
    expected = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * (offset + w.double())
    if residual is not None:
        expected = expected + residual.double()
    if case["residual"] == "aliases-out":
        out = residual  # x = x + post_norm(attn), written in place
    else:
        out = torch.full((rows, n_cols), float("nan"), dtype=dtype)
    rmsnorm[rmsnorm_grid(rows)](
        x, w, residual, out, eps, x.stride(0), 0 if residual is None else residual.stride(0), out.stride(0),
        N_COLS=n_cols, BLOCK=case["block"], WEIGHT_OFFSET=offset, HAS_RESIDUAL=residual is not None)
    tol = TOLERANCE[case["dtype"]]
    excess = (out.double() - expected).abs() / (tol + tol * expected.abs())
    return {"nan": bool(out.isnan().any()), "worst": float(excess.max())}
"""

CASES = {
    "llama-fp32": dict(dtype="float32", rows=3, n_cols=256, offset=0.0, residual=None, block=256),
    "gemma-offset-bf16": dict(dtype="bfloat16", rows=2, n_cols=256, offset=1.0, residual=None, block=256),
    "non-pow2-width-fp16": dict(dtype="float16", rows=2, n_cols=200, offset=0.0, residual=None, block=256),
    "wide-row-in-chunks": dict(dtype="float32", rows=2, n_cols=200, offset=1.0, residual=None, block=64),
    "sandwich-residual-bf16": dict(dtype="bfloat16", rows=3, n_cols=96, offset=1.0, residual="separate", block=128),
    "residual-aliases-out": dict(dtype="float32", rows=2, n_cols=200, offset=1.0, residual="aliases-out", block=64),
}


@pytest.fixture(scope="module")
def results():
    return run_interpreted(SCRIPT, CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_float64_rmsnorm(results, name):
    result = results[name]
    assert not result["nan"], "rows left unwritten (poison NaN remains)"
    assert result["worst"] <= 1.0, f"error {result['worst']:.2f}x the tolerance"
