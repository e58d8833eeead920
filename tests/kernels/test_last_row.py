"""last_row copies row L - 1 of X (the step's last token) into Out, whatever L the launch is given,
under TRITON_INTERPRET=1."""

import pytest

from interpreted import run_interpreted

SCRIPT = """
from cuda_gqa.backends.aot.last_row import last_row_grid
from cuda_gqa.backends.kernels.last_row import last_row

def run(case):
    rows, n_cols, block = case["rows"], case["n_cols"], case["block"]
    x = torch.randn(rows, n_cols + 8)[:, :n_cols]  # row stride != width
    out = torch.full((1, n_cols), float("nan"))
    last_row[last_row_grid(n_cols, block)](x, out, case["l"], x.stride(0), N_COLS=n_cols, BLOCK=block)
    return {"equal": torch.equal(out[0], x[case["l"] - 1])}
"""

CASES = {  # rows: the buffer's (the bound); l: the call's token count
    "decode-one-row": dict(rows=12, l=1, n_cols=48, block=64),
    "prefill-of-seven": dict(rows=12, l=7, n_cols=48, block=64),
    "the-bound-over-column-blocks": dict(rows=12, l=12, n_cols=100, block=32),
}


@pytest.fixture(scope="module")
def results():
    return run_interpreted(SCRIPT, CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_copies_the_last_of_l_rows(results, name):
    assert results[name]["equal"]
