"""The C++ runtime library on a machine without a GPU: it exists, registers
CudaGqaBackend with ExecuTorch's Python runtime, reports the missing driver,
refuses bad payloads without crashing, picks images by arch, and the runner
fails cleanly.

Everything that could crash the interpreter runs in a subprocess, so a crash
fails one test instead of killing pytest.
"""

from __future__ import annotations

import ctypes
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cuda_gqa.backends.serialization import PAYLOAD_VERSION
from cuda_gqa.backends.serialization import payload_generated as fb
from fake_programs import ADD_MODULES, LIBRARY, ROOT, RUNNER, K, P, fake_env, pack, param, sample_payload, u8
from payload_fuzz import run_payload_fuzz

FUZZ_DRIVER = ROOT / "build" / "cuda_gqa_payload_fuzz"


# --------------------------------------------------------------------------
# helpers


def require_library() -> Path:
    if not LIBRARY.is_file():
        pytest.fail(f"{LIBRARY} not found: run `make build` first")
    return LIBRARY


def load_library() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(require_library()), mode=ctypes.RTLD_GLOBAL)
    lib.cuda_gqa_validate_payload.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    lib.cuda_gqa_validate_payload.restype = ctypes.c_int
    lib.cuda_gqa_device_status.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.cuda_gqa_device_status.restype = ctypes.c_int
    lib.cuda_gqa_select_images.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p,
                                           ctypes.c_size_t]
    lib.cuda_gqa_select_images.restype = ctypes.c_int
    lib.cuda_gqa_payload_version.restype = ctypes.c_int
    return lib


def validate(lib: ctypes.CDLL, data: bytes, offset: int = 0) -> tuple[int, str]:
    """(rc, message); `offset` places the bytes at an unaligned address."""
    buf = ctypes.create_string_buffer(bytes(offset) + bytes(data), offset + len(data) + 1)
    message = ctypes.create_string_buffer(512)
    rc = lib.cuda_gqa_validate_payload(ctypes.addressof(buf) + offset, len(data), message, len(message))
    return rc, message.value.decode(errors="replace")


def select_images(lib: ctypes.CDLL, data: bytes, cc: int) -> tuple[int, str]:
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    message = ctypes.create_string_buffer(512)
    rc = lib.cuda_gqa_select_images(buf, len(data), cc, message, len(message))
    return rc, message.value.decode(errors="replace")


def run_python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# --------------------------------------------------------------------------
# (1) the library


def test_library_is_built():
    path = require_library()
    assert path.stat().st_size > 0
    # Built to load without a driver: libcuda must not be a link dependency.
    dynamic = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True)
    if dynamic.returncode == 0:
        assert "libcuda.so" not in dynamic.stdout
        assert "libexecutorch.so" in dynamic.stdout
        assert "kernels_optimized" not in dynamic.stdout


def test_payload_version_matches_python_serializer():
    assert load_library().cuda_gqa_payload_version() == PAYLOAD_VERSION


# --------------------------------------------------------------------------
# (2) registration with ExecuTorch's Python runtime


def test_backend_registers_with_executorch_runtime():
    require_library()
    result = run_python(f"""
        import ctypes, json
        from executorch.runtime import Runtime
        registry = Runtime.get().backend_registry
        before = list(registry.registered_backend_names)
        ctypes.CDLL({str(LIBRARY)!r}, mode=ctypes.RTLD_GLOBAL)
        after = list(registry.registered_backend_names)
        print(json.dumps({{"before": before, "after": after,
                          "available": registry.is_available("CudaGqaBackend")}}))
        """)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "CudaGqaBackend" not in report["before"]
    assert "CudaGqaBackend" in report["after"]
    # is_available() is true everywhere; a missing GPU is reported by init.
    assert report["available"] is True


# --------------------------------------------------------------------------
# (3) device status without a GPU


def _libcuda_loadable() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def test_device_status_names_the_cause():
    lib = load_library()
    message = ctypes.create_string_buffer(512)
    rc = lib.cuda_gqa_device_status(message, len(message))
    text = message.value.decode()
    if not _libcuda_loadable():
        assert rc != 0
        assert text.startswith("libcuda.so.1 not found: "), text
    elif rc == 0:
        assert "sm_" in text, text
    else:
        assert "cuInit failed" in text or "device" in text, text


def test_device_status_truncates_into_small_buffers():
    lib = load_library()
    small = ctypes.create_string_buffer(b"\xff" * 8, 8)
    rc = lib.cuda_gqa_device_status(small, 8)
    assert small.raw[7] == 0  # NUL-terminated within the given size
    assert rc == lib.cuda_gqa_device_status(None, 0)  # no buffer: still answers


# --------------------------------------------------------------------------
# (4) payload validation


def test_valid_payload_is_accepted():
    lib = load_library()
    data = pack(sample_payload())
    assert validate(lib, data) == (0, "ok")
    # Scalars are read in place: an unaligned buffer is copied, not misread.
    for offset in (1, 3, 4):
        assert validate(lib, data, offset=offset) == (0, "ok")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "payload too short (0 bytes)"),
        (b"CGQA", "payload too short (4 bytes)"),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a cuda_gqa payload"),
    ],
    ids=["empty", "short", "random"],
)
def test_garbage_is_refused(data, reason):
    rc, message = validate(load_library(), data)
    assert rc != 0
    assert reason in message


def test_null_pointer_is_refused():
    lib = load_library()
    message = ctypes.create_string_buffer(256)
    assert lib.cuda_gqa_validate_payload(None, 100, message, len(message)) != 0
    assert "too short" in message.value.decode()


def test_wrong_identifier_is_refused():
    data = bytearray(pack(sample_payload()))
    data[4:8] = b"XNNP"
    rc, message = validate(load_library(), bytes(data))
    assert rc != 0
    assert message == "not a cuda_gqa payload: file identifier 'XNNP', expected 'CGQA'"


@pytest.mark.parametrize("version", [2, PAYLOAD_VERSION + 1, 7])
def test_other_schema_versions_are_refused_naming_the_range(version):
    rc, message = validate(load_library(), pack(sample_payload(), version=version))
    assert rc != 0
    assert message == f"payload schema version {version}, this runtime reads versions 3 to {PAYLOAD_VERSION}"


def test_version_3_payloads_are_still_accepted():
    # Version 4 appended constants; a version 3 payload is one without them.
    assert PAYLOAD_VERSION == 4
    assert validate(load_library(), pack(sample_payload(), version=3)) == (0, "ok")


def _mutate(change):
    payload = sample_payload()
    change(payload)
    return pack(payload)


SEMANTIC_CASES = {
    "param arg out of range": (lambda p: setattr(p.plans[0].kernels[0].params[0], "arg", 4), "param 0: arg 4 out of range"),
    "stride dim out of range": (lambda p: setattr(p.plans[0].kernels[0].params[4], "dim", 4),
                                "param 4: dim 4 out of range for arg 0 of rank 4"),
    "pointer passed as int": (lambda p: setattr(p.plans[0].kernels[0].params[0], "type", P.Int32),
                              "TensorPointer must be passed as Pointer"),
    "stride passed as float": (lambda p: setattr(p.plans[0].kernels[0].params[4], "type", P.Float32),
                               "must be Int32 or Int64"),
    "unknown param kind": (lambda p: setattr(p.plans[0].kernels[0].params[0], "kind", 9), "unknown param kind 9"),
    "unknown param type": (lambda p: setattr(p.plans[0].kernels[0].params[0], "type", -3), "unknown param type -3"),
    "nan constant": (lambda p: setattr(p.plans[0].kernels[0].params[9], "f32Value", float("nan")), "not finite"),
    "grid with two dims": (lambda p: setattr(p.plans[0].kernels[0], "grid", p.plans[0].kernels[0].grid[:2]),
                           "grid has 2 dims, expected 3"),
    "grid divisor zero": (lambda p: setattr(p.plans[0].kernels[0].grid[0].factors[0], "divisor", 0), "divisor is 0"),
    "grid arg out of range": (lambda p: setattr(p.plans[0].kernels[0].grid[1].factors[0], "arg", 9),
                              "factor arg 9 out of range"),
    "grid dim out of range": (lambda p: setattr(p.plans[0].kernels[0].grid[1].factors[1], "dim", 7),
                              "factor dim 7 out of range"),
    "empty cubin image": (lambda p: setattr(p.plans[0].kernels[0].cubins[1], "image", u8(b"")), "empty image for sm_90"),
    "duplicate cubin arch": (lambda p: setattr(p.plans[0].kernels[0].cubins[1], "arch", 80), "duplicate arch sm_80"),
    "no image at all": (lambda p: (setattr(p.plans[0].kernels[0], "cubins", []), setattr(p.plans[0].kernels[0], "ptx", None)),
                        "no cubin and no PTX"),
    "zero warps": (lambda p: setattr(p.plans[0].kernels[0], "numWarps", 0), "num_warps 0 outside 1..32"),
    "too many warps": (lambda p: setattr(p.plans[0].kernels[0], "numWarps", 33), "num_warps 33"),
    "no plans": (lambda p: setattr(p, "plans", []), "payload has no launch plans"),
    "plan without kernels": (lambda p: setattr(p.plans[0], "kernels", []), "plan 0: no kernels"),
    "plan arch without cubin": (lambda p: setattr(p.plans[0], "archs", [89]),
                                "plan 0: kernel gqa_attention_fwd has no cubin for its arch sm_89"),
    "range arg out of range": (lambda p: setattr(p.plans[0], "when", [fb.SizeRangeT(arg=4, dim=2, min=1, max=2)]),
                               "plan 0: range arg 4 out of range"),
    "empty range": (lambda p: setattr(p.plans[0], "when", [fb.SizeRangeT(arg=0, dim=2, min=5, max=4)]),
                    "plan 0: range [5, 4] of arg 0 dim 2 is empty"),
    "grid multiplier zero": (lambda p: setattr(p.plans[0].kernels[0].grid[2], "multiplier", 0),
                             "grid dim 2: multiplier is 0"),
    "dynamic size without bound": (lambda p: setattr(p.inputs[0], "sizes", [1, 4, -1, 64]),
                                   "input 0: dynamic sizes need 4 max_sizes, got 0"),
    "max size of a static dim": (lambda p: (setattr(p.inputs[0], "sizes", [1, 4, -1, 64]),
                                            setattr(p.inputs[0], "maxSizes", [1, 5, 32, 64])),
                                 "input 0: max size 5 at dim 1 of size 4"),
    "dynamic output without size_from": (lambda p: (setattr(p.outputs[0], "sizes", [1, 4, -1, 64]),
                                                    setattr(p.outputs[0], "maxSizes", [1, 4, 16, 64])),
                                         "output 0: dynamic dim 2 has no size_from"),
    "size_from a static dim": (lambda p: setattr(p.outputs[0], "sizeFrom", [fb.DimSourceT(dim=1, arg=0, argDim=1)]),
                               "output 0: size_from names dim 1, which is not dynamic"),
    "size_from an output": (lambda p: (setattr(p.outputs[0], "sizes", [1, 4, -1, 64]),
                                       setattr(p.outputs[0], "maxSizes", [1, 4, 16, 64]),
                                       setattr(p.outputs[0], "sizeFrom", [fb.DimSourceT(dim=2, arg=3, argDim=2)])),
                            "output 0: size_from dim 2: arg 3 is not another input"),
    "size_from above the bound": (lambda p: (setattr(p.inputs[0], "sizes", [1, 4, -1, 64]),
                                             setattr(p.inputs[0], "maxSizes", [1, 4, 32, 64]),
                                             setattr(p.outputs[0], "sizes", [1, 4, -1, 64]),
                                             setattr(p.outputs[0], "maxSizes", [1, 4, 16, 64]),
                                             setattr(p.outputs[0], "sizeFrom", [fb.DimSourceT(dim=2, arg=0, argDim=2)])),
                                  "output 0: size_from dim 2: arg 0 dim 2 may exceed its max size"),
    "no outputs": (lambda p: setattr(p, "outputs", []), "payload has no outputs"),
    "missing name": (lambda p: setattr(p.plans[0].kernels[0], "name", ""), "missing entry-point name"),
    "bad dtype": (lambda p: setattr(p.inputs[1], "dtype", 9), "input 1: unknown dtype 9"),
    "negative size": (lambda p: setattr(p.outputs[0], "sizes", [1, -2, 3, 4]), "output 0: size -2 at dim 1"),
    "rank too high": (lambda p: setattr(p.inputs[0], "sizes", [1] * 9), "input 0: rank 9 exceeds 8"),
    "overflowing sizes": (lambda p: setattr(p.inputs[2], "sizes", [2**40, 2**40]), "overflows"),
    "scratch align not pow2": (lambda p: (setattr(p.plans[0].kernels[0], "globalScratchBytes", 64),
                                          setattr(p.plans[0].kernels[0], "globalScratchAlign", 24)),
                               "scratch alignment is not a power of two"),
}


def _add_workspace_param(p, workspace_bytes, offset, extent, divisibility=16, type_=None):
    p.workspaceBytes = workspace_bytes
    ws = param(K.Workspace, P.Pointer if type_ is None else type_, divisibility=divisibility)
    ws.workspaceOffset, ws.workspaceExtent = offset, extent
    p.plans[0].kernels[0].params.append(ws)


SEMANTIC_CASES.update({
    "workspace param without workspace": (lambda p: _add_workspace_param(p, 0, 0, 16),
                                          "workspace range [0, +16) outside the 0-byte workspace"),
    "workspace offset at the end": (lambda p: _add_workspace_param(p, 256, 256, 16),
                                    "workspace range [256, +16) outside the 256-byte workspace"),
    "workspace extent past the end": (lambda p: _add_workspace_param(p, 256, 128, 144),
                                      "workspace range [128, +144) outside the 256-byte workspace"),
    "workspace extent overflowing": (lambda p: _add_workspace_param(p, 256, 16, 2**64 - 8),
                                     "outside the 256-byte workspace"),
    "workspace extent zero": (lambda p: _add_workspace_param(p, 256, 0, 0), "outside the 256-byte workspace"),
    "workspace offset misaligned": (lambda p: _add_workspace_param(p, 256, 8, 16),
                                    "workspace offset 8 is not a multiple of 16, which the cubin assumes"),
    "workspace divisibility above the base alignment": (lambda p: _add_workspace_param(p, 4096, 0, 16, 512),
                                                        "workspace offset 0 is not a multiple of 512"),
    "workspace passed as int": (lambda p: _add_workspace_param(p, 256, 0, 16, type_=P.Int64),
                                "Workspace must be passed as Pointer"),
    "workspace too large": (lambda p: setattr(p, "workspaceBytes", 2**41), "workspace_bytes 2199023255552 too large"),
    "int32 constant passed as float": (lambda p: p.plans[0].kernels[0].params.append(param(K.Int32Constant, P.Float32)),
                                       "Int32Constant must be passed as Int32"),
    "int32 constant not divisible": (
        lambda p: p.plans[0].kernels[0].params.append(fb.KernelParamT(kind=K.Int32Constant, type=P.Int32, i32Value=24,
                                                             divisibility=16)),
        "Int32Constant 24 is not a multiple of 16"),
})


def test_workspace_params_and_int32_constants_are_accepted():
    payload = sample_payload()
    _add_workspace_param(payload, 4096 + 64, 4096, 64)
    _add_workspace_param(payload, 4096 + 64, 0, 4096)
    for value in (-(2**31), -5, 0, 2**31 - 1):
        payload.plans[0].kernels[0].params.append(fb.KernelParamT(kind=K.Int32Constant, type=P.Int32, i32Value=value))
    assert validate(load_library(), pack(payload)) == (0, "ok")


@pytest.mark.parametrize("case", sorted(SEMANTIC_CASES))
def test_verifiable_but_meaningless_payload_is_refused(case):
    change, reason = SEMANTIC_CASES[case]
    rc, message = validate(load_library(), _mutate(change))
    assert rc != 0, f"{case}: accepted"
    assert reason in message, message


def test_dynamic_sizes_with_bounds_pass_validation():
    payload = sample_payload()
    payload.inputs[0].sizes, payload.inputs[0].maxSizes = [1, 4, -1, 64], [1, 4, 16, 64]
    assert validate(load_library(), pack(payload)) == (0, "ok")


def test_truncations_and_byte_flips_never_crash(tmp_path):
    """Every proper prefix and 4000 byte-flipped copies through the parser and launch evaluation."""
    valid = pack(sample_payload())
    (tmp_path / "valid.bin").write_bytes(valid)
    flips = 4000
    result, stats = run_payload_fuzz(FUZZ_DRIVER, [tmp_path / "valid.bin"], truncations=len(valid), flips=flips)
    assert result.returncode == 0, f"fuzz driver failed (rc {result.returncode}): {result.stderr[-2000:]}"
    (counts,) = stats
    assert (counts["truncations"], counts["flips"]) == (len(valid), flips)
    # No proper prefix of a payload is a payload.
    assert counts["truncations_accepted"] == 0
    # Flips inside the fake images stay valid; most flips must not.
    assert 0 < counts["flips_accepted"] < flips
    assert counts["launches_evaluated"] > 0


# --------------------------------------------------------------------------
# arch selection (the logic init uses, exercised without a GPU)


@pytest.mark.parametrize(
    "archs, ptx_arch, cc, expect_rc, expect",
    [
        ((80, 90), 80, 90, 0, "gqa_attention_fwd: sm_90 cubin"),
        ((80, 90), 80, 80, 0, "gqa_attention_fwd: sm_80 cubin"),
        ((80, 90), 80, 86, 0, "gqa_attention_fwd: sm_80 cubin"),  # same major, lower minor
        ((80, 86, 90), 80, 89, 0, "gqa_attention_fwd: sm_86 cubin"),  # highest compatible minor
        ((80, 90), 80, 100, 0, "gqa_attention_fwd: PTX"),  # newer major: JIT
        ((80, 90), 80, 75, 1, "kernel gqa_attention_fwd: no cubin for sm_75 in this payload "
                              "(has sm_80, sm_90; PTX needs >= sm_80)"),
        ((80, 90), 0, 120, 1, "no cubin for sm_120 in this payload (has sm_80, sm_90; no PTX)"),
        ((86,), 0, 80, 1, "no cubin for sm_80 in this payload (has sm_86; no PTX)"),  # minor too high
        ((), 80, 90, 0, "gqa_attention_fwd: PTX"),
    ],
)
def test_image_selection_by_arch(archs, ptx_arch, cc, expect_rc, expect):
    data = pack(sample_payload(cubin_archs=archs, ptx_arch=ptx_arch))
    rc, message = select_images(load_library(), data, cc)
    assert rc == expect_rc, message
    if expect_rc == 0:
        assert message == expect
    else:
        assert expect in message


# --------------------------------------------------------------------------
# (5) the runner


def _runner() -> Path:
    if not RUNNER.is_file():
        pytest.fail(f"{RUNNER} not found: run `make build` first")
    return RUNNER


def test_runner_missing_model_exits_2(tmp_path):
    missing = tmp_path / "missing.pte"
    result = subprocess.run([str(_runner()), str(missing)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"error: model: cannot open {missing}: No such file or directory" in result.stderr


def test_runner_without_arguments_prints_usage_and_exits_2():
    result = subprocess.run([str(_runner())], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "usage: cuda_gqa_runner MODEL.pte" in result.stderr


def test_runner_rejects_bad_options():
    result = subprocess.run([str(_runner()), "m.pte", "--iterations", "ten"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "bad --iterations" in result.stderr


def test_runner_help_exits_0():
    result = subprocess.run([str(_runner()), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--expected FILE" in result.stdout


def test_runner_refuses_a_file_that_is_not_a_program(tmp_path):
    bogus = tmp_path / "bogus.pte"
    bogus.write_bytes(b"not a program" * 10)
    result = subprocess.run([str(_runner()), str(bogus)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "failed: executorch error 0x" in result.stderr


# --------------------------------------------------------------------------
# a real .pte through the runner: init reports its cause, never crashes

def run_runner(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(_runner()), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_runner_reports_why_init_failed(programs):
    x = programs / "x.bin"
    result = run_runner(programs / "good.pte", "--input", x, "--input", x)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "executing 'forward' failed: executorch error" in result.stderr
    if not _libcuda_loadable():
        assert "CudaGqaBackend: libcuda.so.1 not found" in result.stderr
    else:  # a GPU machine: the fake cubin cannot load, or there is no device
        assert "CudaGqaBackend: " in result.stderr


def test_init_refuses_other_payload_versions(programs):
    x = programs / "x.bin"
    result = run_runner(programs / "v2.pte", "--input", x, "--input", x)
    assert result.returncode == 2
    assert (f"CudaGqaBackend: payload schema version {PAYLOAD_VERSION + 1}, "
            f"this runtime reads versions 3 to {PAYLOAD_VERSION}") in result.stderr
    assert "0x30" in result.stderr  # Error::DelegateInvalidCompatibility


def test_runner_checks_input_files_against_the_program(programs):
    x = programs / "x.bin"
    result = run_runner(programs / "good.pte", "--input", x)
    assert result.returncode == 2
    assert "wrong number of --input files: 1 given, method 'forward' takes 2" in result.stderr
    result = run_runner(programs / "good.pte", "--input", x, "--input", programs / "wrong_size.bin")
    assert result.returncode == 2
    assert "wrong_size.bin has 768 bytes, input 1 needs 512" in result.stderr
    result = run_runner(programs / "good.pte", "--method", "nope", "--input", x, "--input", x)
    assert result.returncode == 2
    assert "no method 'nope'" in result.stderr


# --------------------------------------------------------------------------
# the execute path against a fake libcuda.so.1 that runs on the host

def test_device_status_with_a_driver(fake_driver_dir):
    result = subprocess.run(
        [sys.executable, "-c",
         "import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); m = ctypes.create_string_buffer(256); "
         "rc = lib.cuda_gqa_device_status(m, 256); print(rc, m.value.decode())", str(require_library())],
        capture_output=True, text=True, env=fake_env(fake_driver_dir), timeout=60)
    assert result.stdout.strip() == "0 Fake GPU, sm_90", result.stderr


def test_execute_marshals_tensors_params_and_grid(programs, fake_driver_dir, tmp_path):
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    y = np.full((2, 64), 0.5, np.float32)
    x.tofile(tmp_path / "x.bin")
    y.tofile(tmp_path / "y.bin")
    (x + y).tofile(tmp_path / "expected.bin")
    (x - y).tofile(tmp_path / "wrong.bin")
    common = [str(_runner()), str(programs / "good.pte"), "--input", str(tmp_path / "x.bin"),
              "--input", str(tmp_path / "y.bin"), "--warmup", "1", "--iterations", "4"]
    env = fake_env(fake_driver_dir)
    result = subprocess.run([*common, "--expected", str(tmp_path / "expected.bin"), "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "output 0: max_abs_err=0, 0 of 128 elements outside atol 0.02 + rtol 0.016 * |expected| PASS" \
        in result.stdout
    assert "execute: median" in result.stdout and "over 4 iterations" in result.stdout
    # The profiled pass reads the fake device clock (125 us per launch) through the events.
    assert "kernels: median 125.0 us, p90 125.0 us" in result.stdout, result.stdout
    overhead = re.search(r"host overhead: median (-?[0-9.]+) us", result.stdout)
    execute = re.search(r"execute: median ([0-9.]+) us", result.stdout)
    assert overhead and float(overhead.group(1)) == pytest.approx(float(execute.group(1)) - 125.0, abs=0.11)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "output_0.bin", np.float32).reshape(2, 64), x + y)
    # Both loads' delegates ran warmup + timed runs, then destroy released the context.
    assert result.stderr.count("fake: context released after 10 launches") == 2, result.stderr

    result = subprocess.run([*common, "--expected", str(tmp_path / "wrong.bin")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 1
    # Off by 1 everywhere, compared with expected x - y: within 0.02 + 0.016 * |x - y|
    # only where x - 0.5 >= 61.25, so x = 0..61 fail.
    assert "output 0: max_abs_err=1, 62 of 128 elements outside atol 0.02 + rtol 0.016 * |expected| FAIL" \
        in result.stdout


def test_dynamic_payload_executes_and_refuses_sizes_above_its_bounds(programs, fake_driver_dir, tmp_path):
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    x.tofile(tmp_path / "x.bin")
    (x + x).tofile(tmp_path / "expected.bin")
    env = fake_env(fake_driver_dir)
    # Rows dynamic up to 4: staged at their bound, 2 rows copied, launched and resized into.
    result = subprocess.run([str(_runner()), str(programs / "dynamic.pte"), "--input", str(tmp_path / "x.bin"),
                             "--input", str(tmp_path / "x.bin"), "--expected", str(tmp_path / "expected.bin"),
                             "--warmup", "0", "--iterations", "1"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "output 0: max_abs_err=0" in result.stdout and "PASS" in result.stdout
    # Rows dynamic up to 1: 2 rows are refused, naming the argument, dim and bound.
    result = subprocess.run([str(_runner()), str(programs / "dynamic_small.pte"), "--input",
                             str(tmp_path / "x.bin"), "--input", str(tmp_path / "x.bin"), "--iterations", "1"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CudaGqaBackend: input 0 has size 2 at dim 0, above its bound 1" in result.stderr


DYNAMIC_PROGRAM_SCRIPT = ADD_MODULES + """
class CudaGqaBackend(BackendDetails):
    @staticmethod
    def preprocess(edge_program, compile_specs):
        return PreprocessResult(processed_bytes=open(sys.argv[1], "rb").read())

rows = torch.export.Dim("rows", max=4)
inputs, shapes = (torch.ones(2, 64), torch.ones(2, 64)), ({0: rows}, {0: rows})
lowered = to_backend("CudaGqaBackend", to_edge(torch.export.export(Add(), inputs, dynamic_shapes=shapes))
                     .exported_program(), [])
program = to_edge(torch.export.export(Wrapper(lowered), inputs, dynamic_shapes=shapes)).to_executorch()
open(sys.argv[2], "wb").write(program.buffer)
"""


def test_a_dynamic_program_resizes_the_delegates_output_per_call(fake_driver_dir, tmp_path):
    """A program exported with dynamic rows (up to 4) around a dynamic payload: each call
    through ExecuTorch's Python runtime gets an output of its own inputs' rows."""
    from fake_programs import add_payload

    (tmp_path / "payload.bin").write_bytes(add_payload(max_rows=4))
    made = subprocess.run([sys.executable, "-c", DYNAMIC_PROGRAM_SCRIPT, str(tmp_path / "payload.bin"),
                           str(tmp_path / "dynamic.pte")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert made.returncode == 0, made.stderr[-3000:]
    run = textwrap.dedent(f"""
        import torch
        from cuda_gqa.runtime.program import load_method
        forward = load_method({str(tmp_path / "dynamic.pte")!r})
        for rows in (3, 1, 4):
            x = torch.arange(rows * 64, dtype=torch.float32).reshape(rows, 64)
            (out,) = forward.execute([x, x])
            assert out.shape == (rows, 64) and torch.equal(out, x + x), (rows, out.shape)
            print("rows", rows, "ok")
        try:
            forward.execute([torch.ones(5, 64), torch.ones(5, 64)])
        except Exception as e:
            print("5 rows refused:", type(e).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True,
                            env=fake_env(fake_driver_dir), timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert [line for line in result.stdout.splitlines() if line.startswith("rows")] == [
        "rows 3 ok", "rows 1 ok", "rows 4 ok"]
    assert "5 rows refused" in result.stdout


def test_run_bundle_runs_each_case_and_summarises(programs, fake_driver_dir, tmp_path):
    bundle = tmp_path / "bundle"
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    for name, expected, program in (("good", x + x, "good"), ("wrong", x - x, "good"), ("io", x + x, "device_io")):
        case = bundle / "cases" / name
        case.mkdir(parents=True)
        (case / "model.pte").symlink_to(programs / f"{program}.pte")
        if program == "device_io":
            (case / "runner_args").write_text("--inputs-on-device\n")
        x.tofile(case / "input_0.bin")
        x.tofile(case / "input_1.bin")
        expected.tofile(case / "expected_0.bin")
    (bundle / "cuda_gqa_runner").symlink_to(_runner())
    result = subprocess.run(["bash", str(ROOT / "runtime" / "runner" / "run_bundle.sh"), str(bundle),
                             "--iterations", "3"], capture_output=True, text=True, env=fake_env(fake_driver_dir),
                            timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "runner: 2 passed, 1 failed" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.startswith(("good ", "wrong ", "io "))}
    assert rows["io"][4] == "PASS", rows
    # The case's runner_args reached the runner: in 2 x (10 + 3) executes the inputs went to the
    # device once and nothing was staged (the runner's log is in run_bundle.sh's stdout).
    assert "context released after 26 launches, 0 staging copies, 3 synchronous copies" in result.stdout
    # case, execute, kernels (the fake driver's 125 us per launch), overhead, result
    assert rows["good"][2] == "125.0" and rows["good"][4] == "PASS", rows
    assert float(rows["good"][3]) == pytest.approx(float(rows["good"][1]) - 125.0, abs=0.11)
    assert rows["wrong"][4:] == ["FAIL", "(exit", "1)"], rows
    assert "over 3 iterations" in result.stdout  # the caller's --iterations wins

    # RUNNER_WRAPPER runs each case under a tool (compute-sanitizer on the GPU machine).
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text('#!/bin/sh\necho "wrapped: $(basename "$1")" >&2\nexec "$@"\n')
    wrapper.chmod(0o755)
    wrapped = subprocess.run(["bash", str(ROOT / "runtime" / "runner" / "run_bundle.sh"), str(bundle),
                              "--warmup", "0", "--iterations", "1"], capture_output=True, text=True,
                             env={**fake_env(fake_driver_dir), "RUNNER_WRAPPER": f"{wrapper} "}, timeout=120)
    assert wrapped.stdout.count("wrapped: cuda_gqa_runner") == 3, wrapped.stdout


# --------------------------------------------------------------------------
# device-aware memory planning: the CUDA DeviceAllocator the library registers


def test_target_device_compile_spec():
    from executorch.exir.backend.compile_spec_schema import CompileSpec

    from cuda_gqa.backends.compile_specs import make_compile_specs, parse_compile_specs

    specs = make_compile_specs(archs=[90], target_device="cuda:1")
    assert CompileSpec("target_device", b"cuda:1") in specs  # the key PropagateDevicePass reads
    assert parse_compile_specs(specs).target_device == "cuda:1"
    assert parse_compile_specs(make_compile_specs(archs=[90])).target_device is None
    with pytest.raises(ValueError, match="target_device must be 'cuda' or 'cuda:N', got 'gpu0'"):
        make_compile_specs(target_device="gpu0")


def test_device_planned_program_runs_with_delegate_tensors_in_device_memory(programs, fake_driver_dir, tmp_path):
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    x.tofile(tmp_path / "x.bin")
    (x + x).tofile(tmp_path / "expected.bin")
    args = ["--input", tmp_path / "x.bin", "--input", tmp_path / "x.bin", "--expected", tmp_path / "expected.bin",
            "--warmup", "0", "--iterations", "2"]
    env = fake_env(fake_driver_dir)
    device = subprocess.run([str(_runner()), str(programs / "device.pte"), *map(str, args)], capture_output=True,
                            text=True, env=env, timeout=120)
    assert device.returncode == 0, device.stdout + device.stderr
    assert "PASS" in device.stdout
    # 4 executes (2 timed, 2 profiled): the delegate staged nothing; the program's et_copy
    # kernels copied both inputs to the device through the allocator (8), and the runner
    # read the device-resident output back through it once (1).
    assert "context released after 4 launches, 0 staging copies, 9 synchronous copies" in device.stderr
    host = subprocess.run([str(_runner()), str(programs / "good.pte"), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert host.returncode == 0, host.stdout + host.stderr
    # The same delegate on host memory stages two inputs and one output per execute.
    assert "context released after 4 launches, 12 staging copies, 0 synchronous copies" in host.stderr


def test_device_planned_program_without_a_usable_driver_fails_cleanly(programs, old_driver_dir):
    x = programs / "x.bin"
    result = subprocess.run([str(_runner()), str(programs / "device.pte"), "--input", str(x), "--input", str(x)],
                            capture_output=True, text=True, env=fake_env(old_driver_dir), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CudaGqaBackend: device allocator: cuda:0: libcuda.so.1 is too old: it lacks" in result.stderr


def test_device_io_program_keeps_method_inputs_and_outputs_on_the_device(programs, fake_driver_dir, tmp_path):
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    x.tofile(tmp_path / "x.bin")
    (x + x).tofile(tmp_path / "expected.bin")
    result = subprocess.run([str(_runner()), str(programs / "device_io.pte"), "--input", str(tmp_path / "x.bin"),
                             "--input", str(tmp_path / "x.bin"), "--expected", str(tmp_path / "expected.bin"),
                             "--warmup", "1", "--iterations", "3", "--inputs-on-device"],
                            capture_output=True, text=True, env=fake_env(fake_driver_dir), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    # 8 executes, no copies in any: the inputs went to the device once (2) and the
    # device-resident output came back once for the comparison (1).
    assert "context released after 8 launches, 0 staging copies, 3 synchronous copies" in result.stderr


def test_inputs_on_device_without_a_usable_driver_fail_cleanly(programs, old_driver_dir):
    x = programs / "x.bin"
    result = subprocess.run([str(_runner()), str(programs / "device_io.pte"), "--input", str(x), "--input", str(x),
                             "--inputs-on-device"], capture_output=True, text=True, env=fake_env(old_driver_dir),
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: device memory for input 0: executorch error 0x10" in result.stderr
