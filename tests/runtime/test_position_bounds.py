"""Payload.position_bounds: execute refuses KV cache positions outside the cache (issue 18), and
token ids outside the embedding table, with an InvalidArgument error and a log line, before
enqueuing anything, in the C++ backend (through its C API, on the fake libcuda.so.1) and in the
Python evaluator; indices inside them still run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.runtime.launch_plan import ArgInfo, LaunchError, LaunchPlan

from fake_programs import ROOT, fake_env, pack
from test_cpp_backend import load_library, validate
from test_states import state, state_payload

CACHE_ROWS = 16
INVALID_ARGUMENT = 0x12  # ExecuTorch Error::InvalidArgument


def positions_payload(start_only: bool, dtype=fb.DType.Int32, bound=CACHE_ROWS, **fields) -> fb.PayloadT:
    """The state payload (out = x + s over x, y: float32 (2, 64)) with a third input holding cache
    positions: two of them (one per row of x), or with start_only one start position of x's 2 rows."""
    payload = state_payload(pointer_args=(0, 4, 3), states=[state("s")])  # x, state, out: args 0, 4, 3
    payload.inputs.append(fb.TensorSpecT(dtype=dtype, sizes=[1 if start_only else 2]))
    bound_record = fb.PositionBoundT()
    bound_record.arg, bound_record.startOnly, bound_record.bound = 2, start_only, bound
    bound_record.rowsArg, bound_record.rowsDim = 0, 0
    for name, value in fields.items():
        setattr(bound_record, name, value)
    payload.positionBounds = [bound_record]
    return payload


# Runs the payload of argv[1] through the C API on each positions list of argv[2] (JSON), printing
# the error code and the launches and host-to-device copies the fake driver saw for it.
RUN_SCRIPT = """
import ctypes, json, sys, numpy as np
from cuda_gqa.runtime import cpp_delegate
rc, handle = cpp_delegate.init(open(sys.argv[1], "rb").read())
assert rc == 0, rc
driver = ctypes.CDLL("libcuda.so.1")
def work():
    counts, htod, dtoh, syncs = (ctypes.c_longlong * 11)(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    driver.fake_graph_calls(counts)
    driver.fake_calls(ctypes.byref(htod), ctypes.byref(dtoh), ctypes.byref(syncs))
    return counts[0] + counts[5], htod.value  # direct + graph launches, staging copies in
x, out = np.ones((2, 64), np.float32), np.zeros((2, 64), np.float32)
for positions in json.loads(sys.argv[2]):
    before = work()
    pos = np.array(positions, np.int64 if sys.argv[3] == "int64" else np.int32)
    rc = cpp_delegate.execute(handle, [cpp_delegate.host_tensor(a) for a in (x, x, pos, out)])
    after = work()
    print(positions, rc, after[0] - before[0], after[1] - before[1], flush=True)
    sys.stderr.write("--- end of %s\\n" % positions)
cpp_delegate.destroy(handle)
"""


def run_positions(payload: fb.PayloadT, cases, dtype: str, fake_driver_dir, tmp_path):
    """{positions: (error code, launches, staging copies in, log lines of that execute)}."""
    path = tmp_path / "positions.bin"
    path.write_bytes(pack(payload))
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN_SCRIPT), str(path), json.dumps(cases), dtype],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=fake_env(fake_driver_dir))
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    logs = run.stderr.split("--- end of ")
    results = {}
    for line, log in zip(run.stdout.splitlines(), logs):
        positions, _, counts = line.rpartition("] ")
        rc, launches, copies = map(int, counts.split())
        results[tuple(json.loads(positions + "]"))] = (rc, launches, copies, log)
    return results


def test_explicit_positions_outside_the_cache_are_refused_before_any_launch(fake_driver_dir, tmp_path):
    cases = [[0, CACHE_ROWS - 1], [3, CACHE_ROWS], [CACHE_ROWS + 5, 0], [-1, 2], [1, 2]]
    results = run_positions(positions_payload(start_only=False), cases, "int32", fake_driver_dir, tmp_path)
    for valid in ([0, CACHE_ROWS - 1], [1, 2]):
        rc, launches, copies, _ = results[tuple(valid)]
        assert (rc, launches, copies) == (0, 1, 3), (valid, results[tuple(valid)])
    for bad, position in (([3, CACHE_ROWS], CACHE_ROWS), ([CACHE_ROWS + 5, 0], CACHE_ROWS + 5), ([-1, 2], -1)):
        rc, launches, copies, log = results[tuple(bad)]
        assert (rc, launches, copies) == (INVALID_ARGUMENT, 0, 0), (bad, results[tuple(bad)])
        assert f"CudaGqaBackend: input 2 holds position {position} outside the cache [0, {CACHE_ROWS})" in log, log


def test_a_start_position_whose_rows_pass_the_cache_end_is_refused(fake_driver_dir, tmp_path):
    # x has 2 rows: start S-2 fills the cache's last two rows, S-1 would write row S.
    cases = [[CACHE_ROWS - 2], [CACHE_ROWS - 1], [-1], [0]]
    results = run_positions(positions_payload(start_only=True, dtype=fb.DType.Int64), cases, "int64",
                            fake_driver_dir, tmp_path)
    for valid in ([CACHE_ROWS - 2], [0]):
        assert results[tuple(valid)][:3] == (0, 1, 3), (valid, results[tuple(valid)])
    for bad in ([CACHE_ROWS - 1], [-1]):
        rc, launches, copies, log = results[tuple(bad)]
        assert (rc, launches, copies) == (INVALID_ARGUMENT, 0, 0), (bad, results[tuple(bad)])
        assert (f"CudaGqaBackend: input 2 holds start position {bad[0]} of 2 rows, outside the cache "
                f"[0, {CACHE_ROWS})") in log, log


def test_token_ids_outside_the_embedding_table_are_refused_before_any_launch(fake_driver_dir, tmp_path):
    vocab = 50
    payload = positions_payload(start_only=False, dtype=fb.DType.Int64, bound=vocab, index=fb.BoundedIndex.TokenId)
    results = run_positions(payload, [[0, vocab - 1], [vocab, 1], [2, -3]], "int64", fake_driver_dir, tmp_path)
    assert results[(0, vocab - 1)][:3] == (0, 1, 3)
    for bad, token in (([vocab, 1], vocab), ([2, -3], -3)):
        rc, launches, copies, log = results[tuple(bad)]
        assert (rc, launches, copies) == (INVALID_ARGUMENT, 0, 0), (bad, results[tuple(bad)])
        assert f"CudaGqaBackend: input 2 holds token id {token} outside the embedding table's rows [0, {vocab})" in log
    plan = LaunchPlan(pack(payload))
    with pytest.raises(LaunchError, match=r"input 2 holds token id 50 outside the embedding table's rows \[0, 50\)"):
        plan.check_positions(args_for(2, fb.DType.Int64), {2: [vocab, 1]})


def args_for(positions_count: int, dtype=fb.DType.Int32) -> list[ArgInfo]:
    """x, y, the positions, out, the state."""
    def tensor(sizes, address, dt=fb.DType.Float32):
        return ArgInfo(dtype=dt, sizes=sizes, strides=(sizes[-1], 1) if len(sizes) == 2 else (1,), address=address)
    return [tensor((2, 64), 0x10000), tensor((2, 64), 0x20000), tensor((positions_count,), 0x30000, dtype),
            tensor((2, 64), 0x40000), tensor((2, 64), 0x50000)]


def test_the_python_evaluator_refuses_the_same_positions():
    explicit = LaunchPlan(pack(positions_payload(start_only=False)))
    args = args_for(2)
    explicit.check_positions(args, {2: [0, CACHE_ROWS - 1]})
    explicit.check_positions(args, {})  # a device-resident input: its values are not read
    for bad, position in (([3, CACHE_ROWS], CACHE_ROWS), ([CACHE_ROWS + 5], CACHE_ROWS + 5), ([-1], -1)):
        with pytest.raises(LaunchError, match=rf"input 2 holds position {position} outside the cache \[0, 16\)"):
            explicit.check_positions(args, {2: bad})
    start = LaunchPlan(pack(positions_payload(start_only=True, dtype=fb.DType.Int64)))
    start.check_positions(args_for(1, fb.DType.Int64), {2: [CACHE_ROWS - 2]})
    with pytest.raises(LaunchError, match=r"input 2 holds start position 15 of 2 rows, outside the cache"):
        start.check_positions(args_for(1, fb.DType.Int64), {2: [CACHE_ROWS - 1]})


BAD_BOUNDS = {
    "float input": (dict(arg=0), "position bound 0: names input 0 of dtype float32, not int32 or int64"),
    "no such input": (dict(arg=3), "position bound 0: names input 3 of 3"),
    "negative bound": (dict(bound=-1), "position bound 0: has a negative bound"),
    "no rows dim": (dict(rowsDim=2), "position bound 0: counts rows along input 0 dim 2, which does not exist"),
    "token ids as a start": (dict(index=fb.BoundedIndex.TokenId), "position bound 0: bounds token ids as a start position"),
    "unknown index kind": (dict(index=7), "position bound 0: bounds indices of unknown kind 7"),
}


@pytest.mark.parametrize("case", sorted(BAD_BOUNDS))
def test_bad_position_bounds_are_refused_alike_in_cpp_and_python(case):
    fields, reason = BAD_BOUNDS[case]
    data = pack(positions_payload(start_only=True, **fields))
    rc, message = validate(load_library(), data)
    assert rc != 0 and reason in message, message
    with pytest.raises(LaunchError, match=reason):
        LaunchPlan(data)
