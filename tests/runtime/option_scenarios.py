"""Run as a script (in a process of its own, so the driver it loads is the one
LD_LIBRARY_PATH names, the fake of fake_programs.py): for each scenario (name, options
[[key, value], ...], placement) of argv[1] (JSON), reset CudaGqaBackend's options to their
defaults, set the scenario's through ExecuTorch's set_option
(cuda_gqa.runtime.set_backend_option), read them back with get_option, then init a delegate
from the payload file argv[2] and execute it twice on x = arange, y = 0.5 (float32 [2, 64])
through the C API, the tensors marked as in host memory ("host") or in device memory of
device N ("cuda:N"; the fake driver's device memory is host memory). Prints one JSON
object: per scenario what was refused, the values read back, init's and execute's error
codes, whether both outputs were x + y, the kernel time profiled, the fake driver's copies
and synchronisations, the bytes init zeroed, and the stderr written meanwhile (the backend's
log lines)."""

import ctypes
import json
import sys

import numpy as np

import cuda_gqa.runtime as cr
from cuda_gqa.runtime import cpp_delegate

from stderr_capture import run_capturing_stderr  # a sibling module: this runs as a script

DEFAULTS = {"device": 0, "stream": "0", "synchronize": True, "profile": False, "launch_graphs": True,
            "programmatic_launch": True}


def fake_calls() -> dict:
    counts = [ctypes.c_int() for _ in range(3)]
    ctypes.CDLL("libcuda.so.1").fake_calls(*map(ctypes.byref, counts))
    return dict(zip(("copies_to_device", "copies_to_host", "synchronizations"), (c.value for c in counts)))


def run(options, placement, payload) -> dict:
    report = {"refused": []}
    for key, value in DEFAULTS.items():
        cr.set_backend_option(key, value)
    for key, value in options:
        try:
            cr.set_backend_option(key, value)
        except ValueError as error:
            report["refused"].append(str(error))
    report["values"] = {key: cr.get_backend_option(key) for key in DEFAULTS}
    before = cr.profiled_kernel_time_ns()
    zeroed = ctypes.CDLL("libcuda.so.1").fake_zeroed_bytes
    zeroed.restype = ctypes.c_ulonglong
    zeroed_before = zeroed()
    rc, handle = cpp_delegate.init(payload)
    report["init"] = rc
    report["zeroed_at_init"] = zeroed() - zeroed_before
    if handle is None:
        return report
    x, y = np.arange(128, dtype=np.float32).reshape(2, 64), np.full((2, 64), 0.5, np.float32)
    device = -1 if placement == "host" else int(placement.removeprefix("cuda:"))
    matches, codes, calls = True, [], fake_calls()
    for _ in range(2):
        out = np.zeros((2, 64), np.float32)
        tensors = [cpp_delegate.host_tensor(a) for a in (x, y, out)]
        for t in tensors:
            t.device = device
        codes.append(cpp_delegate.execute(handle, tensors))
        matches &= bool(np.array_equal(out, x + y))
    calls = {key: value - calls[key] for key, value in fake_calls().items()}
    cpp_delegate.destroy(handle)
    report.update(execute=codes, matches=matches, profiled_ns=cr.profiled_kernel_time_ns() - before, calls=calls)
    return report


def main():
    scenarios, payload = json.loads(sys.argv[1]), open(sys.argv[2], "rb").read()
    results = {}
    for name, options, placement in scenarios:
        results[name], stderr = run_capturing_stderr(lambda: run(options, placement, payload))
        results[name]["stderr"] = stderr
    print(json.dumps(results))


if __name__ == "__main__":
    main()
