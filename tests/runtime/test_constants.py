"""Payload constants (Payload.constants: a model's weights) in the C++ backend's init, on the CPU
with the fake libcuda.so.1: uploaded once per program from its named data, shared by its
delegates, freed with the last of them; no host buffer kept; refusals name the constant.

Delegates are made through the C API's programs (cuda_gqa_program_create: named data a
program's delegates share, as ExecuTorch programs give theirs)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cuda_gqa.backends.payload_constants import constant_param
from cuda_gqa.backends.serialization import deserialize_payload
from cuda_gqa.backends.serialization import payload_generated as fb

from fake_programs import ROOT, K, P, add_payload, fake_env, pack, param

INVALID_PROGRAM = 0x23  # executorch Error::InvalidProgram
WEIGHT = np.arange(128, dtype=np.float32).reshape(2, 64)


def constant_payload(sizes=(2, 64), version=None) -> bytes:
    """out = x + w, w a float32 constant named "w" of `sizes`: the fake driver's add_f32 adds
    its first two pointers into the third (x, the constant, out)."""
    payload = deserialize_payload(add_payload())
    payload.constants = [fb.ConstantSpecT(name="w", dtype=fb.DType.Float32, sizes=list(sizes))]
    payload.plans[0].kernels[0].params = [param(K.TensorPointer, P.Pointer, arg=0, divisibility=16),
                                          constant_param(0),
                                          param(K.TensorPointer, P.Pointer, arg=2, divisibility=16),
                                          param(K.TensorSize, P.Int32, arg=0, dim=1)]
    return pack(payload, version=version)


# Helpers of the scripts below: the fake driver's allocation counts, one execute of out = x + w.
PRELUDE = """
import ctypes, sys
import numpy as np
from cuda_gqa.runtime import cpp_delegate as cd

def allocations():
    total, live = ctypes.c_longlong(0), ctypes.c_longlong(0)
    ctypes.CDLL("libcuda.so.1").fake_allocations(ctypes.byref(total), ctypes.byref(live))
    return total.value, live.value

W = np.arange(128, dtype=np.float32).reshape(2, 64)

def adds_the_weight(handle):
    x, out = np.ones((2, 64), np.float32), np.zeros((2, 64), np.float32)
    assert cd.execute(handle, [cd.host_tensor(a) for a in (x, x, out)]) == 0
    return bool(np.array_equal(out, x + W))
"""

SHARING_SCRIPT = PRELUDE + """
payload = open(sys.argv[1], "rb").read()
program = cd.create_program({"w": W.tobytes()})
start = allocations()
rc, prefill = cd.init(payload, program)
after_prefill = allocations()
rc2, decode = cd.init(payload, program)
after_decode = allocations()
print("init", rc, rc2)
# prefill's init allocates what decode's does, plus the constant's one device copy.
print("allocations", after_prefill[0] - start[0] - (after_decode[0] - after_prefill[0]))
print("live constants", cd.live_constant_count())
print("named data taken, held", *cd.program_buffer_counts(program))
print("adds the weight", adds_the_weight(prefill), adds_the_weight(decode), adds_the_weight(prefill))
other = cd.create_program({"w": (2 * W).tobytes()})
rc, elsewhere = cd.init(payload, other)
print("other program", rc, cd.live_constant_count())
cd.destroy(elsewhere)
cd.destroy(prefill)
print("after prefill's destroy", cd.live_constant_count())
cd.destroy(decode)
print("after decode's destroy", cd.live_constant_count(), allocations()[1] - start[1])
cd.destroy_program(other)
cd.destroy_program(program)
"""


def run_script(script: str, *argv, fake_driver_dir) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, argv)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env=fake_env(fake_driver_dir))
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    return run


def test_delegates_of_one_program_upload_a_constant_once_and_the_last_frees_it(fake_driver_dir, tmp_path):
    (tmp_path / "payload.bin").write_bytes(constant_payload())
    run = run_script(SHARING_SCRIPT, tmp_path / "payload.bin", fake_driver_dir=fake_driver_dir)
    # One device copy for both delegates, its bytes read once and freed at once; the kernels
    # read it (out = x + w) from either delegate; another program uploads its own; the
    # copy outlives its first user and goes with the last, leaving no device memory behind.
    assert run.stdout.splitlines() == [
        "init 0 0", "allocations 1", "live constants 1", "named data taken, held 1 0",
        "adds the weight True True True", "other program 0 2", "after prefill's destroy 1",
        "after decode's destroy 0 0"], run.stdout + run.stderr[-2000:]


REFUSAL_SCRIPT = PRELUDE + """
payload = open(sys.argv[1], "rb").read()
named_data = {"none": None, "missing": {"v": W.tobytes()}, "short": {"w": W.tobytes()[:-4]}}[sys.argv[2]]
program = cd.create_program(named_data) if named_data is not None else None
start = allocations()
rc, handle = cd.init(payload, program)
print("init", rc, handle)
print("live constants", cd.live_constant_count(), "live allocations", allocations()[1] - start[1])
if program is not None:
    print("named data held", cd.program_buffer_counts(program)[1])
    cd.destroy_program(program)
"""

REFUSALS = {
    "none": "constant 'w': its bytes cannot be read: the program has no named data",
    "missing": "constant 'w': missing from the program's named data (executorch error 0x20)",
    "short": "constant 'w': its named data holds 508 bytes, float32 of its sizes needs 512",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_init_refuses_a_constant_it_cannot_upload_naming_it(case, fake_driver_dir, tmp_path):
    (tmp_path / "payload.bin").write_bytes(constant_payload())
    run = run_script(REFUSAL_SCRIPT, tmp_path / "payload.bin", case, fake_driver_dir=fake_driver_dir)
    lines = run.stdout.splitlines()
    # Refused as an invalid program, with nothing left allocated and no host buffer held.
    assert lines[:2] == [f"init {INVALID_PROGRAM} None", "live constants 0 live allocations 0"], run.stdout
    assert lines[2:] == ([] if case == "none" else ["named data held 0"])
    assert f"CudaGqaBackend: {REFUSALS[case]}" in run.stderr, run.stderr[-2000:]


MISMATCH_SCRIPT = PRELUDE + """
program = cd.create_program({"w": W.tobytes()})
rc, first = cd.init(open(sys.argv[1], "rb").read(), program)
rc2, second = cd.init(open(sys.argv[2], "rb").read(), program)
print("init", rc, rc2, "live constants", cd.live_constant_count())
cd.destroy(first)
print("live constants", cd.live_constant_count())
cd.destroy_program(program)
"""


def test_delegates_declaring_a_constant_otherwise_are_refused_naming_both(fake_driver_dir, tmp_path):
    (tmp_path / "first.bin").write_bytes(constant_payload())
    (tmp_path / "second.bin").write_bytes(constant_payload(sizes=(4, 32)))
    run = run_script(MISMATCH_SCRIPT, tmp_path / "first.bin", tmp_path / "second.bin",
                     fake_driver_dir=fake_driver_dir)
    assert run.stdout.splitlines() == [f"init 0 {INVALID_PROGRAM} live constants 1", "live constants 0"]
    assert ("constant 'w' is float32[4, 32] here but float32[2, 64] in another delegate of this program"
            in run.stderr), run.stderr[-2000:]


VERSION_3_SCRIPT = PRELUDE + """
rc, handle = cd.init(open(sys.argv[1], "rb").read())
x, y, out = np.ones((2, 64), np.float32), np.full((2, 64), 2.0, np.float32), np.zeros((2, 64), np.float32)
print("init", rc, "execute", cd.execute(handle, [cd.host_tensor(a) for a in (x, y, out)]), out[0, 0], out[1, 63])
cd.destroy(handle)
"""


def test_a_version_3_payload_still_initialises_and_runs(fake_driver_dir, tmp_path):
    (tmp_path / "v3.bin").write_bytes(add_payload(version=3))
    run = run_script(VERSION_3_SCRIPT, tmp_path / "v3.bin", fake_driver_dir=fake_driver_dir)
    assert run.stdout.splitlines() == ["init 0 execute 0 3.0 3.0"], run.stdout + run.stderr[-2000:]


def test_truncations_and_byte_flips_of_a_constants_payload_never_crash(tmp_path):
    """The fuzz driver binds constants as init would and evaluates the launches reading them."""
    from fake_programs import LIBRARY
    from payload_fuzz import run_payload_fuzz

    data = constant_payload()
    (tmp_path / "constants.bin").write_bytes(data)
    driver = LIBRARY.parent / "cuda_gqa_payload_fuzz"
    result, stats = run_payload_fuzz(driver, [tmp_path / "constants.bin"], truncations=len(data), flips=2000)
    assert result.returncode == 0, f"fuzz driver failed (rc {result.returncode}): {result.stderr[-2000:]}"
    (counts,) = stats
    assert counts["truncations_accepted"] == 0
    assert 0 < counts["flips_accepted"] < 2000
    assert counts["launches_evaluated"] > 0


def test_constant_buffers_upload_each_constant_once_and_check_its_bytes():
    """CubinLauncher's constants (its ConstantBuffers), on a CPU device: the same code puts them on a GPU."""
    import torch

    from cuda_gqa.runtime.cubin_launcher import ConstantBuffers
    from cuda_gqa.runtime.launch_plan import LaunchError

    buffers = ConstantBuffers({"w": WEIGHT.tobytes(), "short": bytes(4)})
    w = buffers.get("w", torch.float32, (2, 64), "cpu")
    assert torch.equal(w, torch.from_numpy(WEIGHT))
    assert buffers.get("w", torch.float32, [2, 64], "cpu") is w  # launchers sharing the buffers share the copy
    with pytest.raises(LaunchError, match=r"constant 'w' is torch.float32 \[4, 32\] on cpu here but "
                                          r"torch.float32 \[2, 64\] on cpu in another launcher"):
        buffers.get("w", torch.float32, (4, 32), "cpu")
    with pytest.raises(LaunchError, match="constant 'v': missing from the program's named data"):
        buffers.get("v", torch.float32, (2,), "cpu")
    with pytest.raises(LaunchError, match="constant 'short': its named data holds 4 bytes, float32 of its sizes "
                                          "needs 8"):
        buffers.get("short", torch.float32, (2,), "cpu")


# Programs of two methods ("prefill", "decode"), each one delegate running the payload file
# argv[1] (out = x + w), whose preprocess stores constant "w" (argv[2], raw bytes) in the
# program's named data: in the .pte (argv[3]), and in an external weights.ptd beside the
# second .pte (argv[4]).
EXPORT_SCRIPT = """
import sys, torch
from pathlib import Path
from executorch.exir import to_edge
from executorch.exir.backend.backend_api import to_backend
from executorch.exir.backend.backend_details import BackendDetails, PreprocessResult
from executorch.exir._serialize._named_data_store import NamedDataStore

class Add(torch.nn.Module):
    def forward(self, x, y):
        return x + y

class Wrapper(torch.nn.Module):
    def __init__(self, lowered):
        super().__init__()
        self.lowered = lowered

    def forward(self, x, y):
        return self.lowered(x, y)

class CudaGqaBackend(BackendDetails):
    external_tag = None

    @staticmethod
    def preprocess(edge_program, compile_specs):
        store = NamedDataStore()
        store.add_named_data("w", open(sys.argv[2], "rb").read(), alignment=64,
                             external_tag=CudaGqaBackend.external_tag)
        return PreprocessResult(processed_bytes=open(sys.argv[1], "rb").read(),
                                data_store_output=store.get_named_data_store_output())

inputs = (torch.ones(2, 64), torch.ones(2, 64))
for tag, pte in ((None, sys.argv[3]), ("weights", sys.argv[4])):
    CudaGqaBackend.external_tag = tag
    # One lowering, two methods: each method still gets a delegate (an init) of its own.
    lowered = to_backend("CudaGqaBackend", to_edge(torch.export.export(Add(), inputs)).exported_program(), [])
    method = torch.export.export(Wrapper(lowered), inputs)
    program = to_edge({"prefill": method, "decode": method}).to_executorch()
    open(pte, "wb").write(program.buffer)
    if tag is not None:
        program.write_tensor_data_to_file(str(Path(pte).parent))
"""

RUN_SCRIPT = """
import sys, numpy as np, torch
from executorch.runtime import Runtime
from cuda_gqa.runtime import cpp_delegate, load_backend_library
from cuda_gqa.runtime.pte_delegates import cuda_gqa_delegates
load_backend_library()
x = torch.ones(2, 64)
w = torch.from_numpy(np.fromfile(sys.argv[1], dtype=np.float32).reshape(2, 64))
for pte, ptd in ((sys.argv[2], None), (sys.argv[3], sys.argv[4])):
    program = Runtime.get().load_program(pte, data_path=ptd)
    prefill, decode = program.load_method("prefill"), program.load_method("decode")
    right = [bool(torch.equal(m.execute([x, x])[0], x + w)) for m in (prefill, decode, prefill)]
    print("ptd" if ptd else "pte", "adds the weight", *right, "live constants", cpp_delegate.live_constant_count())
    payloads, named_data = cuda_gqa_delegates(open(pte, "rb").read(), open(ptd, "rb").read() if ptd else None)
    print("named data", named_data["w"] == w.numpy().tobytes(), "payloads", len(payloads))
    del prefill, decode, program
    print("after unloading", cpp_delegate.live_constant_count())
"""


def test_programs_methods_share_one_upload_of_a_constant_in_the_pte_or_an_external_ptd(fake_driver_dir, tmp_path):
    (tmp_path / "payload.bin").write_bytes(constant_payload())
    WEIGHT.tofile(tmp_path / "w.bin")
    pte, ptd_pte = tmp_path / "in_pte.pte", tmp_path / "in_ptd" / "program.pte"
    ptd_pte.parent.mkdir()
    made = subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, str(tmp_path / "payload.bin"), str(tmp_path / "w.bin"),
                           str(pte), str(ptd_pte)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert made.returncode == 0, made.stderr[-3000:]
    assert (ptd_pte.parent / "weights.ptd").is_file()
    run = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(tmp_path / "w.bin"), str(pte), str(ptd_pte),
                          str(ptd_pte.parent / "weights.ptd")], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env=fake_env(fake_driver_dir))
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    # Both methods read the one device copy (live constants 1), from the .pte's named data
    # or the .ptd's (where each method merges the external map with the program's own).
    # cuda_gqa_delegates (for CubinLauncher) finds both methods' payloads and the bytes in either file.
    assert run.stdout.splitlines() == [
        "pte adds the weight True True True live constants 1", "named data True payloads 2", "after unloading 0",
        "ptd adds the weight True True True live constants 1", "named data True payloads 2", "after unloading 0"], \
        run.stdout + run.stderr[-2000:]
