"""attention_plan picks the kernels of a delegated attention call ahead of time (no GPU):
split-KV decode [split, combine] for decode shapes with much to merge, [split (FUSED_COMBINE)]
where the merge is small, [split (SINGLE_SPLIT)] for short contexts, the forward kernel for
prefill and for packed rows that need several M tiles."""

import pytest
import torch

from cuda_gqa.backends.attention_plan import build_attention_payload, decode_plan
from cuda_gqa.backends.heuristics import NOMINAL_SMS, decode_launch, fused_combine_for, split_plan
from cuda_gqa.backends.serialization import deserialize_payload, serialize_payload
from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.runtime.launch_plan import ArgInfo, LaunchError, LaunchPlan, evaluate_launch_cpp

K = fb.ParamKind
Q, KEY, V, OUT = 0, 1, 2, 3
WORKSPACE = 0x7E00_0000_0000


def build(b, hq, hkv, d, lq, lkv, causal=True, dtype=torch.float16, archs=(90,), ptx=False, generic=False):
    """generic: also the unaligned plans (tests/aot/test_dynamic_plans.py covers them)."""
    return build_attention_payload(dtype=dtype, batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, l_q=lq,
                                   l_kv=lkv, is_causal=causal, archs=archs, ptx=ptx, generic=generic)


def factors(kernel):
    return [[(f.arg, f.dim, f.divisor) for f in (g.factors or [])] for g in kernel.grid]


def params_of(kernel, kind):
    return [p for p in kernel.params if p.kind == kind]


def contiguous(sizes, address):
    strides, acc = [], 1
    for s in reversed(sizes):
        strides.append(acc)
        acc *= s
    return ArgInfo(dtype=fb.DType.Float16, sizes=sizes, strides=tuple(reversed(strides)), address=address)


# Qwen3.5-MoE decode (16/2 heads, D256) over 32K keys: dozens of splits of 8 rows, too much to
# merge in one program per KV head, so the splits are merged by a second launch.
HQ, HKV, D, LKV = 16, 2, 256, 32768


@pytest.fixture(scope="module")
def llama_decode():
    return build(1, HQ, HKV, D, 1, LKV)


def test_decode_emits_split_then_combine(llama_decode):
    payload = deserialize_payload(llama_decode)
    split, combine = payload.plans[0].kernels
    assert (split.name, combine.name) == (b"gqa_decode_split", b"gqa_decode_combine")

    # The payload is built for sm_90: its tuned tiles and split cap.
    config, num_splits = decode_launch(D, torch.float16, HQ // HKV, 1, 1, HKV, LKV, NOMINAL_SMS, 90)
    split_len = split_plan(LKV, num_splits, config.block_n)[0]
    assert num_splits > 1 and NOMINAL_SMS == 132
    assert not fused_combine_for(num_splits, HQ // HKV, 1, D)
    # Split grid: (num_splits, B * H_kv, 1), the split count a constant; combine grid: (L_q, B * H_q, 1).
    assert split.grid[0].multiplier == num_splits and -(-LKV // num_splits) <= split_len
    assert factors(split) == [[], [(KEY, 0, 1), (KEY, 1, 1)], []]
    assert factors(combine) == [[(Q, 2, 1)], [(Q, 0, 1), (Q, 1, 1)], []]
    assert not params_of(split, K.Int32Constant)  # the kernel cuts its splits itself
    assert [p.i32Value for p in params_of(combine, K.Int32Constant)] == [num_splits]

    partial_bytes = 1 * HQ * 1 * num_splits * D * 4
    lse_bytes = 1 * HQ * 1 * num_splits * 4
    assert payload.workspaceBytes == partial_bytes + lse_bytes
    for kernel in (split, combine):
        ws = params_of(kernel, K.Workspace)
        assert [(p.workspaceOffset, p.workspaceExtent) for p in ws] == [(0, partial_bytes),
                                                                        (partial_bytes, lse_bytes)]
        assert all(p.workspaceOffset % 16 == 0 and p.divisibility == 16 for p in ws)
    # The split kernel's arrival counters are unused without FUSED_COMBINE: Out's address.
    assert [p.arg for p in params_of(split, K.TensorPointer)] == [Q, KEY, V, OUT, OUT]


def test_decode_with_a_small_merge_is_one_fused_launch():
    """Batched llama3-8b decode (B=8): 2 splits of 4 rows per KV head merge in the split kernel."""
    data = build(8, 32, 8, 128, 1, 8192)
    payload = deserialize_payload(data)
    (split,) = payload.plans[0].kernels
    plan = decode_plan(dtype=torch.float16, batch=8, num_heads_q=32, num_heads_kv=8, head_dim=128, l_q=1,
                       l_kv=8192, arch=90)
    assert plan.fused and plan.num_splits == 2
    partial_bytes = 8 * 32 * plan.num_splits * 128 * 4
    lse_bytes = 8 * 32 * plan.num_splits * 4
    arrivals_offset = -(-(partial_bytes + lse_bytes) // 16) * 16
    # Partial, Lse, then one int32 counter per (batch, KV head) at a 16-byte boundary.
    assert [(p.workspaceOffset, p.workspaceExtent) for p in params_of(split, K.Workspace)] == [
        (0, partial_bytes), (partial_bytes, lse_bytes), (arrivals_offset, 8 * 8 * 4)]
    assert payload.workspaceBytes == arrivals_offset + 8 * 8 * 4 == plan.workspace_bytes
    assert factors(split)[0] == [] and split.grid[0].multiplier == plan.num_splits
    # Python and C++ evaluate it alike.
    sizes = [(8, 32, 1, 128), (8, 8, 8192, 128), (8, 8, 8192, 128), (8, 32, 1, 128)]
    args = [contiguous(s, 0x7000_0000_0000 + i * (1 << 32)) for i, s in enumerate(sizes)]
    (launch,) = LaunchPlan(data).evaluate_all(args, workspace=WORKSPACE)
    assert launch.grid == (2, 64, 1)
    cpp = evaluate_launch_cpp(data, 0, args, workspace=WORKSPACE)
    assert (cpp.grid, cpp.params, cpp.slots()) == (launch.grid, launch.params, launch.slots())


def test_decode_payload_evaluates_identically_in_python_and_cpp(llama_decode):
    plan = LaunchPlan(llama_decode)
    sizes = [(1, HQ, 1, D), (1, HKV, LKV, D), (1, HKV, LKV, D), (1, HQ, 1, D)]
    args = [contiguous(s, 0x7000_0000_0000 + i * (1 << 32)) for i, s in enumerate(sizes)]
    launches = plan.evaluate_all(args, workspace=WORKSPACE)
    num_splits = deserialize_payload(llama_decode).plans[0].kernels[1].params[-3].i32Value
    assert [l.grid for l in launches] == [(num_splits, HKV, 1), (1, HQ, 1)]
    for k, launch in enumerate(launches):
        cpp = evaluate_launch_cpp(llama_decode, k, args, workspace=WORKSPACE)
        assert (cpp.grid, cpp.params, cpp.slots()) == (launch.grid, launch.params, launch.slots())


def test_short_context_is_one_single_split_launch():
    payload = deserialize_payload(build(1, 32, 8, 128, 1, 200))
    (split,) = payload.plans[0].kernels
    assert split.name == b"gqa_decode_split"
    assert payload.workspaceBytes == 0
    assert factors(split) == [[], [(KEY, 0, 1), (KEY, 1, 1)], []]
    assert not params_of(split, K.Workspace)
    # Partial/Lse/Arrivals are never touched with SINGLE_SPLIT: they get Out's address.
    assert [p.arg for p in params_of(split, K.TensorPointer)] == [Q, KEY, V, OUT, OUT, OUT, OUT]
    LaunchPlan(payload)  # valid without a workspace


def test_prefill_runs_the_forward_kernel():
    payload = deserialize_payload(build(1, 8, 2, 64, 128, 128, causal=False))
    assert [k.name for k in payload.plans[0].kernels] == [b"gqa_attention_fwd"]
    assert payload.workspaceBytes == 0


def test_decode_needing_several_m_tiles_runs_the_forward_kernel():
    # qwen 16/2 D256 verifying 16 tokens: 128 packed rows, BLOCK_M 64 -> 2 M tiles.
    assert decode_plan(dtype=torch.bfloat16, batch=1, num_heads_q=16, num_heads_kv=2, head_dim=256, l_q=16,
                       l_kv=4000) is None
    assert decode_plan(dtype=torch.bfloat16, batch=1, num_heads_q=16, num_heads_kv=2, head_dim=256, l_q=1,
                       l_kv=4000) is not None
    assert decode_plan(dtype=torch.float16, batch=1, num_heads_q=8, num_heads_kv=2, head_dim=64, l_q=17,
                       l_kv=4000) is None


def test_mqa_and_batched_plans():
    mqa = decode_plan(dtype=torch.float16, batch=1, num_heads_q=32, num_heads_kv=1, head_dim=128, l_q=1, l_kv=4096)
    assert mqa.num_splits > 1
    # 8 * 32 KV-head programs fill a 132-SM GPU: no split, no workspace.
    full = decode_plan(dtype=torch.float16, batch=8, num_heads_q=256, num_heads_kv=32, head_dim=128, l_q=1,
                       l_kv=8192)
    assert full.num_splits == 1 and full.workspace_bytes == 0


def test_attended_keys_bound_the_key_range_by_a_constant():
    """attended_keys replaces K's length as the kernels' L_kv (PyTorch's top-left causal)."""
    payload = deserialize_payload(build_attention_payload(
        dtype=torch.float16, batch=1, num_heads_q=32, num_heads_kv=8, head_dim=128, l_q=4, l_kv=8192,
        is_causal=True, attended_keys=4, archs=[90], ptx=False))
    (split,) = payload.plans[0].kernels  # four keys: one split, no combine, no workspace
    assert split.name == b"gqa_decode_split" and payload.workspaceBytes == 0
    assert [(p.arg, p.dim) for p in params_of(split, K.TensorSize)] == [(Q, 2)]
    assert params_of(split, K.Int32Constant)[0].i32Value == 4
    assert factors(split)[0] == []


def test_attended_keys_split_count_follows_the_bound():
    """Splits and tiles are planned for the attended keys, as for a cache of that length."""
    shape = dict(dtype=torch.float16, batch=1, num_heads_q=32, num_heads_kv=8, head_dim=128, l_q=1)
    bounded = decode_plan(**shape, l_kv=30000, attended_keys=1000)
    short = decode_plan(**shape, l_kv=1000)
    full = decode_plan(**shape, l_kv=30000)
    assert (bounded.num_splits, bounded.config) == (short.num_splits, short.config)
    assert bounded.num_splits > 1 and (bounded.num_splits, bounded.config) != (full.num_splits, full.config)


@pytest.mark.parametrize("attended", [0, 8193])
def test_attended_keys_outside_the_key_range_are_refused(attended):
    with pytest.raises(ValueError, match=f"attended_keys={attended} is not in"):
        build_attention_payload(dtype=torch.float16, batch=1, num_heads_q=8, num_heads_kv=2, head_dim=64, l_q=1,
                                l_kv=8192, is_causal=True, attended_keys=attended, archs=[90], ptx=False)


# --------------------------------------------------------------------------
# per-arch launch plans: the lowest arch's list no arch (and serve any GPU), the others list theirs


@pytest.fixture(scope="module")
def bf16_decode_two_archs():
    """llama3-8b decode in bf16 for sm_80 and sm_90: sm_90 has tuned tiles (backends/tuning/sm_90.json)."""
    return build(1, 32, 8, 128, 1, 8192, causal=False, dtype=torch.bfloat16, archs=[80, 90], ptx=True)


def test_static_payloads_have_one_plan_per_arch_group_and_no_ranges(bf16_decode_two_archs):
    payload = deserialize_payload(bf16_decode_two_archs)
    assert [(list(p.archs), list(p.when or [])) for p in payload.plans] == [([], []), ([90], [])]
    assert all(s.maxSizes is None and s.sizeFrom is None for s in payload.inputs + payload.outputs)


def test_archs_with_tuned_tiles_get_their_own_plan(bf16_decode_two_archs):
    payload = deserialize_payload(bf16_decode_two_archs)
    default = decode_plan(dtype=torch.bfloat16, batch=1, num_heads_q=32, num_heads_kv=8, head_dim=128, l_q=1,
                          l_kv=8192, arch=80)
    tuned = decode_plan(dtype=torch.bfloat16, batch=1, num_heads_q=32, num_heads_kv=8, head_dim=128, l_q=1,
                        l_kv=8192, arch=90)
    assert default.config.block_n != tuned.config.block_n
    # The plan listing no arch: sm_80 cubins plus the PTX fallback, default tiles.
    fallback, sm90 = payload.plans
    assert [[c.arch for c in k.cubins] for k in fallback.kernels] == [[80], [80]]
    assert all(k.ptxArch == 80 and len(k.ptx) for k in fallback.kernels)
    assert fallback.kernels[0].grid[0].multiplier == default.num_splits
    # sm_90's plan: cubins only, its own tiles and splits; the workspace fits both.
    assert list(sm90.archs) == [90]
    assert [[c.arch for c in k.cubins] for k in sm90.kernels] == [[90], [90]]
    assert not any(len(k.ptx or []) for k in sm90.kernels)
    split, combine = sm90.kernels
    assert split.numWarps == tuned.config.num_warps
    assert split.grid[0].multiplier == tuned.num_splits
    assert params_of(combine, K.Int32Constant)[0].i32Value == tuned.num_splits
    assert payload.workspaceBytes == max(default.workspace_bytes, tuned.workspace_bytes)


def test_archs_that_choose_alike_share_one_plan():
    # Head dim 80 has no sm_90 table entry: sm_80 and sm_90 run the same tiles.
    payload = deserialize_payload(build(1, 32, 8, 80, 1, 8192, dtype=torch.float16, archs=[80, 90]))
    (plan,) = payload.plans
    assert not len(plan.archs)
    assert [[c.arch for c in k.cubins] for k in plan.kernels] == [[80, 90], [80, 90]]


@pytest.mark.parametrize("cc, plan_archs", [(80, [80]), (86, [80]), (90, [90]), (100, [80])])
def test_both_runtimes_pick_the_same_plan_for_a_device(bf16_decode_two_archs, cc, plan_archs):
    data = bf16_decode_two_archs
    plan = LaunchPlan(data, device_cc=cc)
    assert [c.arch for c in plan.kernels(0)[0].cubins] == plan_archs
    assert plan.plan_indices == ([0] if plan_archs == [80] else [1])
    sizes = [(1, 32, 1, 128), (1, 8, 8192, 128), (1, 8, 8192, 128), (1, 32, 1, 128)]
    args = [ArgInfo(dtype=fb.DType.BFloat16, sizes=s, strides=contiguous(s, 0).strides,
                    address=0x7000_0000_0000 + i * (1 << 32)) for i, s in enumerate(sizes)]
    for k, launch in enumerate(plan.evaluate_all(args, workspace=WORKSPACE)):
        cpp = evaluate_launch_cpp(data, k, args, workspace=WORKSPACE, device_cc=cc)
        assert (cpp.name, cpp.grid, cpp.block, cpp.slots(), cpp.plan_index) == (
            launch.name, launch.grid, launch.block, launch.slots(), launch.plan_index)


def test_a_plan_without_cubins_for_its_archs_is_refused(bf16_decode_two_archs):
    payload = deserialize_payload(bf16_decode_two_archs)
    payload.plans[1].archs = [89, 90]
    data = serialize_payload(payload)
    expected = "plan 1: kernel gqa_decode_split has no cubin for its arch sm_89"
    with pytest.raises(LaunchError, match=expected):
        LaunchPlan(data)
    with pytest.raises(LaunchError, match=expected):
        evaluate_launch_cpp(data, 0, [], device_cc=90)


def test_mask_and_kv_len_inputs_evaluate_identically_in_python_and_cpp():
    """A [B, 1, L_q, L_kv] bool mask and an int64 kv_len scalar as delegate inputs 3 and 4."""
    from cuda_gqa.backends.attention_plan import AttentionArgs

    args_index = AttentionArgs(query=0, key=1, value=2, mask=3, kv_len=4, out=5)
    data = build_attention_payload(dtype=torch.float16, batch=2, num_heads_q=32, num_heads_kv=8, head_dim=128,
                                   l_q=1, l_kv=8192, is_causal=True, mask_shape=(2, 1, 1, 8192),
                                   mask_dtype=torch.bool, kv_len_dtype=torch.int64, archs=[90], ptx=False,
                                   args=args_index, generic=False)
    payload = deserialize_payload(data)
    assert [s.dtype for s in payload.inputs] == [fb.DType.Float16] * 3 + [fb.DType.Bool, fb.DType.Int64]
    assert [list(s.sizes) for s in payload.inputs[3:]] == [[2, 1, 1, 8192], []]
    split = payload.plans[0].kernels[0]
    pointers = [p.arg for p in params_of(split, K.TensorPointer)]
    assert pointers == [Q, KEY, V, 5, 5, 3, 4]  # Q K V Out, Arrivals (unused: Out), then Mask and KvLen
    # Only the mask's batch and key strides are runtime values; its size-1 dims are compiled as 0.
    assert [(p.arg, p.dim) for p in params_of(split, K.TensorStride) if p.arg == 3] == [(3, 0), (3, 3)]

    sizes = [(2, 32, 1, 128), (2, 8, 8192, 128), (2, 8, 8192, 128)]
    args = [contiguous(s, 0x7000_0000_0000 + i * (1 << 32)) for i, s in enumerate(sizes)]
    args.append(ArgInfo(dtype=fb.DType.Bool, sizes=(2, 1, 1, 8192), strides=(8192, 8192, 8192, 1),
                        address=0x7100_0000_0001))  # a mask needs no alignment
    args.append(ArgInfo(dtype=fb.DType.Int64, sizes=(), strides=(), address=0x7200_0000_0008))
    args.append(contiguous((2, 32, 1, 128), 0x7300_0000_0000))
    plan = LaunchPlan(data)
    for k, launch in enumerate(plan.evaluate_all(args, workspace=WORKSPACE)):
        cpp = evaluate_launch_cpp(data, k, args, workspace=WORKSPACE)
        assert (cpp.grid, cpp.params, cpp.slots()) == (launch.grid, launch.params, launch.slots())
    bad_mask = ArgInfo(dtype=fb.DType.Float16, sizes=(2, 1, 1, 8192), strides=(8192, 8192, 8192, 1),
                       address=0x7100_0000_0000)
    with pytest.raises(LaunchError, match="input 3 has dtype float16, the kernels were compiled for bool"):
        plan.evaluate(0, args[:3] + [bad_mask] + args[4:], workspace=WORKSPACE)


def test_a_mask_that_does_not_broadcast_is_refused():
    from cuda_gqa.backends.attention_plan import AttentionArgs

    with pytest.raises(ValueError, match=r"mask shape \(1, 3, 1, 64\) does not broadcast"):
        build_attention_payload(dtype=torch.float16, batch=1, num_heads_q=8, num_heads_kv=2, head_dim=64, l_q=1,
                                l_kv=64, is_causal=False, mask_shape=(1, 3, 1, 64), mask_dtype=torch.bool,
                                archs=[90], ptx=False, args=AttentionArgs(mask=3, out=4))


def test_bshd_layout_binds_heads_and_sequence_to_their_dims():
    """[B, S, H, D] tensors (ExecuTorch's llama ops) get the kernels' head strides from dim 2 and
    their sequence strides, lengths and grid tiles from dim 1; nothing else changes."""
    from cuda_gqa.backends.aot.compiled_kernel import EntryParam
    from cuda_gqa.backends.attention_plan import AttentionArgs, bind_params, launch_grid
    from cuda_gqa.backends.layout import BSHD

    names = ["stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn", "stride_oh", "L_q", "L_kv"]
    entry = [EntryParam(name, "i32", 1) for name in names]
    for layout, (h, s) in ((BSHD, (2, 1)), (AttentionArgs().layout, (1, 2))):
        args = AttentionArgs(layout=layout)
        bound = [(int(p.kind), p.arg, p.dim) for p in bind_params(entry, args, 0.125)]
        stride, size = K.TensorStride, K.TensorSize
        assert bound == [(stride, Q, 0), (stride, Q, h), (stride, Q, s), (stride, KEY, 0), (stride, KEY, h),
                         (stride, KEY, s), (stride, OUT, h), (size, Q, s), (size, KEY, s)]
        assert factors(fb.KernelT(grid=launch_grid(args, 64))) == [[(Q, s, 64)], [(Q, 0, 1), (Q, h, 1)], []]


def test_a_start_position_takes_no_mask_kv_len_or_dynamic_cache():
    from cuda_gqa.backends.attention_plan import AttentionArgs
    from cuda_gqa.backends.kv_cache_plan import KvCacheArgs, StartPosition
    from cuda_gqa.backends.layout import BSHD

    common = dict(dtype=torch.float16, batch=1, num_heads_q=4, num_heads_kv=2, head_dim=64, is_causal=True,
                  archs=[90], ptx=False, generic=False, start=StartPosition(arg=3))
    args = AttentionArgs(out=4, layout=BSHD)
    with pytest.raises(ValueError, match="static L_kv"):
        build_attention_payload(l_q=1, l_kv=(1, 64), args=args, **common)
    with pytest.raises(ValueError, match="no kv_len input"):
        build_attention_payload(l_q=1, l_kv=64, args=AttentionArgs(out=5, kv_len=4, layout=BSHD),
                                kv_len_dtype=torch.int32, **common)
    with pytest.raises(ValueError, match="takes no mask"):
        build_attention_payload(l_q=1, l_kv=64, args=AttentionArgs(out=5, mask=4, layout=BSHD), mask_shape=(1, 64),
                                mask_dtype=torch.bool, **common)
    with pytest.raises(ValueError, match="explicit positions"):
        build_attention_payload(l_q=1, l_kv=64, args=args, **common,
                                cache=KvCacheArgs(k_new=1, v_new=2, positions=3, k_state="k", v_state="v",
                                                  max_seq_len=64))


def test_a_start_position_is_bounded_by_the_keys_it_may_reach():
    # Keys [0, start + L_q) must lie in the static L_kv: execute refuses a start past that.
    from cuda_gqa.backends.attention_plan import AttentionArgs
    from cuda_gqa.backends.kv_cache_plan import StartPosition
    from cuda_gqa.backends.layout import BSHD
    from cuda_gqa.runtime.launch_plan import LaunchPlan

    data = build_attention_payload(dtype=torch.float16, batch=1, num_heads_q=4, num_heads_kv=2, head_dim=64,
                                   l_q=1, l_kv=64, is_causal=True, archs=[90], ptx=False, generic=False,
                                   args=AttentionArgs(out=4, layout=BSHD), start=StartPosition(arg=3))
    plan = LaunchPlan(data, device_cc=90)
    assert [(b.arg, b.startOnly, b.rowsArg, b.rowsDim, b.bound) for b in plan.position_bounds] == [
        (3, True, 0, BSHD.seq, 64)]
