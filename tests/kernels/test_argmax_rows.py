"""argmax_rows (one program per row, or splits merged by argmax_merge) equals torch.argmax exactly:
lowest index on ties, -inf rows, NaN, signed zeros, under TRITON_INTERPRET=1."""

import pytest

from interpreted import run_interpreted

SCRIPT = """
from cuda_gqa.backends.aot.argmax_rows import argmax_merge_grid, argmax_rows_grid, argmax_workspace_shape
from cuda_gqa.backends.kernels.argmax_rows import argmax_merge, argmax_rows

V, SPLIT, BLOCK = 50, 16, 8  # 4 splits, the last one partial; one split: SPLIT = 56 covers the row

def logits(kind, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, V, generator=gen)
    if kind == "ties":  # the maximum twice in a row, in different splits and within one
        x[0, 20] = x[0, 40] = 9.0
        x[1, 3] = x[1, 7] = 9.0
        x[2, 15] = x[2, 16] = 9.0  # across a split boundary
    elif kind == "infinities":
        x[0] = float("-inf")
        x[1] = float("-inf")
        x[1, 33] = -1e30
        x[2, 41] = float("inf")
    elif kind == "negative":
        x = -x.abs() - 1.0
    elif kind == "signed-zeros":
        x = -x.abs() - 1.0
        x[:, 30] = 0.0
        x[:, 10] = -0.0  # equal to +0.0: the lower index wins
    elif kind == "nan":
        x[0, 12] = x[0, 44] = float("nan")
        x[1, 49] = float("nan")
    elif kind == "decode":
        x = x[:1]
    return x.to(dtype)

def run(case):
    x = logits(case["kind"], getattr(torch, case["dtype"]))
    x = torch.cat([x, torch.zeros(x.shape[0], 6, dtype=x.dtype)], dim=1)[:, :V]  # row stride != V
    l = x.shape[0]
    out = torch.full((l,), -5, dtype=torch.int64)
    if case["splits"] == 1:
        argmax_rows[argmax_rows_grid(l, 1)](x, out, None, x.stride(0), V=V, NUM_SPLITS=1, SPLIT=56, BLOCK=BLOCK)
    else:
        splits = -(-V // SPLIT)
        partials = torch.full(argmax_workspace_shape(l, splits), 77, dtype=torch.int32)
        argmax_rows[argmax_rows_grid(l, splits)](x, None, partials, x.stride(0), V=V, NUM_SPLITS=splits,
                                                 SPLIT=SPLIT, BLOCK=BLOCK)
        argmax_merge[argmax_merge_grid(l)](partials, out, NUM_SPLITS=splits, BLOCK_S=4)
    return {"got": out.tolist(), "expected": torch.argmax(x, dim=-1).tolist()}
"""

CASES = {f"{kind}-{dtype}-{splits}-split{'s' if splits > 1 else ''}": dict(kind=kind, dtype=dtype, splits=splits)
         for kind, dtype in [("ties", "float32"), ("infinities", "float32"), ("negative", "bfloat16"),
                             ("signed-zeros", "float32"), ("nan", "float16"), ("decode", "float32")]
         for splits in (1, 4)}


@pytest.fixture(scope="module")
def results():
    return run_interpreted(SCRIPT, CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_torch_argmax(results, name):
    got = results[name]
    assert got["got"] == got["expected"]
