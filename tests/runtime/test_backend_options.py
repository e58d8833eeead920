"""CudaGqaBackend's options through ExecuTorch's backend options API, without a GPU:
set_option/get_option refuse bad values with a log line naming the cause and round-trip
good ones; delegates read them at init (process-wide values through the C API's delegate
functions, per-load runtime specs through the runner's --device and ExecuTorch's
LoadBackendOptionsMap), against a fake libcuda.so.1 (tests/runtime/fake_programs.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fake_programs import ROOT, RUNNER, add_payload, fake_env

SCENARIO_SCRIPT = Path(__file__).with_name("option_scenarios.py")

REFUSALS = {
    "device -1": ("device", -1, "option 'device' is -1, expected >= 0"),
    "device as a string": ("device", "1", "option 'device' must be an int"),
    "stream as an int": ("stream", 5, "option 'stream' must be a string holding the CUstream handle"),
    "stream not a number": ("stream", "0xzz", "option 'stream' is '0xzz', expected a decimal or 0x-hex CUstream "
                                              "handle"),
    "stream negative": ("stream", "-3", "option 'stream' is '-3'"),
    "stream empty": ("stream", "", "option 'stream' is ''"),
    "synchronize as an int": ("synchronize", 1, "option 'synchronize' must be a bool"),
    "profile as a string": ("profile", "yes", "option 'profile' must be a bool"),
    "launch_graphs as an int": ("launch_graphs", 0, "option 'launch_graphs' must be a bool"),
    "programmatic_launch as an int": ("programmatic_launch", 1, "option 'programmatic_launch' must be a bool"),
    "unknown key": ("bogus", True, "unknown option 'bogus' (known: device, stream, synchronize, profile, "
                                   "launch_graphs, programmatic_launch)"),
}
INIT_REFUSALS = {
    "no such device": ([["device", 5]], "CudaGqaBackend: no CUDA device 5 (this machine has 2)"),
    "stream of another context": ([["stream", "0x6"]], "CudaGqaBackend: option 'stream': the stream belongs to "
                                                       "another CUDA context than device 0's primary context"),
    "invalid stream": ([["stream", "0x7"]], "CudaGqaBackend: option 'stream': cuStreamGetCtx failed: "
                                            "CUDA_ERROR_FAKE (fake failure)"),
}
SCENARIOS = {
    **{name: [[key, value]] for name, (key, value, _) in REFUSALS.items()},
    **{name: options for name, (options, _) in INIT_REFUSALS.items()},
    "round trip": [["device", 1], ["stream", "12345"], ["synchronize", False], ["profile", True],
                   ["launch_graphs", False], ["programmatic_launch", False]],
    "device 1, caller's stream, no sync": [["device", 1], ["stream", "0x5"], ["synchronize", False]],
    "defaults": [],
    "profile": [["profile", True]],
    "device tensors": [],
    "device tensors, no sync": [["synchronize", False]],
    "host tensors, no sync": [["synchronize", False]],
    "tensors on another device": [],
}
PLACEMENTS = {"device tensors": "cuda:0", "device tensors, no sync": "cuda:0", "tensors on another device": "cuda:1"}
DEFAULT_VALUES = {"device": 0, "stream": "0x0", "synchronize": True, "profile": False, "launch_graphs": True,
                  "programmatic_launch": True}
WORKSPACE_BYTES = 1000


@pytest.fixture(scope="module")
def scenarios(fake_driver_dir, tmp_path_factory) -> dict:
    payload = tmp_path_factory.mktemp("options") / "add.bin"
    payload.write_bytes(add_payload(workspace_bytes=WORKSPACE_BYTES))
    scenario_list = [(name, options, PLACEMENTS.get(name, "host")) for name, options in SCENARIOS.items()]
    result = subprocess.run([sys.executable, str(SCENARIO_SCRIPT), json.dumps(scenario_list),
                             str(payload)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env=fake_env(fake_driver_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_set_option_refuses_bad_values_naming_the_cause(scenarios, name):
    key, value, cause = REFUSALS[name]
    report = scenarios[name]
    assert report["refused"] == [f"CudaGqaBackend refused option {key!r}={value!r} (executorch error 0x12)"]
    assert f"CudaGqaBackend: set_option: {cause}" in report["stderr"]
    # A refused value changes nothing, and the delegate runs with the defaults.
    assert report["values"] == DEFAULT_VALUES
    assert report.get("matches") is True, report


def test_set_option_values_round_trip_through_get_option(scenarios):
    report = scenarios["round trip"]
    assert report["refused"] == []
    assert report["values"] == {"device": 1, "stream": "0x3039", "synchronize": False, "profile": True,
                               "launch_graphs": False, "programmatic_launch": False}
    # 12345 is no stream of the fake driver: init says so.
    assert report["init"] == 0x12 and "option 'stream': cuStreamGetCtx failed" in report["stderr"]


@pytest.mark.parametrize("name", sorted(INIT_REFUSALS))
def test_init_refuses_a_device_or_stream_it_cannot_use(scenarios, name):
    report = scenarios[name]
    assert report["refused"] == [] and report["init"] != 0, report
    assert INIT_REFUSALS[name][1] in report["stderr"]


def test_init_uses_the_device_and_the_callers_stream(scenarios):
    report = scenarios["device 1, caller's stream, no sync"]
    assert report.get("matches") is True, report
    assert "sm_90 on device 1" in report["stderr"]
    # The caller's stream is never destroyed by the delegate.
    assert "fake: stream 0x5 destroyed" not in report["stderr"]
    assert report["profiled_ns"] == 0


def test_the_backend_owns_and_destroys_its_default_stream(scenarios):
    report = scenarios["defaults"]
    assert report.get("matches") is True, report
    assert "fake: stream 0x2 destroyed" in report["stderr"]


def test_profile_times_each_execute_through_events(scenarios):
    report = scenarios["profile"]
    assert report.get("matches") is True, report
    assert report["profiled_ns"] == 2 * 125_000  # two executes, one fake launch of 125 us each


def test_runner_device_reaches_init_as_a_runtime_spec(programs, fake_driver_dir):
    x = programs / "x.bin"
    result = subprocess.run([str(RUNNER), str(programs / "good.pte"), "--input", x, "--input", x, "--device", "5"],
                            capture_output=True, text=True, env=fake_env(fake_driver_dir), timeout=120)
    assert result.returncode == 2
    assert "CudaGqaBackend: no CUDA device 5 (this machine has 2)" in result.stderr
    result = subprocess.run([str(RUNNER), str(programs / "good.pte"), "--input", x, "--input", x, "--device", "1",
                             "--iterations", "2"], capture_output=True, text=True, env=fake_env(fake_driver_dir),
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sm_90 on device 1" in result.stderr
    assert result.stdout.count("kernels: median 125.0 us") == 1, result.stdout


def test_init_zeroes_the_workspace_once(scenarios):
    """Fused split-KV kernels keep arrival counters in the workspace that must start at 0
    (payload.fbs, Workspace); the fake driver's fresh memory is garbage."""
    assert scenarios["defaults"]["init"] == 0
    assert scenarios["defaults"]["zeroed_at_init"] == WORKSPACE_BYTES
    assert scenarios["defaults"]["matches"]


def test_host_tensors_are_staged_and_waited_for(scenarios):
    report = scenarios["defaults"]
    assert report["execute"] == [0, 0] and report["matches"] is True
    # Per execute: x and y to the device, out back, one synchronisation.
    assert report["calls"] == {"copies_to_device": 4, "copies_to_host": 2, "synchronizations": 2}
    # Host memory the caller owns is read and written by the copies: execute waits even when told not to.
    assert scenarios["host tensors, no sync"]["calls"] == report["calls"]


def test_device_tensors_are_used_in_place(scenarios):
    report = scenarios["device tensors"]
    assert report["execute"] == [0, 0] and report["matches"] is True, report
    assert report["calls"] == {"copies_to_device": 0, "copies_to_host": 0, "synchronizations": 2}
    # "synchronize" false: execute only enqueues.
    no_sync = scenarios["device tensors, no sync"]
    assert no_sync["execute"] == [0, 0] and no_sync["matches"] is True, no_sync
    assert no_sync["calls"] == {"copies_to_device": 0, "copies_to_host": 0, "synchronizations": 0}


def test_tensors_on_another_device_are_refused(scenarios):
    report = scenarios["tensors on another device"]
    assert report["execute"] == [0x12, 0x12] and report["matches"] is False
    assert "CudaGqaBackend: delegate arg 0 is on cuda:1, the delegate runs on cuda:0" in report["stderr"]
