"""The partitioner takes a static KV cache's update with its SDPA only when the delegate can own
the cache: both K and V updated along dim 2 (index_copy_ or index_put_) and read by nothing else."""

import pytest
import torch
from executorch.exir import to_edge_transform_and_lower
from executorch.exir.lowered_backend_module import get_lowered_submodules
from torch import nn
from torch.nn import functional as F

from cuda_gqa.backends.partition import CudaGqaPartitioner
from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.runtime.launch_plan import LaunchPlan

H_Q, H_KV, S, D = 4, 2, 32, 16


class CachedAttention(nn.Module):
    """One decode step over a static cache, written with index_copy_ or slice-index assignment;
    `leak` also returns the K cache (read outside the attention: the program must keep it)."""

    def __init__(self, write: str = "index_copy", leak: bool = False):
        super().__init__()
        self.write, self.leak = write, leak
        self.register_buffer("k_cache", torch.zeros(1, H_KV, S, D), persistent=False)
        self.register_buffer("v_cache", torch.zeros(1, H_KV, S, D), persistent=False)

    def forward(self, q, k, v, positions, mask):
        if self.write == "index_copy":
            self.k_cache.index_copy_(2, positions, k)
            self.v_cache.index_copy_(2, positions, v)
        else:  # index_put_
            self.k_cache[:, :, positions] = k
            self.v_cache[:, :, positions] = v
        y = F.scaled_dot_product_attention(q, self.k_cache, self.v_cache, attn_mask=mask, enable_gqa=True)
        return (y, self.k_cache.sum()) if self.leak else y


def inputs(l=1):
    positions = torch.arange(l) + 3
    mask = (torch.arange(S)[None, :] <= positions[:, None])[None, None]
    return (torch.randn(1, H_Q, l, D), torch.randn(1, H_KV, l, D), torch.randn(1, H_KV, l, D), positions, mask)


def lower(model, **options):
    partitioner = CudaGqaPartitioner(archs=[80], ptx=False, **options)
    edge = to_edge_transform_and_lower(torch.export.export(model, inputs()), partitioner=[partitioner])
    return partitioner.report, edge.exported_program()


def cache_buffers(program) -> set:
    return {spec.target for spec in program.graph_signature.input_specs if spec.target and "cache" in spec.target}


@pytest.mark.parametrize("write", ["index_copy", "index_put"])
def test_cache_updates_go_into_the_delegate(write):
    report, program = lower(CachedAttention(write))
    (decision,) = report
    assert decision.delegated and decision.reason.endswith("KV cache owned by the delegate (k_cache, v_cache)")
    assert cache_buffers(program) == set() and program.graph_signature.buffers_to_mutate == {}
    (lowered,) = [m for _, m, _ in get_lowered_submodules(program.graph_module)]
    # The delegate's own program holds the buffers and their mutations.
    assert set(lowered.original_module.graph_signature.buffers_to_mutate.values()) == {"k_cache", "v_cache"}
    plan = LaunchPlan(lowered.processed_bytes)  # its images are in the program's named data: not needed here
    assert [name for name, _, _ in plan.states] == ["k_cache", "v_cache"]
    # Execute refuses positions outside the cache: the positions input's every element is bounded by S.
    (positions,) = [i for i, (dtype, _, _) in enumerate(plan.specs[:plan.num_inputs]) if dtype == fb.DType.Int64]
    assert [(b.arg, b.startOnly, b.bound) for b in plan.position_bounds] == [(positions, False, S)]
    # index_put traces the new rows without their size-1 batch dim ([H_kv, L, D]):
    # the cache write reads that dim with stride 0.
    rank = 4 if write == "index_copy" else 3
    new_rows = [i for i, (_, sizes, _) in enumerate(plan.specs[:plan.num_inputs]) if sizes == (1, H_KV, 1, D)[4 - rank:]]
    assert len(new_rows) == 2
    write_kernel = plan.kernels(0)[0]
    strides = [(int(p.kind), p.arg, p.dim, p.i32Value) for p in write_kernel.params[8:14]]  # stride_k*, stride_v*
    expected_dims = [(fb.ParamKind.Int32Constant, 0) if d < 4 - rank else (fb.ParamKind.TensorStride, d - (4 - rank))
                     for d in range(3)]
    assert [(kind, dim) for kind, _, dim, _ in strides] == expected_dims * 2
    assert {arg for kind, arg, _, _ in strides if kind == fb.ParamKind.TensorStride} == set(new_rows)


@pytest.mark.parametrize("case", ["cache read elsewhere", "own_kv_cache=False"])
def test_cache_stays_with_the_program_when_the_delegate_cannot_own_it(case):
    model = CachedAttention(leak=case == "cache read elsewhere")
    report, program = lower(model, own_kv_cache=case != "own_kv_cache=False")
    (decision,) = report
    assert decision.delegated and "KV cache" not in decision.reason
    assert cache_buffers(program) == {"k_cache", "v_cache"}
