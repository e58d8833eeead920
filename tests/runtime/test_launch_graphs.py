"""Launch graphs (runtime/cpp/launch_graph.h) without a GPU: against the fake libcuda.so.1 of
fake_programs.py, which records its launch and graph calls and runs graph nodes as it runs
kernels, a delegate builds one graph per launch plan at its first execute, replays it with one
cuGraphLaunch, updates only the nodes whose launch changed, re-instantiates when an update is
refused, reports failing graph calls by name, and launches kernel by kernel when the option
is off or the driver has no graph API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fake_programs import ROOT, RUNNER, add_payload, fake_env

SCRIPT = Path(__file__).with_name("graph_scenarios.py")
FAILING = ("cuGraphCreate", "cuGraphAddKernelNode_v2", "cuGraphInstantiateWithFlags", "cuGraphLaunch")
INTERNAL = 0x1  # executorch Error::Internal


@pytest.fixture(scope="module")
def payload_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("graph_payloads")
    (folder / "add.bin").write_bytes(add_payload())
    (folder / "add_twice.bin").write_bytes(add_payload(kernels=2))
    (folder / "two_plans.bin").write_bytes(add_payload(max_rows=4, plans=2))
    (folder / "dynamic.bin").write_bytes(add_payload(max_rows=4))
    return folder


def run_scenarios(payload_dir, driver_dir, names) -> dict:
    result = subprocess.run([sys.executable, str(SCRIPT), str(payload_dir), *names], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, env=fake_env(driver_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def scenarios(payload_dir, fake_driver_dir) -> dict:
    names = ["steady", "host tensors", "two plans", "graphs off", "empty", "refused update",
             *(f"failing {call}" for call in FAILING)]
    return run_scenarios(payload_dir, fake_driver_dir, names)


def steps(report) -> dict:
    return {s["step"]: s for s in report["steps"]}


def test_first_execute_builds_a_graph_and_launches_it_once(scenarios):
    report = scenarios["steady"]
    first = steps(report)["first"]
    assert first["rc"] == 0 and first["matches"], report
    # Both kernels of the plan as a chain of two nodes, one instantiation, one launch.
    assert first["calls"] == {"graph_creates": 1, "nodes_added": 2, "instantiates": 1, "graph_launches": 1}
    assert "launched as CUDA graphs" in report["stderr"]


def test_the_same_tensors_again_update_nothing(scenarios):
    for name in ("same tensors", "same again"):
        step = steps(scenarios["steady"])[name]
        assert step["rc"] == 0 and step["matches"]
        assert step["calls"] == {"graph_launches": 1}, step


def test_moved_tensors_update_only_the_nodes_that_read_them(scenarios):
    by_name = steps(scenarios["steady"])
    # x is read by the first launch only; the output by both.
    assert by_name["new x"]["calls"] == {"node_updates": 1, "graph_launches": 1}
    assert by_name["new output"]["calls"] == {"node_updates": 2, "graph_launches": 1}
    assert by_name["new x"]["matches"] and by_name["new output"]["matches"]
    assert by_name["destroy"]["calls"] == {"exec_destroys": 1, "graph_destroys": 1}


def test_host_tensors_are_staged_around_an_unchanged_graph(scenarios):
    arrays = [s for s in scenarios["host tensors"]["steps"] if s["step"].startswith("arrays")]
    assert all(s["rc"] == 0 and s["matches"] for s in arrays), arrays
    # The staging buffers stay put whatever host arrays come: no update.
    assert arrays[0]["calls"] == {"graph_creates": 1, "nodes_added": 1, "instantiates": 1, "graph_launches": 1}
    assert arrays[1]["calls"] == {"graph_launches": 1}


def test_each_launch_plan_gets_its_own_graph(scenarios):
    calls = [s["calls"] for s in scenarios["two plans"]["steps"]]
    built = {"graph_creates": 1, "nodes_added": 1, "instantiates": 1, "graph_launches": 1}
    assert calls == [built, built, {"graph_launches": 1}, {"graph_launches": 1},
                     {"exec_destroys": 2, "graph_destroys": 2}]
    assert all(s["matches"] for s in scenarios["two plans"]["steps"][:4])


def test_graphs_off_launches_kernel_by_kernel(scenarios):
    report = scenarios["graphs off"]
    assert [s["calls"] for s in report["steps"]] == [{"direct_launches": 2}, {"direct_launches": 2}, {}]
    assert all(s["matches"] for s in report["steps"][:2])
    assert "launched kernel by kernel (launch_graphs off)" in report["stderr"]


def test_an_empty_grid_launches_nothing_and_builds_no_graph(scenarios):
    zero, two = scenarios["empty"]["steps"][:2]
    assert zero["rc"] == 0 and zero["calls"] == {}
    assert two["rc"] == 0 and two["matches"] and two["calls"]["instantiates"] == 1


def test_a_refused_update_instantiates_the_graph_again(scenarios):
    report = scenarios["refused update"]
    by_name = steps(report)
    rebuilt = {"exec_destroys": 1, "graph_destroys": 1, "graph_creates": 1, "nodes_added": 1, "instantiates": 1,
               "graph_launches": 1}
    for name in ("new output", "another output"):
        assert by_name[name]["rc"] == 0 and by_name[name]["matches"], by_name[name]
        assert by_name[name]["calls"] == rebuilt
    assert by_name["updates work again"]["calls"] == {"node_updates": 1, "graph_launches": 1}
    # Said once per graph, at Info level.
    assert report["stderr"].count("cuGraphExecKernelNodeSetParams refused an update (CUDA_ERROR_FAKE") == 1


@pytest.mark.parametrize("call", FAILING)
def test_a_failing_graph_call_is_an_error_naming_it(scenarios, call):
    report = scenarios[f"failing {call}"]
    failing, recovered, destroy = report["steps"]
    assert failing["rc"] == INTERNAL and not failing["matches"], failing
    name = call.removesuffix("_v2")
    assert f"CudaGqaBackend: launch graph: {name} failed: CUDA_ERROR_FAKE (fake failure)" in report["stderr"]
    # The next execute builds (or, after a failed launch, reuses) the graph and succeeds.
    assert recovered["rc"] == 0 and recovered["matches"], recovered
    assert recovered["calls"].get("instantiates", 0) == (0 if call == "cuGraphLaunch" else 1)
    # Nothing leaks: every graph and exec made is destroyed.
    made = {key: sum(s["calls"].get(key, 0) for s in report["steps"]) for key in
            ("graph_creates", "graph_destroys", "instantiates", "exec_destroys")}
    assert made["graph_creates"] == made["graph_destroys"] and made["instantiates"] == made["exec_destroys"], made


def test_a_driver_without_the_graph_api_launches_kernel_by_kernel(payload_dir, no_graph_driver_dir):
    report = run_scenarios(payload_dir, no_graph_driver_dir, ["steady", "two plans"])
    for name in ("steady", "two plans"):
        assert all(s["rc"] == 0 and s["matches"] for s in report[name]["steps"] if s["step"] != "destroy"), report
        calls = [s["calls"] for s in report[name]["steps"]]
        assert all(set(c) <= {"direct_launches"} for c in calls), calls
        assert "launched kernel by kernel (the driver has no graph API)" in report[name]["stderr"]
        assert "Error" not in report[name]["stderr"]
    assert sum(s["calls"].get("direct_launches", 0) for s in report["steady"]["steps"]) == 10  # 5 executes x 2


# --------------------------------------------------------------------------
# the runner: both ways in one run


def test_runner_compares_launch_graphs_on_and_off(programs, fake_driver_dir, tmp_path):
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    x.tofile(tmp_path / "x.bin")
    (x + x).tofile(tmp_path / "expected.bin")
    common = [str(RUNNER), str(programs / "device_io.pte"), "--input", str(tmp_path / "x.bin"), "--input",
              str(tmp_path / "x.bin"), "--expected", str(tmp_path / "expected.bin"), "--warmup", "1",
              "--iterations", "3", "--inputs-on-device"]
    env = fake_env(fake_driver_dir)
    result = subprocess.run([*common, "--compare-launch-graphs"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    for suffix in ("", " (launch graphs off)"):
        assert re.search(rf"^execute{re.escape(suffix)}: median [0-9.]+ us, p90 [0-9.]+ us over 3 iterations$",
                         result.stdout, re.M), result.stdout
        assert re.search(rf"^kernels{re.escape(suffix)}: median 125.0 us", result.stdout, re.M), result.stdout
        assert re.search(rf"^host overhead{re.escape(suffix)}: median -?[0-9.]+ us", result.stdout, re.M)
    assert re.search(r"^output 0 \(launch graphs off\): max_abs_err=0, .* PASS$", result.stdout, re.M), result.stdout
    # Four loads, 1 + 3 executes each: graphs on for two, off for the other two; the inputs
    # went to the device once (2) and each timed load's output came back once (2).
    assert "after 16 launches, 0 staging copies, 4 synchronous copies, 8 graph launches, 8 direct launches" \
        in result.stderr, result.stderr

    off = subprocess.run([*common, "--no-launch-graphs"], capture_output=True, text=True, env=env, timeout=120)
    assert off.returncode == 0, off.stdout + off.stderr
    assert "launch graphs off" not in off.stdout  # the standard three lines, measured with graphs off
    assert "after 8 launches, 0 staging copies, 3 synchronous copies, 0 graph launches, 8 direct launches" \
        in off.stderr, off.stderr
    on = subprocess.run(common, capture_output=True, text=True, env=env, timeout=120)
    assert "after 8 launches, 0 staging copies, 3 synchronous copies, 8 graph launches, 0 direct launches" \
        in on.stderr, on.stderr


def test_run_bundle_summarises_both_ways(programs, fake_driver_dir, tmp_path):
    case = tmp_path / "bundle" / "cases" / "io"
    case.mkdir(parents=True)
    (case / "model.pte").symlink_to(programs / "device_io.pte")
    (case / "runner_args").write_text("--inputs-on-device\n")
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    for name, data in (("input_0", x), ("input_1", x), ("expected_0", x + x)):
        data.tofile(case / f"{name}.bin")
    (tmp_path / "bundle" / "cuda_gqa_runner").symlink_to(RUNNER)
    result = subprocess.run(["bash", str(ROOT / "runtime" / "runner" / "run_bundle.sh"), str(tmp_path / "bundle"),
                             "--warmup", "1", "--iterations", "2", "--compare-launch-graphs"], capture_output=True,
                            text=True, env=fake_env(fake_driver_dir), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("io")}
    assert set(rows) == {"io", "io/no-graphs"}, result.stdout
    for row in rows.values():
        assert row[2] == "125.0" and row[4] == "PASS", row


def test_runner_times_executes_with_inputs_set_once(programs, fake_driver_dir, tmp_path):
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    x.tofile(tmp_path / "x.bin")
    (x + x).tofile(tmp_path / "expected.bin")
    result = subprocess.run([str(RUNNER), str(programs / "device_io.pte"), "--input", str(tmp_path / "x.bin"),
                             "--input", str(tmp_path / "x.bin"), "--expected", str(tmp_path / "expected.bin"),
                             "--warmup", "1", "--iterations", "3", "--inputs-on-device", "--time-inputs-set-once"],
                            capture_output=True, text=True, env=fake_env(fake_driver_dir), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^execute, inputs set once: median [0-9.]+ us, p90 [0-9.]+ us; host overhead -?[0-9.]+ us",
                     result.stdout, re.M), result.stdout
    # Timed, profiled and set-once passes, 1 + 3 executes each; the inputs went to the device once.
    assert "after 12 launches, 0 staging copies, 3 synchronous copies" in result.stderr, result.stderr
