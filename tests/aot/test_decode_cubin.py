"""gqa_decode_split and gqa_decode_combine compile to cubins for sm_80 and sm_90 on a machine without a GPU."""

import pytest
import torch

from cuda_gqa.backends.aot.attention_decode import compile_decode_combine, compile_decode_split
from cuda_gqa.backends.aot.variant import AttentionVariant
from cuda_gqa.backends.heuristics import SHARED_MEMORY_BUDGET, decode_config

EM_CUDA = 190
SPLIT_STRIDES = [f"stride_{t}{d}" for t, dims in (("q", "bhm"), ("k", "bhn"), ("v", "bhn"), ("o", "bhm")) for d in dims]
SPLIT_ARGS = ["Q", "K", "V", "Out", "Partial", "Lse", "Arrivals", "sm_scale", *SPLIT_STRIDES, "L_q", "L_kv"]
COMBINE_ARGS = ["Partial", "Lse", "Out", "stride_ob", "stride_oh", "stride_om", "L_q", "NUM_SPLITS"]
HIDDEN = ["global_scratch", "profile_scratch"]


def elf_cuda_arch(image: bytes) -> int:
    flags = int.from_bytes(image[48:52], "little")
    return flags & 0xFF if flags & 0xFF >= 20 else (flags >> 8) & 0xFF


def split_kernel(arch, single_split, dtype=torch.float16, head_dim=128, heads_q=32, group=4, l_q=1, fused=False):
    config = decode_config(head_dim, dtype, group, l_q)
    return compile_decode_split(dtype=dtype, head_dim=head_dim, num_heads_q=heads_q, group_size=group,
                                variant=AttentionVariant(is_causal=True), single_split=single_split, arch=arch,
                                block_m=config.block_m, block_n=config.block_n, num_warps=config.num_warps,
                                num_stages=config.num_stages, fused_combine=fused)


@pytest.fixture(scope="module", params=[(80, "split"), (90, "split"), (90, "single"), (80, "fused"), (90, "fused")],
                ids=lambda p: f"sm_{p[0]}-{p[1]}")
def split(request):
    arch, kind = request.param
    return split_kernel(arch, kind == "single", fused=kind == "fused")


@pytest.fixture(scope="module", params=[80, 90], ids=lambda a: f"sm_{a}")
def combine(request):
    return compile_decode_combine(dtype=torch.bfloat16, head_dim=128, num_heads_q=32, arch=request.param)


def assert_cuda_elf(kernel):
    assert kernel.cubin[:4] == b"\x7fELF"
    assert int.from_bytes(kernel.cubin[18:20], "little") == EM_CUDA
    assert elf_cuda_arch(kernel.cubin) == kernel.arch
    assert f".target sm_{kernel.arch}" in kernel.ptx


def test_split_is_a_cuda_elf_with_runtime_args_then_scratch(split):
    assert_cuda_elf(split)
    assert split.name == "gqa_decode_split"
    assert [p.name for p in split.params] == SPLIT_ARGS + HIDDEN
    types = {p.name: p.type for p in split.params}
    assert [types[n] for n in ("Q", "Partial", "Lse", "sm_scale", "L_kv", "global_scratch")] == \
        ["ptr", "ptr", "ptr", "fp32", "i32", "ptr"]
    divisible = {p.name for p in split.params if p.divisibility == 16}
    assert divisible == {"Q", "K", "V", "Out", "Partial", "Lse", "Arrivals", *SPLIT_STRIDES}
    assert "ld.global.v4" in split.ptx  # 16-byte K/V loads from the divisibility assumption
    assert 0 < split.shared_mem_bytes <= SHARED_MEMORY_BUDGET
    assert split.global_scratch_bytes == 0 and split.profile_scratch_bytes == 0


def test_combine_is_a_cuda_elf_with_runtime_args_then_scratch(combine):
    assert_cuda_elf(combine)
    assert combine.name == "gqa_decode_combine"
    assert [p.name for p in combine.params] == COMBINE_ARGS + HIDDEN
    assert {p.name for p in combine.params if p.divisibility == 16} == \
        {"Partial", "Lse", "Out", "stride_ob", "stride_oh", "stride_om"}
    assert combine.global_scratch_bytes == 0 and combine.profile_scratch_bytes == 0


@pytest.mark.parametrize("dtype, head_dim, heads_q, group, l_q", [
    (torch.bfloat16, 256, 16, 8, 16),  # qwen 16/2 verifying 16 tokens: largest packed tile
    (torch.float32, 80, 8, 8, 4),      # padded head dim, fp32
])
def test_largest_tiles_fit_shared_memory_on_sm_80(dtype, head_dim, heads_q, group, l_q):
    kernel = split_kernel(80, False, dtype, head_dim, heads_q, group, l_q)
    assert 0 < kernel.shared_mem_bytes <= SHARED_MEMORY_BUDGET


def test_unsupported_inputs_are_refused():
    with pytest.raises(ValueError, match="multiple of 16 up to 256"):
        compile_decode_combine(dtype=torch.float16, head_dim=72, num_heads_q=8, arch=90)
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        split_kernel(90, False, dtype=torch.int8)


def test_mask_and_kv_len_become_entry_parameters_without_alignment_assumptions():
    """A bool mask broadcast over heads ([B, 1, L_q, L_kv]) and an int64 kv_len: the head stride of the
    mask is compiled as 0 and leaves the entry point; the rest carry no divisibility."""
    config = decode_config(128, torch.bfloat16, 4, 1)
    variant = AttentionVariant(is_causal=True, window_left=255, softcap=50.0, mask_dtype=torch.bool,
                               mask_broadcast=(False, True, False, False), kv_len_dtype=torch.int64)
    kernel = compile_decode_split(dtype=torch.bfloat16, head_dim=128, num_heads_q=32, group_size=4, variant=variant,
                                  single_split=False, arch=90, block_m=config.block_m, block_n=config.block_n)
    names = [p.name for p in kernel.params]
    assert names == ["Q", "K", "V", "Out", "Partial", "Lse", "Arrivals", "Mask", "KvLen", "sm_scale", *SPLIT_STRIDES,
                     "stride_mb", "stride_mm", "stride_mn", "L_q", "L_kv"] + HIDDEN
    divisibility = {p.name: p.divisibility for p in kernel.params}
    assert all(divisibility[n] == 1 for n in ("Mask", "KvLen", "stride_mb", "stride_mm", "stride_mn"))
    assert "ld.global.u64" in kernel.ptx or "ld.global.b64" in kernel.ptx  # the int64 kv_len load


def test_fused_split_publishes_partials_with_a_gpu_scope_acq_rel_atomic_and_merges_through_l2():
    fused = split_kernel(90, False, fused=True)
    plain = split_kernel(90, False)
    assert "atom.global.gpu.acq_rel.add" in fused.ptx.replace(".s32", "").replace(".u32", "")
    assert "bar.sync" in fused.ptx and "ld.global.cg" in fused.ptx
    assert "atom." not in plain.ptx  # the two-launch split kernel has no counter


@pytest.mark.parametrize("bad, message", [(dict(window_left=-2), "window_left=-2"),
                                          (dict(softcap=-1.0), "softcap=-1.0 is negative"),
                                          (dict(mask_dtype=torch.int8), "mask dtype torch.int8"),
                                          (dict(kv_len_dtype=torch.float32), "kv_len dtype torch.float32")])
def test_invalid_variants_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        AttentionVariant(**bad)
