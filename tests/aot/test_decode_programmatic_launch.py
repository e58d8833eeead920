"""Split-KV decode on sm_90+: the combine waits for the split kernel itself, so the runtimes may
launch it as a programmatic dependent (payload.fbs, Kernel.waits_for_previous); older archs'
images have no griddepcontrol and are never launched so."""

import pytest
import torch

from cuda_gqa.backends.attention_plan import build_attention_payload
from cuda_gqa.backends.serialization import deserialize_payload
from cuda_gqa.runtime.launch_plan import LaunchPlan, launches_as_programmatic_dependent


def decode(l_kv: int, archs: list[int]):
    return deserialize_payload(build_attention_payload(
        dtype=torch.bfloat16, batch=1, num_heads_q=32, num_heads_kv=8, head_dim=128, l_q=1, l_kv=l_kv,
        is_causal=False, archs=archs, ptx=True, generic=False))


def ptx(kernel) -> bytes:
    return bytes(kernel.ptx)


@pytest.fixture(scope="module")
def sm90():
    return decode(8192, [90])


@pytest.fixture(scope="module")
def sm80():
    return decode(8192, [80])


def test_the_combine_waits_and_the_split_lets_it_start(sm90):
    split, combine = sm90.plans[0].kernels
    assert combine.waitsForPrevious and not split.waitsForPrevious
    assert b"griddepcontrol.launch_dependents" in ptx(split) and b"griddepcontrol.wait" not in ptx(split)
    assert b"griddepcontrol.wait" in ptx(combine)


def test_older_archs_images_have_no_griddepcontrol(sm80):
    for kernel in sm80.plans[0].kernels:
        assert b"griddepcontrol" not in ptx(kernel)


def test_one_launch_plans_have_no_dependent():
    single = decode(200, [90])  # one split writes Out
    (split,) = single.plans[0].kernels
    assert not split.waitsForPrevious and b"griddepcontrol" not in ptx(split)


@pytest.mark.parametrize("payload, device_cc, expected", [
    ("sm90", 90, [False, True]),
    ("sm80", 80, [False, False]),   # sm_80 cubins
    ("sm80", 86, [False, False]),   # sm_80 cubins on sm_86
    ("sm80", 100, [False, False]),  # sm_80 PTX on a newer GPU: no griddepcontrol in it
    ("sm90", 100, [False, True]),   # sm_90 PTX on a newer GPU
])
def test_which_launches_are_programmatic(payload, device_cc, expected, request):
    payload = request.getfixturevalue(payload)
    plan = LaunchPlan(payload, device_cc=device_cc)
    kernels = plan.kernels(0)
    assert [launches_as_programmatic_dependent(kernel, k, plan.select_image(0, k, device_cc), device_cc)
            for k, kernel in enumerate(kernels)] == expected
