"""Compilations run in worker processes, side by side across archs, with a progress line each."""

import logging
import time
from types import SimpleNamespace

import pytest
import torch

from cuda_gqa.backends.aot import compile_pool, triton_to_cubin
from cuda_gqa.backends.aot.attention_decode import compile_decode_combine
from cuda_gqa.backends.attention_plan import build_attention_payload
from cuda_gqa.backends.kernels.attention_decode import gqa_decode_combine
from cuda_gqa.backends.serialization import deserialize_payload


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_GQA_CACHE_DIR", str(tmp_path / "cache"))
    triton_to_cubin.forget_compiled_in_process()
    yield
    triton_to_cubin.forget_compiled_in_process()


def test_worker_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CUDA_GQA_COMPILE_WORKERS", "3")
    assert compile_pool.worker_count() == 3
    monkeypatch.delenv("CUDA_GQA_COMPILE_WORKERS")
    assert compile_pool.worker_count() >= 1
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("CUDA_GQA_COMPILE_WORKERS", bad)
        with pytest.raises(ValueError, match="CUDA_GQA_COMPILE_WORKERS must be a positive integer"):
            compile_pool.worker_count()


def test_a_worker_compiles_what_this_process_would(fresh_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_GQA_COMPILE_WORKERS", "2")
    in_worker = compile_decode_combine(dtype=torch.bfloat16, head_dim=64, num_heads_q=4, arch=86)
    assert compile_pool._pool is not None  # it went through the pool
    triton_to_cubin.forget_compiled_in_process()
    monkeypatch.setenv("CUDA_GQA_CACHE_DIR", str(tmp_path / "empty"))  # no disk cache hit either
    monkeypatch.setenv("CUDA_GQA_COMPILE_WORKERS", "1")
    here = compile_decode_combine(dtype=torch.bfloat16, head_dim=64, num_heads_q=4, arch=86)
    assert here == in_worker


def test_kernels_not_importable_by_workers_compile_here():
    def local_kernel():
        pass
    assert compile_pool._import_path(local_kernel) is None
    assert compile_pool._import_path(gqa_decode_combine) == ("cuda_gqa.backends.kernels.attention_decode",
                                                             "gqa_decode_combine")


def test_each_finished_arch_logs_a_progress_line(fresh_cache, caplog):
    with caplog.at_level(logging.INFO, logger="cuda_gqa.backends.aot.compile_pool"):
        build_attention_payload(dtype=torch.float16, batch=1, num_heads_q=4, num_heads_kv=1, head_dim=32, l_q=64,
                                l_kv=64, is_causal=True, archs=(80, 86, 89, 90), ptx=False, generic=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compiled ")]
    # sm_86 and sm_89 run sm_80's cubin: two compilations for four archs.
    assert sorted(line.split()[2] for line in lines) == ["sm_80", "sm_90"]
    assert [line.split("(")[1].split(",")[0] for line in lines] == ["1/2", "2/2"]
    assert all(line.startswith("compiled gqa_attention_fwd sm_") and line.endswith(" s)") for line in lines)


def test_progress_lines_count_the_whole_batch_however_fast_a_compile_is(caplog):
    # Nothing starts until the batch is complete, so "k/n" has the batch's n even
    # when a compilation (a cache hit) would finish before the next is asked for.
    started, used = [], []

    def compile_one(arch):
        started.append(arch)
        return SimpleNamespace(name=f"kernel_{arch}")

    with caplog.at_level(logging.INFO, logger="cuda_gqa.backends.aot.compile_pool"):
        with compile_pool.compiling_together():
            compile_pool.compile_in_batch(compile_one, [80], used.append)
            time.sleep(0.05)
            assert started == []
            compile_pool.compile_in_batch(compile_one, [90, 100], used.append)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compiled ")]
    assert sorted(line.split("(")[1].split(",")[0] for line in lines) == ["1/3", "2/3", "3/3"]
    assert sorted(started) == [80, 90, 100]
    assert [[k.name for k in results] for results in used] == [["kernel_80"], ["kernel_90", "kernel_100"]]


def test_a_failed_compile_fails_the_batch_and_uses_nothing():
    used = []

    def compile_one(arch):
        if arch == 90:
            raise RuntimeError("ptxas died")
        return SimpleNamespace(name="k")

    with pytest.raises(RuntimeError, match="ptxas died"):
        with compile_pool.compiling_together():
            compile_pool.compile_in_batch(compile_one, [90], used.append)
            compile_pool.compile_in_batch(compile_one, [80], used.append)
    assert used == []


def test_archs_of_one_major_version_share_the_lowest_ones_cubin(fresh_cache):
    payload = build_attention_payload(dtype=torch.float16, batch=1, num_heads_q=4, num_heads_kv=1, head_dim=32,
                                      l_q=64, l_kv=64, is_causal=True, archs=(80, 86, 87, 89, 90), ptx=False,
                                      generic=False)
    (kernel,) = deserialize_payload(payload).plans[0].kernels
    images = {c.arch: bytes(c.image) for c in kernel.cubins}
    assert sorted(images) == [80, 86, 87, 89, 90]
    assert images[80] == images[86] == images[87] == images[89] != images[90]


def test_all_kernels_of_a_payload_compile_in_one_batch(fresh_cache, caplog):
    # A split-KV decode: split and combine kernels, each for two archs, started together.
    with caplog.at_level(logging.INFO, logger="cuda_gqa.backends.aot.compile_pool"):
        payload = build_attention_payload(dtype=torch.float16, batch=1, num_heads_q=8, num_heads_kv=2, head_dim=64,
                                          l_q=1, l_kv=4096, is_causal=False, archs=(80, 90), ptx=False,
                                          generic=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compiled ")]
    assert sorted(line.split()[1] for line in lines) == ["gqa_decode_combine"] * 2 + ["gqa_decode_split"] * 2
    assert [line.split("(")[1].split(",")[0] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    kernels = deserialize_payload(payload).plans[0].kernels
    assert [k.name for k in kernels] == [b"gqa_decode_split", b"gqa_decode_combine"]
    assert all([c.arch for c in k.cubins] == [80, 90] and k.params for k in kernels)
