"""Delegates of several payloads initialised, executed and destroyed from many threads at
once through the C API, without a GPU: against a fake libcuda.so.1 every output is right
and the shared module cache ends empty; with a driver too old to use,
every init fails cleanly and the process survives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fake_programs import ROOT, add_payload, fake_env

SCRIPT = Path(__file__).with_name("concurrent_delegates.py")
THREADS, ROUNDS, SHARED_THREADS, SHARED_ROUNDS = 8, 25, 4, 50  # as in concurrent_delegates.py


@pytest.fixture(scope="module")
def payload_args(tmp_path_factory) -> list[str]:
    """Two payloads of the fake add kernel: [2, 64] and [5, 64]; the same image, so one module."""
    folder = tmp_path_factory.mktemp("concurrency")
    args = []
    for rows in (2, 5):
        path = folder / f"add_{rows}.bin"
        path.write_bytes(add_payload(sizes=(rows, 64)))
        args += [str(path), str(rows)]
    return args


def run_script(args, env) -> dict:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                            cwd=ROOT, env=env)
    assert result.returncode == 0, f"rc {result.returncode}: {result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_threads_run_their_own_and_a_shared_delegate(payload_args, fake_driver_dir):
    report, stderr = run_script(payload_args, fake_env(fake_driver_dir))
    inits = THREADS * ROUNDS + 1
    assert report["init"] == {"0": inits}, stderr[-2000:]
    assert report["execute"] == {"0": THREADS * ROUNDS * 3 + SHARED_THREADS * SHARED_ROUNDS}, stderr[-2000:]
    assert report["wrong_outputs"] == 0
    # Every delegate shares the one module; the last destroy unloads it.
    assert report["peak_modules"] == 1
    assert report["modules_at_end"] == 0


def test_a_driver_too_old_fails_every_init_cleanly(payload_args, old_driver_dir):
    report, stderr = run_script(payload_args, fake_env(old_driver_dir))
    assert report["init"] == {str(0x10): THREADS * ROUNDS + 1}  # Error::NotSupported
    assert report["execute"] == {} and report["modules_at_end"] == 0
    assert "CudaGqaBackend: libcuda.so.1 is too old: it lacks cuGetErrorString, cuDriverGetVersion" in stderr
