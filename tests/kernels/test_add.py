"""add equals torch's A + B exactly (also in place), under TRITON_INTERPRET=1.

No bfloat16 here: Triton 3.9's interpreter truncates float32 -> bfloat16
where the GPU rounds to nearest (tests/kernels/test_ops_gpu.py checks it).
"""

import pytest

from interpreted import run_interpreted

SCRIPT = """
from cuda_gqa.backends.aot.add import BLOCK, add_grid
from cuda_gqa.backends.kernels.add import add

def run(case):
    dtype, n = getattr(torch, case["dtype"]), case["n"]
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, generator=gen).to(dtype), torch.randn(n, generator=gen).to(dtype)
    expected = a + b
    out = a if case["in_place"] else torch.full((n,), float("nan"), dtype=dtype)
    add[add_grid(n)](a, b, out, n, BLOCK=BLOCK)
    return {"equal": torch.equal(out, expected)}
"""

CASES = {
    "fp32-ragged": dict(dtype="float32", n=2500, in_place=False),
    "fp16-in-place": dict(dtype="float16", n=2048 + 7, in_place=True),
    "fp16-one-row": dict(dtype="float16", n=640, in_place=False),
}


@pytest.fixture(scope="module")
def results():
    return run_interpreted(SCRIPT, CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_torch_add(results, name):
    assert results[name]["equal"]
