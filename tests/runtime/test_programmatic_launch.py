"""Programmatic dependent launch (launcher.h, launch_graph.h) without a GPU, against the fake
libcuda.so.1 of fake_programs.py, which runs kernels on the host, counts the launches made with
the programmatic stream serialization attribute and the graph edges of each type, and loads
only the images that run on its device (whose compute capability a test sets).

A plan of two launches (x + y, then + y) whose second kernel has Kernel.waits_for_previous:
the second kernel, and only it, is launched as a programmatic dependent of the first (direct
launches: cuLaunchKernelEx with the attribute; graphs: a programmatic edge between their nodes)
when the device and the image loaded are sm_90 or later (a PTX fallback counts by its
ptx_arch), the option programmatic_launch is on and the driver has the entry point. Otherwise
the launches are the ordinary ones. The results are right in every case."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cuda_gqa.backends.serialization import deserialize_payload, serialize_payload
from fake_programs import MAKE_PTE_SCRIPT, ROOT, RUNNER, add_payload, build_fake_driver, fake_env

SCRIPT = Path(__file__).with_name("programmatic_scenarios.py")

# Images per payload; every payload's second kernel waits for the first unless said otherwise.
PAYLOADS = {
    "sm_90_cubin": dict(cubin_archs=(80, 90), ptx_arch=80),
    "sm_90_ptx": dict(cubin_archs=(80,), ptx_arch=90),
    "sm_80_ptx": dict(cubin_archs=(80,), ptx_arch=80),
    "no_flag": dict(waits_for_previous=False),
    "first_flagged_too": dict(),
}
# name: (payload, device compute capability, options, launched programmatically)
CASES = {
    "sm_90 cubin on sm_90": ("sm_90_cubin", 90, {}, True),
    "sm_90 PTX on sm_90": ("sm_90_ptx", 90, {}, True),
    "sm_90 PTX on sm_100": ("sm_90_ptx", 100, {}, True),
    "the first kernel flagged too": ("first_flagged_too", 90, {}, True),
    "sm_80 cubin on sm_80": ("sm_90_cubin", 80, {}, False),
    "sm_80 PTX on sm_90": ("sm_80_ptx", 90, {}, False),
    "sm_80 PTX on sm_100": ("sm_80_ptx", 100, {}, False),
    "no waits_for_previous": ("no_flag", 90, {}, False),
    "programmatic_launch off": ("sm_90_cubin", 90, {"programmatic_launch": False}, False),
}
MODES = {"direct": {"launch_graphs": False}, "graph": {}}
REFUSED_EDGE = "a refused programmatic edge"

DIRECT = {"direct_launches": 2}
DIRECT_PROGRAMMATIC = {"direct_launches": 2, "programmatic_launches": 1}
BUILT = {"graph_creates": 1, "nodes_added": 2, "instantiates": 1, "graph_launches": 1}
BUILT_PROGRAMMATIC = {**BUILT, "programmatic_edges": 1}
UPDATED = {"node_updates": 2, "graph_launches": 1}  # the new output: both nodes write it


@pytest.fixture(scope="module")
def payload_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("programmatic_payloads")
    for name, images in PAYLOADS.items():
        data = add_payload(kernels=2, **{"waits_for_previous": True, **images})
        if name == "first_flagged_too":
            payload = deserialize_payload(data)
            payload.plans[0].kernels[0].waitsForPrevious = True
            data = serialize_payload(payload)
        (folder / f"{name}.bin").write_bytes(data)
    return folder


def run_scenarios(payload_dir, driver_dir, scenarios) -> dict:
    result = subprocess.run([sys.executable, str(SCRIPT), str(payload_dir), json.dumps(scenarios)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=fake_env(driver_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def every_case(failing: str = "") -> list:
    return [[f"{case}, {mode}", payload, cc, {**options, **MODES[mode]}, failing]
            for case, (payload, cc, options, _) in CASES.items() for mode in MODES]


def fake_driver(tmp_path_factory, **lacks) -> Path:
    folder = build_fake_driver(tmp_path_factory.mktemp("fake_cuda"), **lacks)
    if folder is None:
        pytest.skip("no C compiler to build the fake driver")
    return folder


@pytest.fixture(scope="module")
def scenarios(payload_dir, fake_driver_dir) -> dict:
    refused = [REFUSED_EDGE, "sm_90_cubin", 90, {}, "cuGraphAddDependencies_v2,cuGraphExecKernelNodeSetParams_v2"]
    return run_scenarios(payload_dir, fake_driver_dir, [*every_case(), refused])


def calls(report) -> list:
    return [step["calls"] for step in report["steps"]]


def assert_correct(report):
    executes = [step for step in report["steps"] if step["step"] != "destroy"]
    assert all(step["rc"] == 0 and step["matches"] for step in executes), report
    assert "Error" not in report["stderr"], report["stderr"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_direct_launches_give_the_attribute_to_the_waiting_kernel_only(scenarios, case):
    report = scenarios[f"{case}, direct"]
    assert_correct(report)
    programmatic = CASES[case][3]
    launches = DIRECT_PROGRAMMATIC if programmatic else DIRECT
    assert calls(report)[:2] == [launches, launches]
    assert f"launch_graphs off), {int(programmatic)} kernel(s) as programmatic dependents" in report["stderr"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_graphs_join_the_waiting_kernel_by_a_programmatic_edge(scenarios, case):
    report = scenarios[f"{case}, graph"]
    assert_correct(report)
    programmatic = CASES[case][3]
    # Built once, then updated in place as usual: the edge type plays no part in updates.
    assert calls(report)[:2] == [BUILT_PROGRAMMATIC if programmatic else BUILT, UPDATED]
    assert f"launched as CUDA graphs, {int(programmatic)} kernel(s) as programmatic dependents" in report["stderr"]


def test_the_image_decides_for_a_ptx_fallback(scenarios):
    """The PTX the device JIT-compiles counts by its ptx_arch, not by the device's."""
    assert "fake: module loaded from PTX for sm_80" in scenarios["sm_80 PTX on sm_100, direct"]["stderr"]
    assert "fake: module loaded from PTX for sm_90" in scenarios["sm_90 PTX on sm_100, direct"]["stderr"]
    assert "fake: module loaded from a cubin for sm_80" in scenarios["sm_80 cubin on sm_80, direct"]["stderr"]


def test_a_refused_programmatic_edge_becomes_an_ordinary_one_logged_once(scenarios):
    report = scenarios[REFUSED_EDGE]
    assert_correct(report)
    first, rebuilt = calls(report)[:2]
    assert first == {**BUILT, "ordinary_edges_added": 1}
    # A refused update rebuilds the graph: its edges are ordinary from the start now.
    assert rebuilt == {"exec_destroys": 1, "graph_destroys": 1, **BUILT}
    assert report["stderr"].count("CudaGqaBackend: launch graph: cuGraphAddDependencies refused a programmatic "
                                  "edge (CUDA_ERROR_FAKE (fake failure)): an ordinary one instead") == 1


def test_a_driver_without_the_entry_points_launches_the_ordinary_way(payload_dir, tmp_path_factory):
    """Before CUDA 12.0: no cuLaunchKernelEx and no cuGraphAddDependencies_v2."""
    driver = fake_driver(tmp_path_factory, launch_kernel_ex=False, graph_add_dependencies=False)
    report = run_scenarios(payload_dir, driver, every_case())
    for case in CASES:
        assert_correct(report[f"{case}, direct"])
        assert calls(report[f"{case}, direct"])[:2] == [DIRECT, DIRECT]
        assert_correct(report[f"{case}, graph"])
        assert calls(report[f"{case}, graph"])[:2] == [BUILT, UPDATED]


def test_a_driver_without_programmatic_edges_joins_graph_nodes_the_ordinary_way(payload_dir, tmp_path_factory):
    """CUDA 12.0 to 12.2: cuLaunchKernelEx but no cuGraphAddDependencies_v2."""
    driver = fake_driver(tmp_path_factory, graph_add_dependencies=False)
    report = run_scenarios(payload_dir, driver, every_case())
    for case, (_, _, _, programmatic) in CASES.items():
        assert_correct(report[f"{case}, direct"])
        launches = DIRECT_PROGRAMMATIC if programmatic else DIRECT
        assert calls(report[f"{case}, direct"])[:2] == [launches, launches]
        assert_correct(report[f"{case}, graph"])
        assert calls(report[f"{case}, graph"])[:2] == [BUILT, UPDATED]
        assert "launched as CUDA graphs, 0 kernel(s) as programmatic dependents" in report[f"{case}, graph"]["stderr"]


def test_runner_no_programmatic_launch_reaches_init(fake_driver_dir, tmp_path):
    (tmp_path / "payload.bin").write_bytes(add_payload(kernels=2, waits_for_previous=True))
    result = subprocess.run([sys.executable, "-c", MAKE_PTE_SCRIPT, str(tmp_path / "payload.bin"),
                             str(tmp_path / "model.pte"), "-"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    x.tofile(tmp_path / "x.bin")
    (x + 2 * x).tofile(tmp_path / "expected.bin")
    common = [str(RUNNER), str(tmp_path / "model.pte"), "--input", str(tmp_path / "x.bin"), "--input",
              str(tmp_path / "x.bin"), "--expected", str(tmp_path / "expected.bin"), "--warmup", "1",
              "--iterations", "2"]
    for flags, programmatic in (([], "1"), (["--no-programmatic-launch"], "0"),
                                (["--no-launch-graphs"], "1"), (["--no-launch-graphs", "--no-programmatic-launch"], "0")):
        run = subprocess.run([*common, *flags], capture_output=True, text=True, env=fake_env(fake_driver_dir),
                             timeout=120)
        assert run.returncode == 0 and "PASS" in run.stdout, run.stdout + run.stderr
        # The timed load and the profiled one.
        assert re.findall(r"(\d+) kernel\(s\) as programmatic dependents", run.stderr) == [programmatic] * 2, flags
