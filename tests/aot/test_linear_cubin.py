"""linear_gemv and linear_gemm compile to cubins for sm_80 and sm_90 on a machine without a GPU."""

import pytest
import torch

from cuda_gqa.backends.aot.linear import compile_linear
from cuda_gqa.backends.heuristics import SHARED_MEMORY_BUDGET, LinearConfig, linear_config

EM_CUDA = 190
# Every variant's entry point: N and K are compiled in, Bias and Residual always present.
PARAMS = ["X", "W", "Bias", "Residual", "Out", "M", "eps", "stride_xm", "stride_rm", "stride_om"]
HIDDEN = ["global_scratch", "profile_scratch"]
ALIGNED = {"X", "W", "Residual", "Out", "stride_xm", "stride_rm", "stride_om"}
N, K = 256, 512


def elf_cuda_arch(image: bytes) -> int:
    flags = int.from_bytes(image[48:52], "little")
    return flags & 0xFF if flags & 0xFF >= 20 else (flags >> 8) & 0xFF


def compile_for(kind, arch, *, m, dtype=torch.bfloat16, out_dtype=None, aligned=True, **variant):
    config = linear_config(kind, m, N, K, dtype, arch, gated=bool(variant.get("gated")))
    return compile_linear(kind=kind, dtype=dtype, out_dtype=out_dtype or dtype, n=N, k=K, arch=arch, config=config,
                          aligned=aligned, **variant)


FULL_VARIANT = dict(has_bias=True, has_residual=True, norm_prologue=True, gated="silu")


@pytest.fixture(scope="module", params=[("gemv", 80), ("gemv", 90), ("gemm", 80), ("gemm", 90)],
                ids=lambda p: f"{p[0]}-sm_{p[1]}")
def compiled(request):
    kind, arch = request.param
    return compile_for(kind, arch, m=1 if kind == "gemv" else 512, **FULL_VARIANT)


def test_cubin_is_a_cuda_elf_for_the_requested_arch(compiled):
    assert compiled.cubin[:4] == b"\x7fELF"
    assert int.from_bytes(compiled.cubin[18:20], "little") == EM_CUDA
    assert elf_cuda_arch(compiled.cubin) == compiled.arch
    assert f".target sm_{compiled.arch}" in compiled.ptx
    assert compiled.name in ("linear_gemv", "linear_gemm")


def test_entry_parameters_are_the_documented_list_then_triton_scratch(compiled):
    assert [p.name for p in compiled.params] == PARAMS + HIDDEN
    types = {p.name: p.type for p in compiled.params}
    assert [types[n] for n in ("X", "Bias", "Out", "M", "eps", "stride_xm", "global_scratch")] == \
        ["ptr", "ptr", "ptr", "i32", "fp32", "i32", "ptr"]
    assert compiled.global_scratch_bytes == 0 and compiled.profile_scratch_bytes == 0


def test_divisibility_is_compiled_in_and_recorded(compiled):
    assert {p.name for p in compiled.params if p.divisibility == 16} == ALIGNED
    assert "ld.global.v4" in compiled.ptx  # 16-byte loads of W (and X)


def test_gemm_uses_tensor_cores_within_the_shared_memory_budget():
    for arch, instruction in ((80, "mma.sync"), (90, "wgmma")):
        kernel = compile_for("gemm", arch, m=512)
        assert instruction in kernel.ptx
        assert 0 < kernel.shared_mem_bytes <= SHARED_MEMORY_BUDGET


def test_generic_variant_assumes_only_the_weight_aligned():
    """aligned=False: no alignment assumed for activations and strides; W's loads stay 16 bytes wide."""
    kernel = compile_for("gemv", 90, m=1, aligned=False)
    assert {p.name for p in kernel.params if p.divisibility == 16} == {"W"}
    aligned = compile_for("gemv", 90, m=1)
    assert kernel.ptx.count("ld.global.v4") < aligned.ptx.count("ld.global.v4")
    assert "ld.global.v4" in kernel.ptx


def test_float32_logits_are_stored_as_float32():
    kernel = compile_for("gemv", 90, m=1, out_dtype=torch.float32, norm_prologue=True, softcap=30.0)
    assert [p.name for p in kernel.params] == PARAMS + HIDDEN
    assert "st.global.b32" in kernel.ptx or "st.global.v4.b32" in kernel.ptx or "st.global.v2.b32" in kernel.ptx


@pytest.mark.parametrize("bad, message", [
    (dict(kind="gemx"), "linear kind 'gemx'"),
    (dict(dtype=torch.int8), "float16, bfloat16 or float32"),
    (dict(out_dtype=torch.float16), "must be the input's"),
    (dict(gated="relu"), "gated='relu'"),
    (dict(softcap=-1.0), "softcap=-1.0 is negative"),
    (dict(n=0), "must be positive"),
    (dict(config=LinearConfig(1, 4, 256, 4, 1, split_k=2)), "split_k=2"),
    (dict(kind="gemm", config=LinearConfig(8, 64, 64, 4, 2)), "at least 16 wide"),
])
def test_unsupported_arguments_are_refused_naming_what_is_wrong(bad, message):
    args = dict(kind="gemv", dtype=torch.bfloat16, out_dtype=torch.bfloat16, n=N, k=K, arch=90,
                config=LinearConfig(1, 4, 256, 4, 1))
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        compile_linear(**args)


@pytest.mark.parametrize("m, gated", [(1, ""), (1, "silu"), (4, "")])
def test_gemv_k_loop_moves_nothing_between_threads(m, gated):
    """X, W, the products and the accumulator share one layout: the K loop of linear_gemv holds no
    layout conversion (a shared-memory round trip and a barrier per step), its norm squares included."""
    import triton
    from triton.backends.compiler import GPUTarget

    from cuda_gqa.backends.aot.linear import ALIGNED_PARAMS, KERNELS
    from cuda_gqa.backends.aot.triton_to_cubin import _options, _triton_source

    config = linear_config("gemv", m, 2048, 2048, torch.bfloat16, 90, gated=bool(gated))
    signature = {name: "*bf16" for name in ("X", "W", "Bias", "Residual", "Out")}
    signature.update(M="i32", eps="fp32", stride_xm="i32", stride_rm="i32", stride_om="i32")
    constexprs = dict(N=2048, K=8192, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                      NORM_PROLOGUE=True, HAS_BIAS=False, HAS_RESIDUAL=True, GATED=gated, SOFTCAP=0.0,
                      WAIT_FOR_PREVIOUS=False)
    source = _triton_source(KERNELS["gemv"], signature, constexprs, ALIGNED_PARAMS)
    ttgir = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                           options=_options(config.num_warps, config.num_stages, None)).asm["ttgir"]
    loop = ttgir[ttgir.index("scf.for"):ttgir.index("scf.yield")]
    assert "tt.load" in loop and "convert_layout" not in loop and "tt.reduce" not in loop
