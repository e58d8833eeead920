"""gqa_attention_fwd compiles to cubins for sm_80 and sm_90 on a machine without a GPU."""

import pytest
import torch

from cuda_gqa.backends.aot.attention import compile_attention
from cuda_gqa.backends.aot.variant import AttentionVariant

EM_CUDA = 190
RUNTIME_ARGS = ["Q", "K", "V", "Out", "sm_scale",
                *[f"stride_{t}{d}" for t, dims in (("q", "bhm"), ("k", "bhn"), ("v", "bhn"), ("o", "bhm")) for d in dims],
                "L_q", "L_kv"]


def elf_cuda_arch(image: bytes) -> int:
    """The sm_XX an ELF cubin targets: e_flags holds it in its low byte
    (older ABI) or second byte (ABI of sm_90 and newer)."""
    flags = int.from_bytes(image[48:52], "little")
    return flags & 0xFF if flags & 0xFF >= 20 else (flags >> 8) & 0xFF


@pytest.fixture(scope="module", params=[80, 90], ids=lambda a: f"sm_{a}")
def compiled(request):
    return compile_attention(dtype=torch.float16, head_dim=64, num_heads_q=8, group_size=4,
                             variant=AttentionVariant(is_causal=True), arch=request.param)


def test_cubin_is_a_cuda_elf_for_the_requested_arch(compiled):
    assert compiled.cubin[:4] == b"\x7fELF"
    assert int.from_bytes(compiled.cubin[18:20], "little") == EM_CUDA
    assert elf_cuda_arch(compiled.cubin) == compiled.arch
    assert f".target sm_{compiled.arch}" in compiled.ptx


def test_entry_parameters_are_the_runtime_args_then_triton_scratch(compiled):
    names = [p.name for p in compiled.params]
    assert names == RUNTIME_ARGS + ["global_scratch", "profile_scratch"]
    types = {p.name: p.type for p in compiled.params}
    assert [types[n] for n in ("Q", "sm_scale", "stride_qb", "L_q", "global_scratch")] == \
        ["ptr", "fp32", "i32", "i32", "ptr"]


def test_divisibility_is_compiled_in_and_recorded(compiled):
    divisible = {p.name for p in compiled.params if p.divisibility == 16}
    assert divisible == {"Q", "K", "V", "Out"} | {n for n in RUNTIME_ARGS if n.startswith("stride_")}
    # The assumption pays off as 16-byte vector loads and stores of Q and Out
    # (compiled without it, the same kernel stores one fp16 at a time).
    assert "ld.global.v4" in compiled.ptx and "st.global.v4" in compiled.ptx
    assert "st.global.b16" not in compiled.ptx


def test_metadata_is_recorded(compiled):
    assert compiled.name == "gqa_attention_fwd"
    assert compiled.num_warps == 4
    assert 0 < compiled.shared_mem_bytes <= 96 * 1024
    assert compiled.global_scratch_bytes == 0 and compiled.profile_scratch_bytes == 0


@pytest.mark.parametrize("head_dim", [72, 0, 272])
def test_unsupported_head_dims_are_refused_naming_the_limit(head_dim):
    with pytest.raises(ValueError, match="multiple of 16 up to 256"):
        compile_attention(dtype=torch.float16, head_dim=head_dim, num_heads_q=8, group_size=4, variant=AttentionVariant(),
                          arch=90)


def test_unsupported_dtype_is_refused():
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        compile_attention(dtype=torch.int8, head_dim=64, num_heads_q=8, group_size=4, variant=AttentionVariant(), arch=90)
