"""The built binaries (cuda_gqa_runner, cuda_gqa_llm_runner, cuda_gqa_payload_fuzz) check their command lines
before any work: every number within a stated range (no overflow, no negative counts), every file argument a
readable regular file. A bad argument exits 2 with a line naming the flag, never a crash or an endless run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fake_programs import ROOT

BUILD = ROOT / "build"
HUGE = "99999999999999999999"  # past int64


def run(binary: str, args, tmp_path: Path) -> subprocess.CompletedProcess:
    path = BUILD / binary
    if not path.is_file():
        pytest.fail(f"{path} not found: run `make build` first")
    return subprocess.run([str(path), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.fixture
def files(tmp_path):
    """A regular file to stand for a model or an input (the checks come before any load) and a folder."""
    (tmp_path / "model.pte").write_bytes(b"\0" * 64)
    (tmp_path / "folder").mkdir()
    return tmp_path / "model.pte", tmp_path / "folder"


RUNNER_CASES = {
    "input a folder": (lambda m, d: [m, "--input", d], "error: --input: {d}: not a regular file (a directory)"),
    "expected a folder": (lambda m, d: [m, "--expected", d], "error: --expected: {d}: not a regular file"),
    "model a folder": (lambda m, d: [d], "error: model: {d}: not a regular file (a directory)"),
    "model missing": (lambda m, d: [d / "none.pte"], "error: model: cannot open {d}/none.pte: No such file or directory"),
    "iterations overflow": (lambda m, d: [m, "--iterations", HUGE],
                            f"error: bad --iterations: {HUGE} (accepted: a whole number from 0 to 1000000)"),
    "warmup negative": (lambda m, d: [m, "--warmup", "-1"], "error: bad --warmup: -1 (accepted: a whole number from 0"),
    "device too large": (lambda m, d: [m, "--device", "128"], "error: bad --device: 128 (accepted: a whole number "
                                                                "from 0 to 127)"),
    "atol infinite": (lambda m, d: [m, "--atol", "inf"], "error: bad --atol: inf"),
}


@pytest.mark.parametrize("case", sorted(RUNNER_CASES))
def test_runner_refuses_bad_arguments(case, files, tmp_path):
    make_args, message = RUNNER_CASES[case]
    model, folder = files
    result = run("cuda_gqa_runner", make_args(model, folder), tmp_path)
    assert result.returncode == 2, f"rc {result.returncode}: {result.stderr[-2000:]}"
    assert message.format(d=folder) in result.stderr, result.stderr[-2000:]


LLM_RUNNER_CASES = {
    "prompt a folder": (lambda m, d: [m, "--prompt", d], "error: --prompt: {d}: not a regular file (a directory)"),
    "data a folder": (lambda m, d: [m, "--prompt", m, "--data", d], "error: --data: {d}: not a regular file"),
    "expected tokens a folder": (lambda m, d: [m, "--prompt", m, "--expected-tokens", d],
                                 "error: --expected-tokens: {d}: not a regular file"),
    "model a folder": (lambda m, d: [d, "--prompt", m], "error: model: {d}: not a regular file"),
    "new tokens 0": (lambda m, d: [m, "--prompt", m, "--new-tokens", "0"],
                     "error: bad --new-tokens: 0 (accepted: a whole number from 1 to 10000000)"),
    "steps overflow": (lambda m, d: [m, "--decode-at", "0", "--steps", HUGE], f"error: bad --steps: {HUGE}"),
    "device too large": (lambda m, d: [m, "--prompt", m, "--device", "1000"],
                         "error: bad --device: 1000 (accepted: a whole number from 0 to 127)"),
}


@pytest.mark.parametrize("case", sorted(LLM_RUNNER_CASES))
def test_llm_runner_refuses_bad_arguments(case, files, tmp_path):
    make_args, message = LLM_RUNNER_CASES[case]
    model, folder = files
    result = run("cuda_gqa_llm_runner", make_args(model, folder), tmp_path)
    assert result.returncode == 2, f"rc {result.returncode}: {result.stderr[-2000:]}"
    assert message.format(d=folder) in result.stderr, result.stderr[-2000:]


FUZZ_CASES = {
    "flips huge": (["--flips", "9999999999999999999"], "error: bad --flips 9999999999999999999 (accepted: a whole "
                                                        "number from 0 to 10000000)"),
    "truncations negative": (["--truncations", "-5"], "error: bad --truncations -5"),
    "seed overflow": (["--seed", HUGE], f"error: bad --seed {HUGE}"),
    "variations too many": (["--variations", "65"], "error: bad --variations 65 (accepted: a whole number from 0 "
                                                     "to 64)"),
}


@pytest.mark.parametrize("case", sorted(FUZZ_CASES))
def test_fuzz_driver_refuses_bad_counts(case, files, tmp_path):
    args, message = FUZZ_CASES[case]
    model, _ = files
    result = run("cuda_gqa_payload_fuzz", [*args, model], tmp_path)
    assert result.returncode == 2 and message in result.stderr, f"rc {result.returncode}: {result.stderr[-2000:]}"


def test_fuzz_driver_refuses_a_folder(files, tmp_path):
    _, folder = files
    result = run("cuda_gqa_payload_fuzz", [folder], tmp_path)
    assert result.returncode == 2 and f"error: {folder}: not a regular file (a directory)" in result.stderr, \
        result.stderr[-2000:]
