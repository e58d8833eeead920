"""Runs cuda_gqa_payload_fuzz (runtime/fuzz/payload_fuzz.cpp), the one generator of
truncated and byte-flipped payload cases, for the plain and the sanitized builds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def run_payload_fuzz(driver: Path, files: list[Path], *, truncations: int, flips: int, seed: int = 1234,
                     variations: int = 4, env: dict | None = None,
                     timeout: float = 300) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """The finished process and, per file, the driver's counts (empty if it did not finish). variations:
    argument draws (sizes, strides, addresses) per accepted case and arch."""
    if not driver.is_file():
        raise FileNotFoundError(f"{driver} not found: build it first (make build)")
    result = subprocess.run([str(driver), "--seed", str(seed), "--truncations", str(truncations), "--flips",
                             str(flips), "--variations", str(variations), *map(str, files)], capture_output=True, text=True, env=env, timeout=timeout)
    stats = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result, stats
