"""Run as a script (in a process of its own, so the driver it loads is the fake libcuda.so.1
of fake_programs.py that LD_LIBRARY_PATH names): programmatic dependent launch scenarios
through the C API.

    programmatic_scenarios.py PAYLOAD_DIR SCENARIOS_JSON

PAYLOAD_DIR holds the payloads test_programmatic_launch.py writes (NAME.bin, each two launches
computing x + 2y on float32 [2, 64]). SCENARIOS_JSON lists [name, payload NAME, the fake
device's compute capability, {option: value}, calls to fail]: each scenario sets the options
and the compute capability for the init of a delegate of that payload (the defaults again
after it), makes the named driver calls fail (fake_fail) while it executes twice, the second
time into a new output (graph nodes updated), then destroys it. Prints one JSON object: per
scenario its steps (graph_scenarios.Delegate's records: error code, whether the output is
right, the fake driver's launch and graph calls) and the stderr written meanwhile."""

import ctypes
import json
import sys
from pathlib import Path

import numpy as np

import cuda_gqa.runtime as cr

from graph_scenarios import Delegate, arrays, fail  # sibling modules: this runs as a script
from stderr_capture import run_capturing_stderr

DEFAULTS = {"launch_graphs": True, "programmatic_launch": True}
DEFAULT_COMPUTE_CAPABILITY = 90


def set_compute_capability(cc: int) -> None:
    ctypes.CDLL("libcuda.so.1").fake_compute_capability(cc)


def scenario(payload: bytes, cc: int, options: dict, failing: str) -> list:
    set_compute_capability(cc)
    for key, value in options.items():
        cr.set_backend_option(key, value)
    try:
        d = Delegate(payload, twice=True)
    finally:
        set_compute_capability(DEFAULT_COMPUTE_CAPABILITY)
        for key, value in DEFAULTS.items():
            cr.set_backend_option(key, value)
    x, y, out = arrays(2)
    fail(failing)
    try:
        d.execute("first", x, y, out)
        d.execute("new output", x, y, np.zeros_like(out))
    finally:
        fail("")
    d.destroy()
    return d.steps


def main():
    folder = Path(sys.argv[1])
    results = {}
    for name, payload, cc, options, failing in json.loads(sys.argv[2]):
        data = (folder / f"{payload}.bin").read_bytes()
        steps, stderr = run_capturing_stderr(lambda: scenario(data, cc, options, failing))
        results[name] = {"steps": steps, "stderr": stderr}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
