"""The warp-specialized forward (kernels/attention_fwd_ws.py) on sm_90, ahead of time (no GPU):
which calls take it, what it compiles to, and how a payload carries it beside the Triton forward.
Its results on a GPU: tests/runtime/test_warp_specialized_gpu.py."""

import pytest
import torch

from cuda_gqa.backends import heuristics
from cuda_gqa.backends.aot.attention import compile_attention
from cuda_gqa.backends.aot.variant import AttentionVariant
from cuda_gqa.backends.attention_plan import build_attention_payload
from cuda_gqa.backends.heuristics import KernelConfig, attention_config, warp_specialized_forward_applies
from cuda_gqa.backends.serialization import deserialize_payload

PLAIN = dict(arch=90, dtype=torch.bfloat16, head_dim=128, scale=128**-0.5, masked=False, window_left=-1,
             softcap=0.0, has_kv_len=False, min_l_kv=1)


def test_plain_16_bit_calls_on_sm90_take_it():
    assert warp_specialized_forward_applies(**PLAIN)
    assert warp_specialized_forward_applies(**{**PLAIN, "dtype": torch.float16, "head_dim": 64})
    assert warp_specialized_forward_applies(**{**PLAIN, "head_dim": 96})  # padded to 128 inside


@pytest.mark.parametrize("change", [
    dict(arch=80), dict(arch=100), dict(arch=None), dict(dtype=torch.float32), dict(head_dim=160),
    dict(head_dim=256), dict(scale=0.0), dict(scale=-0.1), dict(masked=True), dict(window_left=4095),
    dict(softcap=50.0), dict(has_kv_len=True), dict(min_l_kv=0),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_other_calls_keep_the_triton_forward(change):
    assert not warp_specialized_forward_applies(**{**PLAIN, **change})


def test_a_triton_without_its_gluon_api_keeps_the_triton_forward(monkeypatch):
    monkeypatch.setattr(heuristics.triton, "__version__", "3.6.0")
    assert not warp_specialized_forward_applies(**PLAIN)


def test_tiles_come_from_the_tuning_table_only_when_allowed():
    ws = attention_config(128, torch.bfloat16, 90, warp_specialized=True)
    assert ws.warp_specialized and (ws.block_m, ws.num_warps) == (heuristics.WS_BLOCK_M, heuristics.WS_NUM_WARPS)
    assert ws == KernelConfig(128, 128, 4, 3, warp_specialized=True)
    assert attention_config(128, torch.float16, 90, warp_specialized=True).warp_specialized
    for head_dim in (80, 96, 112):  # padded to 128 inside
        assert attention_config(head_dim, torch.bfloat16, 90, warp_specialized=True) == KernelConfig(128, 128, 4, 3,
                                                                                                     True)
    assert attention_config(128, torch.bfloat16, 90) == KernelConfig(64, 64, 4, 3)
    # No entry (at D=64 the Triton forward measured faster): its tiles, even where the kernel could run.
    assert not attention_config(64, torch.bfloat16, 90, warp_specialized=True).warp_specialized
    assert not attention_config(128, torch.bfloat16, 80, warp_specialized=True).warp_specialized


@pytest.fixture(scope="module")
def compiled():
    return compile_attention(dtype=torch.bfloat16, head_dim=128, num_heads_q=8, group_size=4,
                             variant=AttentionVariant(is_causal=True), arch=90, block_m=128, block_n=64, num_warps=4,
                             num_stages=3, warp_specialized=True)


def test_it_compiles_to_tma_loads_mbarriers_and_rebalanced_registers(compiled):
    assert compiled.name == "gqa_attention_fwd_ws"
    assert compiled.num_warps == 12  # 4 + 4 consumer warps and a producer warp, in three warpgroups
    for instruction in ("cp.async.bulk.tensor.2d", "mbarrier.try_wait", "setmaxnreg", "wgmma.mma_async",
                        "wgmma.wait_group.sync.aligned 1"):
        assert instruction in compiled.ptx, instruction
    assert f".maxnreg {heuristics.WS_MAX_REGISTERS}" in compiled.ptx
    # Device-side tensor descriptors live in the launch's global scratch.
    assert compiled.global_scratch_bytes >= 2 * 128
    assert compiled.shared_mem_bytes >= 3 * 2 * 64 * 128 * 2  # three K and V stages


def test_it_takes_the_triton_forwards_parameters(compiled):
    triton_forward = compile_attention(dtype=torch.bfloat16, head_dim=128, num_heads_q=8, group_size=4,
                                       variant=AttentionVariant(is_causal=True), arch=90, block_m=64, block_n=64,
                                       num_warps=4, num_stages=3)
    assert [p.name for p in compiled.params] == [p.name for p in triton_forward.params]
    assert [p.divisibility for p in compiled.params] == [p.divisibility for p in triton_forward.params]


@pytest.mark.parametrize("arch, aligned, block_m", [(80, True, 128), (90, False, 128), (90, True, 64)])
def test_compiling_it_outside_its_limits_is_refused(arch, aligned, block_m):
    with pytest.raises(ValueError, match="warp-specialized forward"):
        compile_attention(dtype=torch.bfloat16, head_dim=128, num_heads_q=8, group_size=4,
                          variant=AttentionVariant(is_causal=True), arch=arch, block_m=block_m, block_n=64,
                          num_warps=4, num_stages=3, aligned=aligned, warp_specialized=True)


def kernels_by_plan(payload: bytes):
    return [[(k.name.decode() if isinstance(k.name, bytes) else k.name, [c.arch for c in k.cubins], k)
             for k in plan.kernels] for plan in deserialize_payload(payload).plans]


def test_a_payload_gives_sm90_aligned_inputs_to_it_and_the_rest_to_the_triton_forward():
    l_q = 1000  # a ragged length: the grid rounds up to whole 128-row CTAs
    payload = build_attention_payload(dtype=torch.bfloat16, batch=2, num_heads_q=8, num_heads_kv=2, head_dim=128,
                                      l_q=l_q, l_kv=l_q, is_causal=True, archs=[80, 90], ptx=False, generic=True)
    names = {(name, tuple(archs)) for plan in kernels_by_plan(payload) for name, archs, _ in plan}
    assert names == {("gqa_attention_fwd", (80,)), ("gqa_attention_fwd_ws", (90,)), ("gqa_attention_fwd", (90,))}
    ws = [k for plan in kernels_by_plan(payload) for name, _, k in plan if name == "gqa_attention_fwd_ws"]
    assert len(ws) == 1  # the aligned plan; the generic one keeps the Triton forward
    assert ws[0].globalScratchBytes > 0 and ws[0].numWarps == 12
    assert ws[0].grid[0].factors[0].divisor == heuristics.WS_BLOCK_M  # ceil(L_q / 128) CTAs


def test_a_windowed_call_keeps_the_triton_forward():
    payload = build_attention_payload(dtype=torch.bfloat16, batch=1, num_heads_q=8, num_heads_kv=2, head_dim=128,
                                      l_q=256, l_kv=256, is_causal=True, window_left=63, archs=[90], ptx=False,
                                      generic=False)
    assert {name for plan in kernels_by_plan(payload) for name, _, _ in plan} == {"gqa_attention_fwd"}
