"""kv_cache_write matches torch's index_copy_ and stores kv_len (CPU, under TRITON_INTERPRET=1)."""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from cuda_gqa.backends.kernels.kv_cache_write import kv_cache_write, kv_cache_write_grid

    case = json.loads(sys.argv[1])
    dtype, position_dtype = getattr(torch, case["dtype"]), getattr(torch, case["position_dtype"])
    b, h, s, d = 2, 3, 20, 48
    gen = torch.Generator().manual_seed(0)
    k_cache = torch.randn(b, h, s, d, generator=gen).to(dtype)
    v_cache = torch.randn(b, h, s, d, generator=gen).to(dtype)
    positions = torch.tensor(case["positions"], dtype=position_dtype)
    l = positions.numel()
    # New rows as a model's transposed projections give them: [B, L, H, D] storage.
    k_new = torch.randn(b, l, h, d, generator=gen).to(dtype).transpose(1, 2)
    v_new = torch.randn(b, l, h, d, generator=gen).to(dtype).transpose(1, 2)
    inside = (positions >= 0) & (positions < s)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    expected_k.index_copy_(2, positions[inside].long(), k_new[:, :, inside])
    expected_v.index_copy_(2, positions[inside].long(), v_new[:, :, inside])
    kv_len = torch.full((1,), -7, dtype=torch.int32)
    block_l = 1 << (l - 1).bit_length()
    kv_cache_write[kv_cache_write_grid(l, b, h)](
        k_new, v_new, positions, k_cache, v_cache, kv_len, l, s, *k_new.stride()[:3], *v_new.stride()[:3],
        *k_cache.stride()[:3], *v_cache.stride()[:3], NUM_HEADS_KV=h, HEAD_DIM=d, BLOCK_D=64, BLOCK_L=block_l)
    print(json.dumps({"k": torch.equal(k_cache, expected_k), "v": torch.equal(v_cache, expected_v),
                      "kv_len": int(kv_len.item())}))
""")

CASES = {  # positions; kv_len = min(max + 1, S) with S = 20
    "prefill-chunk": dict(positions=[4, 5, 6, 7, 8], dtype="float16", position_dtype="int64", kv_len=9),
    "decode-step": dict(positions=[11], dtype="float32", position_dtype="int32", kv_len=12),
    "past-the-cache-skipped": dict(positions=[18, 19, 20, 21], dtype="float16", position_dtype="int64", kv_len=20),
    "unordered": dict(positions=[3, 0, 2], dtype="float32", position_dtype="int64", kv_len=4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cache_write_matches_index_copy(name):
    case = CASES[name]
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(case)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got == {"k": True, "v": True, "kv_len": case["kv_len"]}


FROM_START_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from cuda_gqa.backends.kernels.kv_cache_write import kv_cache_write, kv_cache_write_grid, kv_len_from_start

    case = json.loads(sys.argv[1])
    dtype, position_dtype = getattr(torch, case["dtype"]), getattr(torch, case["position_dtype"])
    b, h, s, d, l, start = 2, 3, 20, 48, case["l_new"], case["start"]
    gen = torch.Generator().manual_seed(0)
    # ExecuTorch's llama layout: caches [B, S, H, D], new rows [B, L, H, D]; strides given as (b, h, seq).
    k_cache = torch.randn(b, s, h, d, generator=gen).to(dtype)
    v_cache = torch.randn(b, s, h, d, generator=gen).to(dtype)
    k_new = torch.randn(b, l, h, d, generator=gen).to(dtype)
    v_new = torch.randn(b, l, h, d, generator=gen).to(dtype)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    first, last = max(start, 0), min(start + l, s)  # llama::update_cache's rows, those inside the cache
    if first < last:
        expected_k[:, first:last] = k_new[:, first - start:last - start]
        expected_v[:, first:last] = v_new[:, first - start:last - start]
    position = torch.tensor(start, dtype=position_dtype)  # 0-dim, as input_pos[0]
    bhs = lambda t: (t.stride(0), t.stride(2), t.stride(1))
    kv_len = torch.full((1,), -7, dtype=torch.int32)
    kv_cache_write[kv_cache_write_grid(l, b, h)](
        k_new, v_new, position, k_cache, v_cache, kv_len, l, s, *bhs(k_new), *bhs(v_new), *bhs(k_cache),
        *bhs(v_cache), NUM_HEADS_KV=h, HEAD_DIM=d, BLOCK_D=64, BLOCK_L=1, FROM_START=True)
    alone = torch.full((1,), -7, dtype=torch.int32)
    kv_len_from_start[(1, 1, 1)](position, alone, l, s)
    print(json.dumps({"k": torch.equal(k_cache, expected_k), "v": torch.equal(v_cache, expected_v),
                      "kv_len": int(kv_len.item()), "kv_len_from_start": int(alone.item())}))
""")

FROM_START_CASES = {  # kv_len = min(start + L_new, S) with S = 20
    "prefill": dict(start=0, l_new=7, dtype="float32", position_dtype="int64", kv_len=7),
    "decode-step": dict(start=12, l_new=1, dtype="float16", position_dtype="int32", kv_len=13),
    "chunk-past-the-cache": dict(start=18, l_new=4, dtype="float32", position_dtype="int64", kv_len=20),
}


@pytest.mark.parametrize("name", sorted(FROM_START_CASES))
def test_cache_write_from_a_start_position_matches_llama_update_cache(name):
    """FROM_START (llama::update_cache's rows at start_pos onwards, [B, S, H, D] caches) and
    kv_len_from_start (the same kv_len, for caches the delegate does not write)."""
    case = FROM_START_CASES[name]
    result = subprocess.run([sys.executable, "-c", FROM_START_SCRIPT, json.dumps(case)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got == {"k": True, "v": True, "kv_len": case["kv_len"], "kv_len_from_start": case["kv_len"]}
