"""The forward's launch order (attention_fwd.program_tile), under TRITON_INTERPRET=1.

Every (query block, batch * head) is computed by exactly one program; the
programs that start first take the last query blocks (under a causal mask,
the longest) of a whole L2 section of heads; sections hold whole GQA groups
whose K and V fit the L2 budget.
"""

import json
import subprocess
import sys

import pytest

# A probe kernel records which tile each program gets, in launch order.
PROBE = """
import json, os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch, triton, triton.language as tl
from cuda_gqa.backends.kernels.attention_fwd import program_tile

@triton.jit
def probe(Tiles, L_kv, GROUP_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, ELEMENT_BYTES: tl.constexpr,
          L2_SECTION_BYTES: tl.constexpr):
    block_m, batch_head = program_tile(L_kv, GROUP_SIZE, HEAD_DIM, ELEMENT_BYTES, L2_SECTION_BYTES)
    linear = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    tl.store(Tiles + 2 * linear, block_m)
    tl.store(Tiles + 2 * linear + 1, batch_head)

out = []
for case in json.loads(sys.stdin.read()):
    tiles = torch.full((case["blocks"] * case["heads"], 2), -1, dtype=torch.int32)
    probe[(case["blocks"], case["heads"], 1)](tiles, case["l_kv"], GROUP_SIZE=case["group"],
                                              HEAD_DIM=case["head_dim"], ELEMENT_BYTES=2,
                                              L2_SECTION_BYTES=case["budget"])
    out.append(tiles.tolist())
print(json.dumps(out))
"""

MIB = 1 << 20
# blocks, heads (batch * query heads), group size, L_kv, head dim, L2 budget; the section (in heads) it gives.
CASES = [
    dict(blocks=8, heads=8, group=4, l_kv=1024, head_dim=128, budget=16 * MIB, section=8),  # all K/V fit
    dict(blocks=5, heads=12, group=4, l_kv=8192, head_dim=128, budget=8 * MIB, section=8),  # 2 KV heads a section
    dict(blocks=3, heads=6, group=2, l_kv=4096, head_dim=256, budget=1 * MIB, section=2),  # one GQA group at least
    dict(blocks=7, heads=5, group=1, l_kv=100, head_dim=64, budget=16 * MIB, section=5),
    dict(blocks=1, heads=3, group=3, l_kv=33, head_dim=64, budget=16 * MIB, section=3),
]


@pytest.fixture(scope="module")
def orders():
    result = subprocess.run([sys.executable, "-c", PROBE], input=json.dumps(CASES), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_every_tile_is_taken_once(orders, index):
    case = CASES[index]
    tiles = sorted(map(tuple, orders[index]))
    assert tiles == [(m, h) for m in range(case["blocks"]) for h in range(case["heads"])]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_a_section_runs_its_heads_longest_block_first(orders, index):
    case = CASES[index]
    section = case["section"]
    tiles = orders[index]
    for first_head in range(0, case["heads"], section):
        heads = list(range(first_head, min(first_head + section, case["heads"])))
        start = first_head * case["blocks"]
        run = tiles[start:start + len(heads) * case["blocks"]]
        # Heads fastest, query blocks from the last down.
        assert run == [[m, h] for m in reversed(range(case["blocks"])) for h in heads]
