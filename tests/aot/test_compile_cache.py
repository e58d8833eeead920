"""Compiled kernels are reused: in this process, then from the on-disk cache, whose entries
are verified before use (a corrupt one is recompiled and rewritten), under a key that changes
with everything that changes the cubin."""

import importlib
import logging
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cuda_gqa.backends.aot import compile_cache, triton_to_cubin
from cuda_gqa.backends.aot.attention_decode import compile_decode_combine
from cuda_gqa.backends.aot.compiled_kernel import CompiledKernel, EntryParam
from cuda_gqa.backends.kernels.attention_decode import gqa_decode_combine

KEY = "ab" * 32
SAMPLE = CompiledKernel(name="k", arch=89, cubin=b"\x7fELF" + bytes(range(256)) * 3, ptx=".version 8.7\n.entry k()",
                        num_warps=4, num_stages=2, shared_mem_bytes=1024, global_scratch_bytes=0,
                        global_scratch_align=1, profile_scratch_bytes=0, profile_scratch_align=1,
                        params=(EntryParam("Q", "ptr", 16), EntryParam("L_q", "i32", 1)))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_GQA_CACHE_DIR", str(tmp_path / "cache"))
    triton_to_cubin.forget_compiled_in_process()
    yield tmp_path / "cache"
    triton_to_cubin.forget_compiled_in_process()


def test_the_suite_keeps_caches_out_of_home(caches_outside_home):
    assert Path.home() not in compile_cache.cache_dir().parents
    assert compile_cache.cache_dir().parent == caches_outside_home


def test_entry_round_trips(cache_dir):
    assert compile_cache.load(KEY) is None
    compile_cache.store(KEY, SAMPLE)
    assert compile_cache.load(KEY) == SAMPLE
    assert [p.name for p in cache_dir.iterdir()] == [f"{KEY}.kernel"]  # no temporary file left


def corrupt_truncated(data):
    return data[:-10]


def corrupt_flip_cubin_byte(data):
    i = data.index(b"\x7fELF") + 100
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]


def corrupt_header(data):
    return data.replace(b'"num_warps": 4', b'"num_warps": "4"')


def corrupt_garbage(data):
    return b"\0" * len(data)


@pytest.mark.parametrize("corrupt", [corrupt_truncated, corrupt_flip_cubin_byte, corrupt_header, corrupt_garbage])
def test_corrupt_entries_are_ignored_with_a_warning(cache_dir, corrupt, caplog):
    compile_cache.store(KEY, SAMPLE)
    path = cache_dir / f"{KEY}.kernel"
    path.write_bytes(corrupt(path.read_bytes()))
    with caplog.at_level(logging.WARNING):
        assert compile_cache.load(KEY) is None
    assert "ignoring corrupt compile cache entry" in caplog.text


def test_an_entry_filed_under_another_key_is_ignored(cache_dir):
    compile_cache.store(KEY, SAMPLE)
    other = "cd" * 32
    (cache_dir / f"{KEY}.kernel").rename(cache_dir / f"{other}.kernel")
    assert compile_cache.load(other) is None


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CUDA_GQA_CACHE_DIR", str(blocker / "cache"))
    with caplog.at_level(logging.WARNING):
        compile_cache.store(KEY, SAMPLE)
    assert "cannot write compile cache entry" in caplog.text


def compile_combine(arch=80):
    return compile_decode_combine(dtype=torch.float16, head_dim=64, num_heads_q=8, arch=arch)


def refuse_to_compile(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("compiled although the kernel was cached")
    monkeypatch.setattr(triton_to_cubin, "run_compile", refuse)


def test_second_compile_comes_from_memory_then_from_disk(cache_dir, monkeypatch):
    first = compile_combine()
    (entry,) = cache_dir.iterdir()
    with monkeypatch.context() as m:
        refuse_to_compile(m)
        assert compile_combine() == first  # this process's memo
        triton_to_cubin.forget_compiled_in_process()
        assert compile_combine() == first  # the disk cache, as a new process would
    # A corrupt entry is never trusted: recompiled and rewritten.
    entry.write_bytes(corrupt_flip_cubin_byte(entry.read_bytes()))
    triton_to_cubin.forget_compiled_in_process()
    assert compile_combine() == first
    assert compile_cache.decode_entry(entry.name.removesuffix(".kernel"), entry.read_bytes()) == first


COMBINE_SPEC = dict(signature={"Partial": "*fp32", "Lse": "*fp32", "Out": "*fp16", "L_q": "i32", "NUM_SPLITS": "i32",
                               "stride_ob": "i32", "stride_oh": "i32", "stride_om": "i32"},
                    constexprs={"NUM_HEADS_Q": 8, "HEAD_DIM": 64, "BLOCK_D": 64, "BLOCK_S": 16, "WAIT_FOR_SPLITS": False},
                    divisible_by_16=frozenset(["Partial", "Lse", "Out"]), arch=80, num_warps=4, num_stages=1)


@pytest.mark.parametrize("change", [
    dict(arch=90), dict(num_warps=8), dict(num_stages=2),
    dict(constexprs={**COMBINE_SPEC["constexprs"], "BLOCK_S": 32}),
    dict(divisible_by_16=frozenset(["Partial", "Lse"])),
    dict(signature={**COMBINE_SPEC["signature"], "Out": "*bf16"}),
], ids=["arch", "num_warps", "num_stages", "constexpr", "divisibility", "signature"])
def test_key_changes_with_what_changes_the_cubin(change):
    key = triton_to_cubin.compile_key(gqa_decode_combine, **COMBINE_SPEC)
    assert key == triton_to_cubin.compile_key(gqa_decode_combine, **COMBINE_SPEC)
    assert key != triton_to_cubin.compile_key(gqa_decode_combine, **{**COMBINE_SPEC, **change})


KERNEL_SOURCE = '''
import triton
import triton.language as tl

@triton.jit
def helper(x):
    return x * {factor}

@triton.jit
def kernel(X, N: tl.constexpr):
    offsets = tl.arange(0, N)
    tl.store(X + offsets, helper(tl.load(X + offsets)))
'''


def test_key_changes_when_a_called_jit_function_changes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    keys = []
    for factor in (2, 3):
        (tmp_path / "cache_key_kernel.py").write_text(textwrap.dedent(KERNEL_SOURCE.format(factor=factor)))
        sys.modules.pop("cache_key_kernel", None)
        module = importlib.import_module("cache_key_kernel")
        keys.append(triton_to_cubin.compile_key(module.kernel, signature={"X": "*fp32"}, constexprs={"N": 16},
                                                divisible_by_16=frozenset(["X"]), arch=80, num_warps=1, num_stages=1))
    sys.modules.pop("cache_key_kernel", None)
    assert keys[0] != keys[1]


def test_a_second_export_compiles_nothing(cache_dir, monkeypatch):
    from executorch.exir import to_edge_transform_and_lower
    from torch.nn import functional as F

    from cuda_gqa.backends.partition import CudaGqaPartitioner

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    inputs = (torch.zeros(1, 4, 16, 32, dtype=torch.float16), torch.zeros(1, 2, 16, 32, dtype=torch.float16),
              torch.zeros(1, 2, 16, 32, dtype=torch.float16))

    def export() -> bytes:
        program = to_edge_transform_and_lower(torch.export.export(Attention(), inputs),
                                              partitioner=[CudaGqaPartitioner(archs=["sm_80"])])
        return program.to_executorch().buffer

    first = export()
    triton_to_cubin.forget_compiled_in_process()  # as in a new process: only the disk cache is left
    refuse_to_compile(monkeypatch)
    assert export() == first
