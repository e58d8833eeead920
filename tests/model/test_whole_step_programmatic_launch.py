"""A whole step's kernels on sm_90+ wait for the kernel before them (griddepcontrol.wait) and let the
next one start, so the runtimes launch them as programmatic dependents inside the step's CUDA graph;
sm_80 images have no griddepcontrol and launch normally."""

import pytest
import torch

from cuda_gqa.backends.aot.rmsnorm import compile_rmsnorm
from cuda_gqa.backends.serialization import deserialize_payload
from cuda_gqa.runtime.launch_plan import LaunchPlan, launches_as_programmatic_dependent

from whole_programs import delegates, lower_whole, named_data


def test_an_sm90_image_waits_then_lets_the_next_kernel_start():
    ptx = compile_rmsnorm(dtype=torch.float32, n_cols=64, arch=90, wait_for_previous=True).ptx
    assert ptx.index("griddepcontrol.wait") < ptx.index("griddepcontrol.launch_dependents")
    assert "griddepcontrol" not in compile_rmsnorm(dtype=torch.float32, n_cols=64, arch=90).ptx


def test_sm80_has_no_programmatic_launch():
    with pytest.raises(ValueError, match="sm_80 has no programmatic dependent launch"):
        compile_rmsnorm(dtype=torch.float32, n_cols=64, arch=80, wait_for_previous=True)


@pytest.fixture(scope="module")
def decode_payload(tiny_model):
    edge, _ = lower_whole(tiny_model("tiny-llama3"), 1, archs=("sm_80", "sm_90"))
    (delegate,) = delegates(edge)
    return delegate.processed_bytes, named_data(delegate)


@pytest.mark.parametrize("device_cc", [80, 90])
def test_which_whole_step_launches_are_programmatic(decode_payload, device_cc):
    data, images = decode_payload
    plan = LaunchPlan(data, device_cc=device_cc, named_data=images)
    (p,) = range(len(plan.plans))
    names = plan.names(p)
    programmatic = [launches_as_programmatic_dependent(kernel, k, plan.select_image(p, k, device_cc), device_cc)
                    for k, kernel in enumerate(plan.kernels(p))]
    if device_cc < 90:
        assert not any(programmatic)
        return
    # All but the first launch and attention's own kernels (which order themselves).
    attention = {"gqa_decode_split", "gqa_decode_combine", "gqa_attention_fwd"}
    assert programmatic == [k > 0 and name not in attention for k, name in enumerate(names)]
    assert sum(programmatic) >= len(names) - 3 * 2 - 1  # tiny-llama3: two layers


def test_the_payload_marks_its_own_kernels_waiting(decode_payload):
    payload = deserialize_payload(decode_payload[0])
    for plan in payload.plans:
        for kernel in plan.kernels:
            name = bytes(kernel.name).decode() if isinstance(kernel.name, bytes) else kernel.name
            assert bool(kernel.waitsForPrevious) == (name not in ("gqa_decode_split", "gqa_attention_fwd")), name
