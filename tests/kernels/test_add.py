"""add equals torch's A + B exactly (also in place), under TRITON_INTERPRET=1.

No bfloat16 here: Triton 3.9's interpreter truncates float32 -> bfloat16
where the GPU rounds to nearest (tests/kernels/test_ops_gpu.py checks it).
"""

import pytest

from interpreted import run_interpreted

SCRIPT = """
from cuda_gqa.backends.aot.add import add_grid
from cuda_gqa.backends.kernels.add import add

def run(case):
    dtype, rows, n = getattr(torch, case["dtype"]), case["rows"], case["n_cols"]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(rows, n, generator=gen).to(dtype)
    b = torch.randn(rows, n + 4, generator=gen).to(dtype)[:, :n]  # row stride != width
    expected = a + b
    out = a if case["in_place"] else torch.full((rows, n), float("nan"), dtype=dtype)
    block = case["block"]
    add[add_grid(rows, n, block)](a, b, out, a.stride(0), b.stride(0), out.stride(0), N_COLS=n, BLOCK=block)
    return {"equal": torch.equal(out, expected)}
"""

CASES = {
    "fp32-ragged-row-blocks": dict(dtype="float32", rows=3, n_cols=2500, block=1024, in_place=False),
    "fp16-in-place": dict(dtype="float16", rows=2, n_cols=72, block=32, in_place=True),
    "fp16-one-row": dict(dtype="float16", rows=1, n_cols=640, block=1024, in_place=False),
}


@pytest.fixture(scope="module")
def results():
    return run_interpreted(SCRIPT, CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_torch_add(results, name):
    assert results[name]["equal"]
