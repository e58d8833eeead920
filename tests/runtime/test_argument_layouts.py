"""Argument layouts execute takes, on the fake driver through the C API: a tensor in host memory is
staged with one linear copy, so it must be dense and row-major; any tensor, host or device, must stay
inside its own numel elements (no negative stride, no stride reaching past its end). Anything else is
an InvalidArgument with a log line naming the argument and the stride, never a heap overflow."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from fake_programs import ROOT, add_payload, fake_env

# Each case: (arg index, sizes, strides, device) replacing one of x, y, out (float32 2 x 64) of the
# add payload, and the message execute logs. Storage is always 4096 floats, so that a refusal, not
# the size of the buffer, is what keeps the process whole.
BAD_LAYOUTS = {
    "host output, negative stride": (2, (2, 64), (-64, 1), -1, "output 0 has stride -64 at dim 0, expected 64"),
    "host output, stride 0 (expanded)": (2, (2, 64), (0, 1), -1, "output 0 has stride 0 at dim 0, expected 64"),
    "host input, padded rows": (0, (2, 64), (128, 1), -1, "input 0 has stride 128 at dim 0, expected 64"),
    "host input, expanded": (1, (2, 64), (0, 1), -1, "input 1 has stride 0 at dim 0, expected 64"),
    "device input, negative stride": (0, (2, 64), (-64, 1), 0, "input 0 has stride -64 at dim 0: strides must"),
    "device output, padded rows": (2, (2, 64), (128, 1), 0, "output 0 reaches element 191 with its strides, past "
                                                              "its 128 elements"),
}

SCRIPT = """
import sys, ctypes, numpy as np
from cuda_gqa.runtime import cpp_delegate
from cuda_gqa.backends.serialization.dtypes import DTYPE_OF_NAME
FLOAT32 = DTYPE_OF_NAME["float32"]
rc, handle = cpp_delegate.init(open(sys.argv[1], "rb").read())
assert rc == 0, rc
storage = [np.zeros(4096, np.float32) for _ in range(3)]
def tensor(i, sizes=(2, 64), strides=(64, 1), device=-1):
    t = cpp_delegate.CudaGqaTensor(dtype=FLOAT32, rank=len(sizes), device=device)
    t.data = storage[i].ctypes.data + (4 * 2048 if strides[0] < 0 else 0)
    for d, (size, stride) in enumerate(zip(sizes, strides)):
        t.sizes[d], t.strides[d] = size, stride
    return t
args = [tensor(i) for i in range(3)]
index = int(sys.argv[2])
if index >= 0:
    args[index] = tensor(index, eval(sys.argv[3]), eval(sys.argv[4]), int(sys.argv[5]))
print("rc", cpp_delegate.execute(handle, args))
cpp_delegate.destroy(handle)
"""

INVALID_ARGUMENT = 0x12  # executorch::runtime::Error::InvalidArgument


def run_case(fake_driver_dir, tmp_path, *case) -> subprocess.CompletedProcess:
    payload = tmp_path / "add.bin"
    payload.write_bytes(add_payload())
    return subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(payload), *map(str, case)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=fake_env(fake_driver_dir))


def test_dense_host_tensors_run(fake_driver_dir, tmp_path):
    run = run_case(fake_driver_dir, tmp_path, -1)
    assert run.returncode == 0 and run.stdout.split() == ["rc", "0"], run.stdout + run.stderr[-2000:]


@pytest.mark.parametrize("case", sorted(BAD_LAYOUTS))
def test_layouts_outside_the_buffer_or_not_dense_on_the_host_are_refused(fake_driver_dir, tmp_path, case):
    index, sizes, strides, device, message = BAD_LAYOUTS[case]
    run = run_case(fake_driver_dir, tmp_path, index, sizes, strides, device)
    assert run.returncode == 0, f"rc {run.returncode}: " + run.stderr[-2000:]
    assert run.stdout.split() == ["rc", str(INVALID_ARGUMENT)], run.stdout + run.stderr[-2000:]
    assert message in run.stderr, run.stderr[-2000:]


def test_the_python_shim_refuses_non_dense_host_tensors():
    import numpy as np
    import torch

    from cuda_gqa.runtime import cpp_delegate

    with pytest.raises(ValueError, match=r"host tensor of shape \(2, 64\) with strides \(0, 1\) is not dense"):
        cpp_delegate.torch_tensor(torch.ones(1, 64).expand(2, 64))
    with pytest.raises(ValueError, match=r"host tensor of shape \(2, 64\) with strides \(-64, 1\) is not dense"):
        cpp_delegate.host_tensor(np.ones((2, 64), np.float32)[::-1])
    assert cpp_delegate.torch_tensor(torch.ones(2, 64)).strides[0] == 64
