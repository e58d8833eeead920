"""Dynamic L_q / L_kv: the dispatch table attention_plan writes, and the C++ and Python
runtimes choosing the same launch from it over a grid of sizes (no GPU)."""

import pytest
import torch

from cuda_gqa.backends.attention_plan import DecodePlan, build_attention_payload, dispatch_rows
from cuda_gqa.backends.heuristics import KernelConfig, kv_length_buckets
from cuda_gqa.backends.kernels.jit_launch import MAX_DECODE_L_Q
from cuda_gqa.backends.serialization import deserialize_payload
from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.runtime.launch_plan import ArgInfo, LaunchError, LaunchPlan, evaluate_launch_cpp, select_plan_cpp

B, HQ, HKV, D = 1, 8, 2, 64
L_Q, L_KV = (1, 64), (1, 1024)
WORKSPACE = 0x7E00_0000_0000
PROBLEM = dict(dtype=torch.float16, batch=B, num_heads_q=HQ, num_heads_kv=HKV, head_dim=D)


def rows_cover(rows, l_q, l_kv):
    """Every (L_q, L_kv) of the ranges lies in exactly one row."""
    for q in range(l_q[0], l_q[1] + 1):
        for kv in sorted({l_kv[0], l_kv[1], *(e for b in kv_length_buckets(*l_kv) for e in b)}):
            hits = [r for r in rows if r[0][0] <= q <= r[0][1] and r[1][0] <= kv <= r[1][1]]
            assert len(hits) == 1, (q, kv, hits)


def test_dispatch_rows_cover_the_ranges_decode_below_prefill_above():
    rows = dispatch_rows(l_q=L_Q, l_kv=L_KV, arch=80, **PROBLEM)
    rows_cover(rows, L_Q, L_KV)
    for (q_lo, q_hi), (kv_lo, kv_hi), choice in rows:
        assert isinstance(choice, DecodePlan) == (q_hi <= MAX_DECODE_L_Q), (q_lo, q_hi, choice)
        if isinstance(choice, KernelConfig):
            assert (kv_lo, kv_hi) == L_KV  # the forward kernel's grid follows L_q; one row
    # Longer L_kv buckets split more: the split count never falls as L_kv grows.
    for q in (1, 16):
        splits = [c.num_splits for (lo, hi), _, c in rows if lo <= q <= hi and isinstance(c, DecodePlan)]
        assert splits == sorted(splits) and splits[-1] > 1


def test_static_rows_are_one_plan_as_before():
    ((q, kv, choice),) = dispatch_rows(l_q=(1, 1), l_kv=(8192, 8192), arch=90, **PROBLEM)
    assert q == (1, 1) and kv == (8192, 8192) and isinstance(choice, DecodePlan)


@pytest.fixture(scope="module")
def dynamic_payload():
    return build_attention_payload(l_q=L_Q, l_kv=L_KV, is_causal=False, archs=[80], ptx=False, **PROBLEM)


def plan_order(rows):
    """(row, lengths_aligned, generic) of each plan, in payload order: every row's aligned
    plans, a forward row's first compiled with L_q and L_kv as multiples of 16 (both ranges
    here hold such lengths) and then without; then every row's generic plan."""
    aligned = [(i, lengths, False) for i, (*_, choice) in enumerate(rows)
               for lengths in ((True, False) if isinstance(choice, KernelConfig) else (False,))]
    return aligned + [(i, False, True) for i in range(len(rows))]


def plan_index(rows, row, *, lengths_aligned=False, generic=False):
    return plan_order(rows).index((row, lengths_aligned, generic))


def test_payload_encodes_the_rows_then_their_generic_plans(dynamic_payload):
    payload = deserialize_payload(dynamic_payload)
    rows = dispatch_rows(l_q=L_Q, l_kv=L_KV, arch=80, **PROBLEM)
    order = plan_order(rows)
    assert len(payload.plans) == len(order)
    for plan, (row, lengths_aligned, generic) in zip(payload.plans, order):
        (q_lo, q_hi), (kv_lo, kv_hi), choice = rows[row]
        assert [(r.arg, r.dim, r.min, r.max) for r in plan.when] == [(0, 2, q_lo, q_hi), (1, 2, kv_lo, kv_hi)]
        names = [k.name for k in plan.kernels]
        if isinstance(choice, KernelConfig):
            assert names == [b"gqa_attention_fwd"]
        else:
            merged_apart = choice.num_splits > 1 and not choice.fused
            assert names == [b"gqa_decode_split"] + [b"gqa_decode_combine"] * merged_apart
            assert plan.kernels[0].grid[0].multiplier == choice.num_splits
        # Aligned plans assume 16-byte alignment of Q/K/V/Out and their row strides; generic ones nothing.
        divisibility = {q.divisibility for k in plan.kernels for q in k.params
                        if q.kind in (fb.ParamKind.TensorPointer, fb.ParamKind.TensorStride)}
        assert (16 in divisibility) == (not generic), (row, divisibility)
        sizes = {q.divisibility for k in plan.kernels for q in k.params if q.kind == fb.ParamKind.TensorSize}
        assert (16 in sizes) == lengths_aligned, (row, sizes)
    # One workspace for all: the largest plan's.
    assert payload.workspaceBytes == max(c.workspace_bytes for *_, c in rows if isinstance(c, DecodePlan))
    assert [list(s.maxSizes) for s in payload.inputs] == [[B, HQ, 64, D], [B, HKV, 1024, D], [B, HKV, 1024, D]]


@pytest.mark.parametrize("l_q, l_kv, lengths_aligned", [((4096, 4096), (4096, 4096), (True,)),
                                                        ((4095, 4095), (4096, 4096), (False,)),
                                                        ((17, 20), (17, 20), (False,)),
                                                        ((17, 2048), (2048, 2048), (True, False))])
def test_forward_plans_assume_lengths_multiple_of_16_only_where_they_can_be(l_q, l_kv, lengths_aligned):
    data = build_attention_payload(l_q=l_q, l_kv=l_kv, is_causal=True, archs=[80], ptx=False, generic=False,
                                   **PROBLEM)
    plans = deserialize_payload(data).plans
    assert [any(q.divisibility == 16 for q in p.kernels[0].params if q.kind == fb.ParamKind.TensorSize)
            for p in plans] == list(lengths_aligned)


def tensor(sizes, address, strides=None):
    if strides is None:
        strides, acc = [], 1
        for s in reversed(sizes):
            strides.append(acc)
            acc *= s
        strides = tuple(reversed(strides))
    return ArgInfo(dtype=fb.DType.Float16, sizes=sizes, strides=strides, address=address)


def call_args(l_q, l_kv, *, q_offset=0, kv_row_stride=None):
    """q, k, v, out at 256-byte aligned addresses (q moved by q_offset bytes); k and v with a
    row stride of kv_row_stride elements (a padded [B, H, L, D] buffer) when given."""
    kv_strides = None if kv_row_stride is None else (HKV * l_kv * kv_row_stride, l_kv * kv_row_stride,
                                                     kv_row_stride, 1)
    return [tensor((B, HQ, l_q, D), 0x7000_0000_0000 + q_offset),
            tensor((B, HKV, l_kv, D), 0x7100_0000_0000, kv_strides),
            tensor((B, HKV, l_kv, D), 0x7200_0000_0000, kv_strides),
            tensor((B, HQ, l_q, D), 0x7300_0000_0000)]


def both_runtimes(data, args):
    """Every launch of the call in Python and in C++ (or both refusals' messages)."""
    out = []
    for evaluate in (lambda: LaunchPlan(data).evaluate_all(args, workspace=WORKSPACE),
                     lambda: [evaluate_launch_cpp(data, k, args, workspace=WORKSPACE)
                              for k in range(select_plan_cpp(data, args)[1])]):
        try:
            out.append([(l.plan_index, l.name, l.grid, l.block, l.shared_mem_bytes, l.params) for l in evaluate()])
        except LaunchError as e:
            out.append(str(e))
    return out


@pytest.mark.parametrize("l_q", [1, 2, 4, 5, 16, 17, 32, 40, 64])
def test_both_runtimes_choose_the_same_launch_over_a_grid_of_sizes(dynamic_payload, l_q):
    rows = dispatch_rows(l_q=L_Q, l_kv=L_KV, arch=80, **PROBLEM)
    for l_kv in (1, 7, 511, 512, 513, 1000, 1024):
        py, cpp = both_runtimes(dynamic_payload, call_args(l_q, l_kv))
        assert py == cpp, (l_q, l_kv)
        # The aligned plan of the row holding these sizes, with the grid that row plans.
        (row,) = [i for i, (q, kv, _) in enumerate(rows) if q[0] <= l_q <= q[1] and kv[0] <= l_kv <= kv[1]]
        choice = rows[row][2]
        lengths_aligned = isinstance(choice, KernelConfig) and l_q % 16 == 0 and l_kv % 16 == 0
        assert {launch[0] for launch in py} == {plan_index(rows, row, lengths_aligned=lengths_aligned)}
        if isinstance(choice, DecodePlan):
            assert py[0][2] == (choice.num_splits, B * HKV, 1)
            if choice.num_splits > 1 and not choice.fused:
                assert py[1][2] == (l_q, B * HQ, 1)  # the combine
            else:
                assert len(py) == 1  # one split, or splits merged in the split kernel
        else:
            assert py[0][2] == (-(-l_q // choice.block_m), B * HQ, 1)


@pytest.mark.parametrize("misalignment", ["q address", "k/v row stride"])
def test_misaligned_tensors_route_to_the_generic_plan_in_both_runtimes(dynamic_payload, misalignment):
    rows = dispatch_rows(l_q=L_Q, l_kv=L_KV, arch=80, **PROBLEM)
    for l_q, l_kv in ((1, 100), (3, 800), (30, 50)):
        args = call_args(l_q, l_kv, q_offset=2 if misalignment == "q address" else 0,
                         kv_row_stride=D + 8 if misalignment == "k/v row stride" else None)
        py, cpp = both_runtimes(dynamic_payload, args)
        assert py == cpp
        (row,) = [i for i, (q, kv, _) in enumerate(rows) if q[0] <= l_q <= q[1] and kv[0] <= l_kv <= kv[1]]
        assert {launch[0] for launch in py} == {plan_index(rows, row, generic=True)}  # the same row's generic plan


def test_without_generic_plans_misaligned_tensors_are_refused_naming_the_assumption():
    data = build_attention_payload(l_q=(17, 64), l_kv=(1, 64), is_causal=False, archs=[80], ptx=False,
                                   generic=False, **PROBLEM)
    py, cpp = both_runtimes(data, call_args(20, 30, q_offset=2))
    assert py == cpp == ("kernel gqa_attention_fwd param 0: address of arg 0 is not a multiple of 16 bytes, "
                         "which the cubin assumes")


@pytest.mark.parametrize("args, message", [
    (call_args(65, 10), "input 0 has size 65 at dim 2, above its bound 64"),
    (call_args(1, 1025), "input 1 has size 1025 at dim 2, above its bound 1024"),
    (call_args(1, 10)[:2] + [tensor((B, HKV, 11, D), 0x7200_0000_0000)] + call_args(1, 10)[3:],
     "input 2 has size 11 at dim 2, expected input 1's size 10 at dim 2"),
    (call_args(4, 10)[:3] + [tensor((B, HQ, 5, D), 0x7300_0000_0000)],
     "output 0 has size 5 at dim 2, expected input 0's size 4 at dim 2"),
], ids=["L_q above its bound", "L_kv above its bound", "v shorter than k", "out not q's length"])
def test_sizes_outside_the_table_are_refused_alike(dynamic_payload, args, message):
    py, cpp = both_runtimes(dynamic_payload, args)
    assert py == cpp == message


def test_sizes_below_every_range_are_refused_naming_the_first_plans_range(dynamic_payload):
    (q_lo, q_hi), _, _ = dispatch_rows(l_q=L_Q, l_kv=L_KV, arch=80, **PROBLEM)[0]
    py, cpp = both_runtimes(dynamic_payload, call_args(0, 10))
    assert py == cpp == f"no launch plan takes these sizes: input 0 has size 0 at dim 2, outside [{q_lo}, {q_hi}]"


def test_causal_with_one_dynamic_length_for_queries_and_keys():
    """Self-attention over a dynamic length: k and v must have q's length; only L_q is ranged."""
    data = build_attention_payload(l_q=(17, 128), l_kv=(17, 128), kv_follows_query=True, is_causal=True,
                                   archs=[80], ptx=False, generic=False, **PROBLEM)
    payload = deserialize_payload(data)
    assert [[(d.dim, d.arg, d.argDim) for d in s.sizeFrom or []] for s in payload.inputs] == [[], [(2, 0, 2)],
                                                                                            [(2, 1, 2)]]
    lengths_of_16, any_lengths = payload.plans
    for plan in (lengths_of_16, any_lengths):
        assert [(r.arg, r.dim, r.min, r.max) for r in plan.when] == [(0, 2, 17, 128)]
    assert both_runtimes(data, call_args(96, 96))[0][0][0] == 0
    assert both_runtimes(data, call_args(97, 97))[0][0][0] == 1
    py, cpp = both_runtimes(data, call_args(100, 99))
    assert py == cpp == "input 1 has size 99 at dim 2, expected input 0's size 100 at dim 2"


def test_keys_follow_query_binds_the_kernels_l_kv_to_q_length():
    """PyTorch's top-left causal with L_q <= L_kv: the kernels attend the first L_q keys."""
    data = build_attention_payload(l_q=(1, 8), l_kv=(8, 256), keys_follow_query=True, is_causal=True,
                                   archs=[80], ptx=False, generic=False, **PROBLEM)
    payload = deserialize_payload(data)
    for plan in payload.plans:
        sizes = [(q.arg, q.dim) for q in plan.kernels[0].params if q.kind == fb.ParamKind.TensorSize]
        assert sizes == [(0, 2), (0, 2)]  # L_q, and L_kv := L_q
    py, cpp = both_runtimes(data, call_args(3, 200))
    assert py == cpp
    plan_index, _, _, _, _, params = py[0]
    size_slots = [i for i, q in enumerate(payload.plans[plan_index].kernels[0].params)
                  if q.kind == fb.ParamKind.TensorSize]
    assert [params[i][1] for i in size_slots] == [3, 3]
    with pytest.raises(ValueError, match="keys_follow_query needs L_q <= L_kv, but L_q may reach 8 and L_kv be 4"):
        build_attention_payload(l_q=(1, 8), l_kv=(4, 256), keys_follow_query=True, is_causal=True, archs=[80],
                                ptx=False, **PROBLEM)


def test_a_mask_over_dynamic_lengths_takes_them_from_q_and_k():
    """A [B, 1, L_q, L_kv] bool mask whose last two dims are the dynamic lengths."""
    from cuda_gqa.backends.attention_plan import AttentionArgs

    data = build_attention_payload(l_q=(17, 64), l_kv=(1, 128), is_causal=False, mask_shape=(B, 1, -1, -1),
                                   mask_dtype=torch.bool, args=AttentionArgs(mask=3, out=4), archs=[80], ptx=False,
                                   generic=False, **PROBLEM)
    mask_spec = deserialize_payload(data).inputs[3]
    assert (list(mask_spec.sizes), list(mask_spec.maxSizes)) == ([B, 1, -1, -1], [B, 1, 64, 128])
    assert [(d.dim, d.arg, d.argDim) for d in mask_spec.sizeFrom] == [(2, 0, 2), (3, 1, 2)]

    def args(l_q, l_kv, mask_l_kv=None):
        mask_l_kv = l_kv if mask_l_kv is None else mask_l_kv
        q, k, v, out = call_args(l_q, l_kv)
        mask = ArgInfo(dtype=fb.DType.Bool, sizes=(B, 1, l_q, mask_l_kv), strides=(l_q * mask_l_kv, l_q * mask_l_kv,
                                                                                  mask_l_kv, 1), address=0x7400_0000_0001)
        return [q, k, v, mask, out]

    py, cpp = both_runtimes(data, args(40, 100))
    assert py == cpp and py[0][2] == (1, B * HQ, 1)
    py, cpp = both_runtimes(data, args(40, 100, mask_l_kv=99))
    assert py == cpp == "input 3 has size 99 at dim 3, expected input 1's size 100 at dim 2"
    with pytest.raises(ValueError, match="dim 2 meets a dynamic length, so it must be 1 .broadcast. or -1"):
        build_attention_payload(l_q=(17, 64), l_kv=(1, 128), is_causal=False, mask_shape=(B, 1, 64, -1),
                                mask_dtype=torch.bool, args=AttentionArgs(mask=3, out=4), archs=[80], ptx=False,
                                **PROBLEM)
