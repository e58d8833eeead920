"""bench/bench_attention.py's upstream-ExecuTorch columns: the file given with --upstream-sdpa is
loaded at run time, and decode rows time upstream's decode routes (sdpa with kv_len, and
sdpa_decode_splitk) besides sdpa without kv_len; a route that refuses a shape gets a '-' cell and a
footnote with its reason. A stand-in upstream file (same entry-point signatures) keeps this on the
CPU; the GPU run uses the real one."""

import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_attention as bench  # noqa: E402

STAND_IN = textwrap.dedent("""
    import torch

    calls = []

    def _attend(q, k, v, kv_len):
        group = q.shape[1] // k.shape[1]
        n = k.shape[2] if kv_len is None else int(kv_len.item())
        k, v = k[:, :, :n].repeat_interleave(group, 1), v[:, :, :n].repeat_interleave(group, 1)
        return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1) @ v

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=0.0, enable_gqa=False,
             kv_len=None):
        calls.append(("sdpa", kv_len))
        return _attend(query, key, value, kv_len)

    def sdpa_decode_splitk(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=0.0,
                           enable_gqa=False, phi=5.0, kv_len=None):
        D = query.shape[-1]
        if D & (D - 1):
            raise RuntimeError(f"sdpa_decode_splitk requires power-of-2 head dim; got D={D}")
        calls.append(("splitk", kv_len))
        return _attend(query, key, value, kv_len)
""")


@pytest.fixture
def upstream(tmp_path):
    path = tmp_path / "sdpa.py"
    path.write_text(STAND_IN)
    return bench.load_upstream(path)


def _qkv(shape: bench.Shape):
    make = lambda h, l: torch.randn(shape.batch, h, l, shape.head_dim)
    return make(shape.heads_q, shape.l_q), make(shape.heads_kv, shape.l_kv), make(shape.heads_kv, shape.l_kv)


def test_decode_rows_time_upstreams_decode_routes_with_kv_len_of_the_whole_cache(upstream):
    shape = bench.Shape("decode", "llama3-8b", 1, 32, 8, 128, 1, 64)
    q, k, v = _qkv(shape)
    calls = bench.upstream_calls(shape, q, k, v, upstream)
    assert set(calls) == {"upstream ET Triton", "upstream ET Triton (kv_len)", "upstream ET split-K decode"}
    expected = torch.softmax(q @ k.repeat_interleave(4, 1).transpose(-1, -2) / 128**0.5, -1) @ v.repeat_interleave(4, 1)
    for name, call in calls.items():
        assert torch.allclose(call(), expected, atol=1e-5), name
    kv_lens = [kv_len for _, kv_len in upstream.calls]
    assert kv_lens[0] is None and all(int(n.item()) == shape.l_kv for n in kv_lens[1:])
    assert [name for name, _ in upstream.calls] == ["sdpa", "sdpa", "splitk"]


def test_verify_rows_use_kv_len_and_prefill_rows_only_plain_sdpa(upstream):
    verify = bench.Shape("verify", "llama3-8b", 1, 32, 8, 128, 4, 64)
    prefill = bench.Shape("prefill", "llama3-8b", 1, 32, 8, 128, 64, 64)
    assert set(bench.upstream_calls(verify, *_qkv(verify), upstream)) == {"upstream ET Triton",
                                                                            "upstream ET Triton (kv_len)"}
    assert set(bench.upstream_calls(prefill, *_qkv(prefill), upstream)) == {"upstream ET Triton"}


def test_an_upstream_file_without_kv_len_keeps_its_plain_sdpa_only(tmp_path):
    path = tmp_path / "old_sdpa.py"
    path.write_text("def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=0.0, "
                    "enable_gqa=False):\n    return query\n")
    shape = bench.Shape("decode", "llama3-8b", 1, 32, 8, 128, 1, 64)
    assert set(bench.upstream_calls(shape, *_qkv(shape), bench.load_upstream(path))) == {"upstream ET Triton"}


def test_a_missing_upstream_file_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        bench.load_upstream(tmp_path / "nowhere.py")


def test_head_dim_96_refusal_is_a_dash_cell_with_its_reason_in_a_footnote(upstream, monkeypatch):
    shape = bench.Shape("decode", "phi3", 1, 32, 8, 96, 1, 64)
    results = {}
    for name, call in bench.upstream_calls(shape, *_qkv(shape), upstream).items():
        try:
            call()
            results[name] = 1.0
        except RuntimeError as e:
            results[name] = bench.NotRun(f"{type(e).__name__}: {e}")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "stand-in GPU")
    names = ["upstream ET Triton", "upstream ET Triton (kv_len)", "upstream ET split-K decode"]
    table = bench.markdown([(shape, 1.0, results)], names, 3e12, 7e14)
    row = next(line for line in table.splitlines() if line.startswith("| decode phi3"))
    assert row.split(" | ")[2:5] == ["1.00", "1.00", "- [1]"]
    assert "- [1] upstream ET split-K decode: RuntimeError: sdpa_decode_splitk requires power-of-2 head dim; got D=96" \
        in table
