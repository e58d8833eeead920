"""The payload parser and launch evaluation under AddressSanitizer and
UndefinedBehaviorSanitizer: a CI build (-DCUDA_GQA_SANITIZE=ON, build/sanitize)
of the fuzz driver runs thousands of truncations and byte flips of real
payloads (Triton cubins, arch variants, decode workspaces, constants) and must finish
with no sanitizer report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cuda_gqa.backends.attention_plan import build_attention_payload
from payload_fuzz import run_payload_fuzz

ROOT = Path(__file__).resolve().parents[2]
SANITIZE_DIR = ROOT / "build" / "sanitize"
DRIVER = SANITIZE_DIR / "cuda_gqa_payload_fuzz"
TOOLS = Path(sys.executable).parent  # cmake and ninja come from the venv

# prefill (forward kernel; sm_90 tiles in plans of its own), decode with one
# split (no combine, no workspace), decode with several splits (split +
# combine sharing a workspace; plans for sm_90), decode merging in the split
# kernel, and a dynamic L_q/L_kv payload (a dispatch table of ranged plans,
# max sizes, size_from); each with its generic plans.
PAYLOADS = {
    "prefill": dict(dtype=torch.bfloat16, batch=1, num_heads_q=8, num_heads_kv=2, head_dim=64, l_q=128, l_kv=128,
                    is_causal=True),
    "decode_single_split": dict(dtype=torch.float16, batch=1, num_heads_q=8, num_heads_kv=2, head_dim=64, l_q=1,
                                l_kv=200, is_causal=False),
    "decode_multi_split": dict(dtype=torch.bfloat16, batch=1, num_heads_q=32, num_heads_kv=8, head_dim=128, l_q=1,
                               l_kv=4096, is_causal=False),
    # Splits merged in the split kernel: three workspace ranges (partials, log-sum-exps, counters).
    "decode_fused_merge": dict(dtype=torch.bfloat16, batch=8, num_heads_q=32, num_heads_kv=8, head_dim=128, l_q=1,
                               l_kv=2048, is_causal=False),
    "dynamic": dict(dtype=torch.float16, batch=1, num_heads_q=8, num_heads_kv=2, head_dim=64, l_q=(1, 64),
                    l_kv=(1, 1024), is_causal=False),
}
SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "SUMMARY: ")


@pytest.fixture(scope="module")
def sanitized_driver() -> Path:
    configure = [str(TOOLS / "cmake"), "-S", str(ROOT), "-B", str(SANITIZE_DIR), "-G", "Ninja",
                 f"-DCMAKE_MAKE_PROGRAM={TOOLS / 'ninja'}", f"-DPython3_EXECUTABLE={sys.executable}",
                 "-DCMAKE_BUILD_TYPE=Debug", "-DCUDA_GQA_SANITIZE=ON", "-DCUDA_GQA_BUILD_RUNNER=OFF"]
    build = [str(TOOLS / "cmake"), "--build", str(SANITIZE_DIR), "--target", "cuda_gqa_payload_fuzz"]
    for command in (configure, build):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The sanitizers are really linked in (a plain build would pass vacuously).
    libraries = subprocess.run(["ldd", str(DRIVER)], capture_output=True, text=True).stdout
    assert "libasan" in libraries and "libubsan" in libraries, libraries
    return DRIVER


@pytest.fixture(scope="module")
def real_payloads(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("payloads")
    paths = []
    for name, shape in PAYLOADS.items():
        path = folder / f"{name}.bin"
        path.write_bytes(build_attention_payload(archs=(80, 90), ptx=True, **shape))
        paths.append(path)
    paths.append(folder / "with_constants.bin")
    paths[-1].write_bytes(with_constants(paths[1].read_bytes()))  # decode_single_split: the smallest
    return paths


def with_constants(data: bytes) -> bytes:
    """A payload whose first kernel also reads two constants (payload version 4's weights)."""
    from cuda_gqa.backends.payload_constants import PayloadConstants, constant_param
    from cuda_gqa.backends.serialization import deserialize_payload, serialize_payload

    payload, constants = deserialize_payload(data), PayloadConstants()
    params = payload.plans[0].kernels[0].params
    params[1:1] = [constant_param(constants.index("wq", torch.zeros(64, 64, dtype=torch.bfloat16))),
                   constant_param(constants.index("norm", torch.zeros(64)))]
    payload.constants = constants.specs()
    return serialize_payload(payload)


def test_fuzzed_real_payloads_run_clean_under_asan_and_ubsan(sanitized_driver, real_payloads):
    truncations, flips = 1500, 2500
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=23",
           "UBSAN_OPTIONS": "print_stacktrace=1:exitcode=23"}
    result, stats = run_payload_fuzz(sanitized_driver, real_payloads, truncations=truncations, flips=flips, env=env)
    reports = [line for line in result.stderr.splitlines() if line.startswith(SANITIZER_REPORTS)]
    assert result.returncode == 0 and not reports, f"rc {result.returncode}: {result.stderr[-4000:]}"
    assert [Path(s["file"]).stem for s in stats] == [*PAYLOADS, "with_constants"]
    for counts in stats:
        assert (counts["truncations"], counts["flips"]) == (truncations, flips), counts
        assert counts["truncations_accepted"] == 0, counts
        # Flips inside cubins stay valid and reach the launch evaluation;
        # flips in the structure are mostly refused.
        assert 0 < counts["flips_accepted"] < flips, counts
        assert counts["launches_evaluated"] > 0, counts
