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

from cuda_gqa.backends.attention_plan import AttentionArgs, build_attention_payload
from cuda_gqa.backends.kv_cache_plan import KvCacheArgs
from payload_fuzz import run_payload_fuzz
from test_states import state_payload

from fake_programs import add_payload, pack
from cuda_gqa.backends.serialization import deserialize_payload
from cuda_gqa.backends.serialization import payload_generated as fb

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
    # A decode step over the delegate's own KV cache: states k and v after the output, written by a
    # kv_cache_write launch ahead of attention (one arch, no PTX: its compile stays short).
    "kv_cache_decode": dict(dtype=torch.float16, batch=1, num_heads_q=8, num_heads_kv=2, head_dim=64, l_q=1,
                            l_kv=256, is_causal=False, archs=(90,), ptx=False,
                            args=AttentionArgs(query=0, key=1, value=2, out=4),
                            cache=KvCacheArgs(k_new=1, v_new=2, positions=3, k_state="layers.0.k",
                                              v_state="layers.0.v", max_seq_len=256)),
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
        path.write_bytes(build_attention_payload(**{"archs": (80, 90), "ptx": True, **shape}))
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
    result, stats = run_payload_fuzz(sanitized_driver, real_payloads, truncations=truncations, flips=flips, env=env,
                                     variations=1, timeout=600)
    reports = [line for line in result.stderr.splitlines() if line.startswith(SANITIZER_REPORTS)]
    assert result.returncode == 0 and not reports, f"rc {result.returncode}: {result.stderr[-4000:]}"
    assert [Path(s["file"]).stem for s in stats] == [*PAYLOADS, "with_constants"]
    for counts in stats:
        assert (counts["truncations"], counts["flips"]) == (truncations, flips), counts
        assert counts["truncations_accepted"] == 0, counts
        # Flips inside cubins stay valid and reach the launch evaluation;
        # flips in the structure are mostly refused.
        assert 0 < counts["flips_accepted"] < flips, counts
        # States included: a KV-cache payload's launches are evaluated too.
        assert counts["launches_evaluated"] > 0, counts


def misaligned_ranges_payload() -> bytes:
    """A valid payload whose SizeRange vector (structs of int64 fields) starts 4 bytes off an 8-byte
    boundary: the flatbuffers Verifier checks only the 4-byte alignment of a vector."""

    def start_misaligned(builder, count):
        builder.Prep(4, 24 * count)
        if (builder.Offset() + 24 * count) % 8 == 0:
            builder.Pad(4)
        return builder.StartVector(24, count, 4)

    def pack_range_unaligned(self, builder):  # SizeRange's 24 bytes without its 8-byte Prep
        for value in (self.max, self.min):
            builder.PrependUint32((value >> 32) & 0xFFFFFFFF)
            builder.PrependUint32(value & 0xFFFFFFFF)
        builder.Pad(6)
        builder.PrependUint8(self.dim)
        builder.PrependUint8(self.arg)
        return builder.Offset()

    payload = deserialize_payload(add_payload(max_rows=4, plans=2))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fb, "LaunchPlanStartWhenVector", start_misaligned)
        patch.setattr(fb.SizeRangeT, "Pack", pack_range_unaligned)
        return pack(payload)


def test_misaligned_structs_and_state_payloads_run_clean_under_ubsan(sanitized_driver, tmp_path):
    misaligned = tmp_path / "misaligned_ranges.bin"
    misaligned.write_bytes(misaligned_ranges_payload())
    assert [r.max for r in deserialize_payload(misaligned.read_bytes()).plans[1].when] == [4]
    states = tmp_path / "state.bin"
    states.write_bytes(pack(state_payload()))
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=23",
           "UBSAN_OPTIONS": "print_stacktrace=1:exitcode=23"}
    result, stats = run_payload_fuzz(sanitized_driver, [misaligned, states], truncations=200, flips=400, env=env,
                                     variations=8)
    reports = [line for line in result.stderr.splitlines() if "runtime error:" in line or line.startswith(SANITIZER_REPORTS)]
    assert result.returncode == 0 and not reports, f"rc {result.returncode}: {result.stderr[-4000:]}"
    assert [s["launches_evaluated"] > 0 for s in stats] == [True, True], stats
