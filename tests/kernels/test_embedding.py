"""embedding matches indexing the table (times Gemma's rounded scale) exactly, and flags out-of-range ids
without reading outside the table, under TRITON_INTERPRET=1.

bfloat16 only unscaled here: Triton 3.9's interpreter truncates float32 ->
bfloat16 where the GPU rounds to nearest (tests/kernels/test_ops_gpu.py
checks Gemma's bfloat16 scale).
"""

import pytest

from interpreted import run_interpreted

SCRIPT = """
from cuda_gqa.backends.aot.embedding import embedding_grid, embedding_scale
from cuda_gqa.backends.kernels.embedding import embedding

V = 10
SENTINEL = 1000.0

def run(case):
    dtype = getattr(torch, case["dtype"])
    d, tokens = case["d"], torch.tensor(case["tokens"], dtype=getattr(torch, case["token_dtype"]))
    l = tokens.numel()
    gen = torch.Generator().manual_seed(0)
    # The table sits between sentinel rows: reading id -1 or V would fetch SENTINEL.
    storage = torch.full((V + 2, d), SENTINEL).to(dtype)
    storage[1:V + 1] = torch.randn(V, d, generator=gen).to(dtype)
    table = storage[1:V + 1]
    out = torch.full((l, d + 8), float("nan"), dtype=dtype)[:, :d]  # row stride != width
    error = torch.full((1,), -1, dtype=torch.int32)
    scale = embedding_scale(case["scale"], dtype)
    embedding[embedding_grid(l)](tokens, table, out, error, l, V, out.stride(0), D=d, BLOCK_D=case["block_d"],
                                 SCALE=scale, BLOCK_L=2)
    inside = (tokens >= 0) & (tokens < V)
    expected = torch.zeros(l, d, dtype=dtype)
    # As decoder.py: embed_tokens(tokens) * torch.tensor(sqrt(hidden), dtype=x.dtype).
    expected[inside] = table[tokens[inside].long()] * torch.tensor(case["scale"], dtype=dtype)
    return {"equal": torch.equal(out, expected), "error": int(error.item())}
"""

CASES = {
    "copy-fp32-int64": dict(dtype="float32", token_dtype="int64", d=48, block_d=64, scale=1.0, tokens=[3, 0, 9]),
    "gemma-scale-fp16-int32": dict(dtype="float16", token_dtype="int32", d=40, block_d=16, scale=40 ** 0.5,
                                   tokens=[7, 7, 1, 4, 2]),
    "gemma-scale-fp16-decode": dict(dtype="float16", token_dtype="int64", d=48, block_d=64, scale=48 ** 0.5,
                                    tokens=[5]),
    "id-past-the-vocabulary": dict(dtype="float32", token_dtype="int64", d=40, block_d=16, scale=1.0,
                                   tokens=[2, 10, 4]),
    "negative-id-late-in-a-prefill": dict(dtype="bfloat16", token_dtype="int32", d=48, block_d=64, scale=1.0,
                                          tokens=[1, 2, 3, 4, -1]),
}
ERROR = {"id-past-the-vocabulary": 1, "negative-id-late-in-a-prefill": 1}


@pytest.fixture(scope="module")
def results():
    return run_interpreted(SCRIPT, CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rows_equal_the_scaled_table_rows_and_bad_ids_are_flagged(results, name):
    got = results[name]
    assert got["equal"], "rows differ from table[tokens] * scale (rows of bad ids must be zero, not read)"
    assert got["error"] == ERROR.get(name, 0), "Error flag (poisoned to -1) not set to whether any id is bad"
