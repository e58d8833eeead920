"""The small-op kernels of the whole-model decode step (rmsnorm, rope_cache_write, embedding, argmax_rows +
argmax_merge, add, last_row) compile to cubins for sm_80 and sm_90 on a machine without a GPU, with the entry
parameters (names, order, divisibility) the emitters bind."""

import pytest
import torch

from cuda_gqa.backends.aot.add import compile_add
from cuda_gqa.backends.aot.argmax_rows import argmax_num_splits, compile_argmax_merge, compile_argmax_rows
from cuda_gqa.backends.aot.embedding import compile_embedding
from cuda_gqa.backends.aot.last_row import compile_last_row
from cuda_gqa.backends.aot.rmsnorm import compile_rmsnorm
from cuda_gqa.backends.aot.rope_cache_write import compile_rope_cache_write

EM_CUDA = 190
HIDDEN = ["global_scratch", "profile_scratch"]
ROPE_STRIDES = ["stride_qkv", "stride_qoh", "stride_qol", "stride_ch", "stride_cs"]
VOCAB = 128256

# name -> (compile it for an arch, its entry parameters, those compiled as multiples of 16)
KERNELS = {
    "rmsnorm": (
        lambda arch: compile_rmsnorm(dtype=torch.bfloat16, n_cols=2048, arch=arch),
        ["X", "W", "Out", "eps", "stride_xr", "stride_or"],
        {"X", "W", "Out", "stride_xr", "stride_or"}),
    "rmsnorm-gemma-sandwich": (
        lambda arch: compile_rmsnorm(dtype=torch.float16, n_cols=1152, arch=arch, weight_offset=1.0,
                                     has_residual=True),
        ["X", "W", "Residual", "Out", "eps", "stride_xr", "stride_rr", "stride_or"],
        {"X", "W", "Residual", "Out", "stride_xr", "stride_rr", "stride_or"}),
    "rope_cache_write": (
        lambda arch: compile_rope_cache_write(dtype=torch.bfloat16, position_dtype=torch.int64, heads_q=32,
                                              heads_kv=8, head_dim=64, arch=arch),
        ["QKV", "Cos", "Sin", "InputPos", "Q_out", "K_cache", "V_cache", "KvLen", "L", "S", "eps", *ROPE_STRIDES],
        {"QKV", "Cos", "Sin", "Q_out", "K_cache", "V_cache", *ROPE_STRIDES}),
    "rope_cache_write-qk-norm": (
        lambda arch: compile_rope_cache_write(dtype=torch.float16, position_dtype=torch.int32, heads_q=16,
                                              heads_kv=8, head_dim=128, arch=arch, qk_norm=True, norm_offset=1.0),
        ["QKV", "Cos", "Sin", "InputPos", "QNormW", "KNormW", "Q_out", "K_cache", "V_cache", "KvLen", "L", "S",
         "eps", *ROPE_STRIDES],
        {"QKV", "Cos", "Sin", "QNormW", "KNormW", "Q_out", "K_cache", "V_cache", *ROPE_STRIDES}),
    "rope_cache_write-interleaved": (
        lambda arch: compile_rope_cache_write(dtype=torch.float32, position_dtype=torch.int64, heads_q=4,
                                              heads_kv=2, head_dim=32, arch=arch, interleaved=True),
        ["QKV", "Cos", "Sin", "InputPos", "Q_out", "K_cache", "V_cache", "KvLen", "L", "S", "eps", *ROPE_STRIDES],
        {"QKV", "Cos", "Sin", "Q_out", "K_cache", "V_cache", *ROPE_STRIDES}),
    "embedding": (
        lambda arch: compile_embedding(dtype=torch.bfloat16, token_dtype=torch.int64, dim=2048, arch=arch,
                                       scale=2048 ** 0.5),
        ["Tokens", "Table", "Out", "Error", "L", "V", "stride_o"],
        {"Table", "Out", "stride_o"}),
    "argmax_rows-one-program-per-row": (
        lambda arch: compile_argmax_rows(dtype=torch.float32, vocab=VOCAB, num_splits=1, arch=arch),
        ["Logits", "Out", "stride_lr"],
        {"Logits", "stride_lr"}),
    "argmax_rows-splits": (
        lambda arch: compile_argmax_rows(dtype=torch.bfloat16, vocab=VOCAB, num_splits=argmax_num_splits(VOCAB),
                                         arch=arch),
        ["Logits", "Partials", "stride_lr"],
        {"Logits", "stride_lr"}),
    "argmax_merge": (
        lambda arch: compile_argmax_merge(num_splits=argmax_num_splits(VOCAB), arch=arch),
        ["Partials", "Out"],
        set()),
    "add": (
        lambda arch: compile_add(dtype=torch.bfloat16, n_cols=2048, arch=arch),
        ["A", "B", "Out", "stride_ar", "stride_br", "stride_or"],
        {"A", "B", "Out", "stride_ar", "stride_br", "stride_or"}),
    "last_row": (
        lambda arch: compile_last_row(dtype=torch.bfloat16, n_cols=2048, arch=arch),
        ["X", "Out", "L", "stride_xr"],
        {"X", "Out", "stride_xr"}),
}


def elf_cuda_arch(image: bytes) -> int:
    flags = int.from_bytes(image[48:52], "little")
    return flags & 0xFF if flags & 0xFF >= 20 else (flags >> 8) & 0xFF


@pytest.mark.parametrize("arch", [80, 90], ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("name", list(KERNELS))
def test_compiles_to_a_cuda_elf_with_the_documented_parameters(name, arch):
    compile_for, params, divisible = KERNELS[name]
    kernel = compile_for(arch)
    assert kernel.cubin[:4] == b"\x7fELF"
    assert int.from_bytes(kernel.cubin[18:20], "little") == EM_CUDA
    assert elf_cuda_arch(kernel.cubin) == arch
    assert kernel.name == name.split("-")[0]
    assert [p.name for p in kernel.params] == params + HIDDEN
    assert {p.name for p in kernel.params if p.divisibility == 16} == divisible
    assert kernel.global_scratch_bytes == 0 and kernel.profile_scratch_bytes == 0


@pytest.mark.parametrize("name", ["rmsnorm", "rmsnorm-gemma-sandwich", "embedding", "argmax_rows-splits", "add",
                                  "last_row"])
def test_row_kernels_move_16_bytes_per_load(name):
    """The alignment assumptions (pointers, strides, compile-time widths) give 16-byte loads."""
    assert "ld.global.v4" in KERNELS[name][0](90).ptx


def test_parameter_types():
    types = {p.name: p.type for p in KERNELS["rope_cache_write"][0](90).params}
    assert [types[n] for n in ("QKV", "InputPos", "KvLen", "L", "S", "eps", "stride_cs")] == \
        ["ptr", "ptr", "ptr", "i32", "i32", "fp32", "i32"]


def test_widths_that_are_no_multiple_of_16_compile_without_stride_assumptions():
    rmsnorm = compile_rmsnorm(dtype=torch.float32, n_cols=200, arch=90)
    assert {p.name for p in rmsnorm.params if p.divisibility == 16} == {"X", "W", "Out"}
    argmax = compile_argmax_rows(dtype=torch.float32, vocab=50, num_splits=1, arch=90)
    assert {p.name for p in argmax.params if p.divisibility == 16} == {"Logits"}


@pytest.mark.parametrize("compile_bad, message", [
    (lambda: compile_rmsnorm(dtype=torch.int8, n_cols=64, arch=90), "rmsnorm activation dtype torch.int8"),
    (lambda: compile_rmsnorm(dtype=torch.float16, n_cols=0, arch=90), "rmsnorm width 0"),
    (lambda: compile_rope_cache_write(dtype=torch.float16, position_dtype=torch.float32, heads_q=8, heads_kv=2,
                                      head_dim=64, arch=90), "input_pos must be int32 or int64"),
    (lambda: compile_rope_cache_write(dtype=torch.float16, position_dtype=torch.int64, heads_q=8, heads_kv=3,
                                      head_dim=64, arch=90), "8 q heads are not a positive multiple of 3"),
    (lambda: compile_rope_cache_write(dtype=torch.float16, position_dtype=torch.int64, heads_q=8, heads_kv=2,
                                      head_dim=72, arch=90), "multiple of 16 up to 256"),
    (lambda: compile_embedding(dtype=torch.float16, token_dtype=torch.int16, dim=64, arch=90),
     "token ids must be int32 or int64"),
    (lambda: compile_argmax_rows(dtype=torch.float32, vocab=VOCAB, num_splits=5, arch=90), "num_splits=5"),
    (lambda: compile_argmax_merge(num_splits=1, arch=90), "2 or more splits"),
    (lambda: compile_add(dtype=torch.int32, n_cols=64, arch=90), "add dtype torch.int32"),
    (lambda: compile_last_row(dtype=torch.int32, n_cols=64, arch=90), "last_row dtype torch.int32"),
    (lambda: compile_last_row(dtype=torch.float16, n_cols=0, arch=90), "last_row width 0"),
])
def test_unsupported_inputs_are_refused_naming_what_is_wrong(compile_bad, message):
    with pytest.raises(ValueError, match=message):
        compile_bad()
