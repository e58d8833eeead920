"""Run as a script (in a process of its own, so the driver it loads is the fake libcuda.so.1
of fake_programs.py that LD_LIBRARY_PATH names): launch-graph scenarios through the C API.

    graph_scenarios.py PAYLOAD_DIR SCENARIO...

PAYLOAD_DIR holds the payloads test_launch_graphs.py writes (add.bin: x + y on float32
[2, 64]; add_twice.bin: two launches, x + 2y; two_plans.bin: rows dynamic up to 4, plan 0
for up to 2 rows and plan 1 above; dynamic.bin: rows dynamic up to 4, one plan). Each
scenario runs steps (an execute, or the delegate's destroy) and records per step the
execute's error code, whether the output is right, and the fake driver's launch and graph
calls the step made. Prints one JSON object: per scenario its steps and the stderr written
meanwhile (the backend's log lines)."""

import ctypes
import json
import sys
from pathlib import Path

import numpy as np

import cuda_gqa.runtime as cr
from cuda_gqa.runtime import cpp_delegate

from stderr_capture import run_capturing_stderr  # a sibling module: this runs as a script

COUNTS = ("direct_launches", "graph_creates", "nodes_added", "instantiates", "node_updates", "graph_launches",
          "exec_destroys", "graph_destroys", "programmatic_launches", "programmatic_edges", "ordinary_edges_added")
FAILING = ("cuGraphCreate", "cuGraphAddKernelNode_v2", "cuGraphInstantiateWithFlags", "cuGraphLaunch")


def driver_counts() -> dict:
    values = (ctypes.c_longlong * len(COUNTS))()
    ctypes.CDLL("libcuda.so.1").fake_graph_calls(values)
    return dict(zip(COUNTS, values))


def fail(call: str) -> None:
    ctypes.CDLL("libcuda.so.1").fake_fail(call.encode())


class Delegate:
    """A delegate of a payload and the steps run on it."""

    def __init__(self, payload: bytes, device: int = 0, twice: bool = False):
        self.device, self.twice, self.steps = device, twice, []
        rc, self.handle = cpp_delegate.init(payload)
        assert rc == 0, f"init failed: {rc:#x}"

    def execute(self, name, x, y, out):
        before = driver_counts()
        tensors = [cpp_delegate.host_tensor(a) for a in (x, y, out)]
        for t in tensors:
            t.device = self.device
            t.strides[0], t.strides[1] = 64, 1  # numpy's are 0 without rows
        rc = cpp_delegate.execute(self.handle, tensors)
        expected = (x + y) + y if self.twice else x + y  # in the kernels' order of rounding
        self.record(name, before, rc=rc, matches=bool(np.array_equal(out, expected)))

    def destroy(self):
        before = driver_counts()
        cpp_delegate.destroy(self.handle)
        self.record("destroy", before)

    def record(self, name, before, **result):
        after = driver_counts()
        calls = {key: after[key] - before[key] for key in COUNTS if after[key] != before[key]}
        self.steps.append({"step": name, **result, "calls": calls})


def arrays(rows: int, seed: int = 0):
    """x, y and a zeroed output of `rows` rows."""
    x = np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)
    return x, np.full((rows, 64), 0.5 + seed, np.float32), np.zeros((rows, 64), np.float32)


def steady(payloads):
    """Two launches; the same tensors again; a new x (read by the first launch only); a new output."""
    d = Delegate(payloads["add_twice"], twice=True)
    x, y, out = arrays(2)
    d.execute("first", x, y, out)
    d.execute("same tensors", x, y, out)
    x2 = x.copy()
    d.execute("new x", x2, y, out)
    out2 = np.zeros_like(out)
    d.execute("new output", x2, y, out2)
    d.execute("same again", x2, y, out2)
    d.destroy()
    return d.steps


def host_tensors(payloads):
    """Host memory goes through the staging buffers: the graph's pointers never change."""
    d = Delegate(payloads["add"], device=-1)
    for seed in range(2):
        d.execute(f"arrays {seed}", *arrays(2, seed))
    d.destroy()
    return d.steps


def two_plans(payloads):
    d = Delegate(payloads["two_plans"])
    tensors = {rows: arrays(rows, rows) for rows in (2, 4)}
    for rows in (2, 4, 2, 4):
        d.execute(f"{rows} rows", *tensors[rows])
    d.destroy()
    return d.steps


def graphs_off(payloads):
    cr.set_backend_option("launch_graphs", False)
    try:
        d = Delegate(payloads["add_twice"], twice=True)
    finally:
        cr.set_backend_option("launch_graphs", True)
    x, y, out = arrays(2)
    d.execute("first", x, y, out)
    d.execute("same tensors", x, y, out)
    d.destroy()
    return d.steps


def empty(payloads):
    """0 rows: an empty grid, nothing launched and no graph; then 2 rows build one."""
    d = Delegate(payloads["dynamic"])
    d.execute("0 rows", *arrays(0))
    d.execute("2 rows", *arrays(2))
    d.destroy()
    return d.steps


def refused_update(payloads):
    d = Delegate(payloads["add"])
    x, y, out = arrays(2)
    d.execute("first", x, y, out)
    fail("cuGraphExecKernelNodeSetParams_v2")
    try:
        d.execute("new output", x, y, np.zeros_like(out))
        d.execute("another output", x, y, np.zeros_like(out))
    finally:
        fail("")
    d.execute("updates work again", x, y, np.zeros_like(out))
    d.destroy()
    return d.steps


def failing_call(call):
    def scenario(payloads):
        d = Delegate(payloads["add"])
        x, y, out = arrays(2)
        fail(call)
        try:
            d.execute("failing", x, y, out)
        finally:
            fail("")
        d.execute("recovered", x, y, np.zeros_like(out))
        d.destroy()
        return d.steps
    return scenario


SCENARIOS = {"steady": steady, "host tensors": host_tensors, "two plans": two_plans, "graphs off": graphs_off,
             "empty": empty, "refused update": refused_update,
             **{f"failing {call}": failing_call(call) for call in FAILING}}


def main():
    folder = Path(sys.argv[1])
    payloads = {path.stem: path.read_bytes() for path in folder.glob("*.bin")}
    results = {}
    for name in sys.argv[2:]:
        steps, stderr = run_capturing_stderr(lambda: SCENARIOS[name](payloads))
        results[name] = {"steps": steps, "stderr": stderr}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
