"""Kernel images kept in the program's named data: preprocess stores each once under its content
hash, both runtimes resolve the keys (the C++ backend through ExecuTorch's named data map at init,
checked here end to end on a fake driver), and a missing key is refused naming it."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from cuda_gqa.backends.named_images import move_images_to_named_data
from cuda_gqa.backends.serialization import deserialize_payload, serialize_payload
from cuda_gqa.runtime.launch_plan import LaunchError, LaunchPlan

from fake_programs import ADD_PROGRAM_SCRIPT, ROOT, add_payload, fake_env, sample_payload, u8
from test_cpp_backend import _runner, load_library, validate


def keyed(payload_bytes: bytes):
    """The payload with its images moved into a fresh store, and the store's key -> bytes."""
    # Imported here: the GPU machine collects this folder and has no executorch.
    from executorch.exir._serialize._named_data_store import NamedDataStore

    payload = deserialize_payload(payload_bytes)
    store = NamedDataStore()
    move_images_to_named_data(payload, store)
    out = store.get_named_data_store_output()
    return payload, {key: bytes(out.buffers[e.buffer_index]) for key, e in out.pte_data.items()}, out


def test_images_move_into_named_data_under_their_content_hash():
    payload = sample_payload(cubin_archs=(80, 90))
    payload.plans[0].kernels.append(deserialize_payload(serialize_payload(sample_payload(cubin_archs=(90,)))).plans[0].kernels[0])
    moved, named, out = keyed(serialize_payload(payload))
    images = {b"\x7fELF" + bytes([a]) * 64 for a in (80, 90)} | {b".version 8.7\n.target sm_80\n"}
    assert set(named.values()) == images
    assert set(named) == {"cuda_gqa/" + hashlib.sha256(i).hexdigest() for i in images}
    assert len(out.buffers) == 3  # the sm_90 cubin and the PTX both kernels share are stored once
    for kernel in moved.plans[0].kernels:
        assert kernel.ptx is None and named[kernel.ptxKey] == b".version 8.7\n.target sm_80\n"
        for cubin in kernel.cubins:
            assert cubin.image is None and named[cubin.imageKey][4] == cubin.arch
    data = serialize_payload(moved)
    assert b"\x7fELF" not in data and b".version" not in data


def test_python_launch_plan_resolves_keys_and_names_a_missing_one():
    payload, named, _ = keyed(serialize_payload(sample_payload()))
    data = serialize_payload(payload)
    assert LaunchPlan(data, named_data=named).select_image(0, 0, 90).image == b"\x7fELF" + bytes([90]) * 64
    assert LaunchPlan(data, named_data=named).select_image(0, 0, 120).image.startswith(b".version")
    key = payload.plans[0].kernels[0].cubins[1].imageKey
    with pytest.raises(LaunchError, match=f"kernel gqa_attention_fwd: its sm_90 cubin, named data '{key}', "
                                          "is missing from the program"):
        LaunchPlan(data, named_data={k: v for k, v in named.items() if k != key}).select_image(0, 0, 90)
    with pytest.raises(LaunchError, match="cannot be read: no named data was given"):
        LaunchPlan(data).select_image(0, 0, 80)


def test_an_image_both_inline_and_named_is_refused_alike_in_python_and_cpp():
    payload = sample_payload()
    payload.plans[0].kernels[0].cubins[0].imageKey = "cuda_gqa/" + "0" * 64
    data = serialize_payload(payload)
    message = "plan 0 kernel 0 (gqa_attention_fwd) cubin 0: has both inline bytes and a named data key"
    assert validate(load_library(), data) == (1, message)
    with pytest.raises(LaunchError, match=r"kernel 0 \(gqa_attention_fwd\) cubin 0: has both"):
        LaunchPlan(data)


def test_cpp_accepts_payloads_with_named_images():
    payload, _, _ = keyed(serialize_payload(sample_payload()))
    assert validate(load_library(), serialize_payload(payload)) == (0, "ok")


MAKE_PTE_SCRIPT = ADD_PROGRAM_SCRIPT + """
from executorch.exir._serialize._named_data_store import NamedDataStore
from cuda_gqa.backends.named_images import move_images_to_named_data
from cuda_gqa.backends.serialization import deserialize_payload, serialize_payload

# Stands in for the real preprocess (the only BackendDetails named
# CudaGqaBackend here): the given payload, its images in named data.
class CudaGqaBackend(BackendDetails):
    payload, drop_sm90 = b"", False

    @staticmethod
    def preprocess(edge_program, compile_specs):
        payload = deserialize_payload(CudaGqaBackend.payload)
        store = NamedDataStore()
        move_images_to_named_data(payload, store)
        out = store.get_named_data_store_output()
        if CudaGqaBackend.drop_sm90:
            (sm90,) = [c.imageKey for c in payload.plans[0].kernels[0].cubins if c.arch == 90]
            del out.pte_data[sm90]
        return PreprocessResult(processed_bytes=serialize_payload(payload), data_store_output=out)

CudaGqaBackend.payload = open(sys.argv[1], "rb").read()
for drop, pte_path in ((False, sys.argv[2]), (True, sys.argv[3])):
    CudaGqaBackend.drop_sm90 = drop
    write_add_program(pte_path)
"""


@pytest.fixture(scope="module")
def named_programs(tmp_path_factory):
    """x + y programs whose payload keeps its images in named data: all there, or the sm_90 cubin missing."""
    folder = tmp_path_factory.mktemp("named")
    (folder / "add.bin").write_bytes(add_payload())
    result = subprocess.run([sys.executable, "-c", MAKE_PTE_SCRIPT, str(folder / "add.bin"), str(folder / "good.pte"),
                             str(folder / "missing.pte")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_cpp_backend_loads_the_image_from_named_data(named_programs, fake_driver_dir, tmp_path):
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    x.tofile(tmp_path / "x.bin")
    (x + x).tofile(tmp_path / "expected.bin")
    result = subprocess.run([str(_runner()), str(named_programs / "good.pte"), "--input", str(tmp_path / "x.bin"),
                             "--input", str(tmp_path / "x.bin"), "--expected", str(tmp_path / "expected.bin")],
                            capture_output=True, text=True, env=fake_env(fake_driver_dir), timeout=120)
    # The run passing on the sm_90 cubin means init fetched that image by key from the program.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    assert "fake: module loaded from a cubin for sm_90" in result.stderr


def test_cpp_backend_refuses_a_missing_key_naming_it(named_programs, fake_driver_dir, tmp_path):
    np.ones((2, 64), np.float32).tofile(tmp_path / "x.bin")
    payload = deserialize_payload(add_payload())
    (sm90,) = [c for c in payload.plans[0].kernels[0].cubins if c.arch == 90]
    key = "cuda_gqa/" + hashlib.sha256(np.asarray(sm90.image, np.uint8).tobytes()).hexdigest()
    result = subprocess.run([str(_runner()), str(named_programs / "missing.pte"), "--input", str(tmp_path / "x.bin"),
                             "--input", str(tmp_path / "x.bin")],
                            capture_output=True, text=True, env=fake_env(fake_driver_dir), timeout=120)
    assert result.returncode == 2
    assert (f"CudaGqaBackend: kernel add_f32: its sm_90 cubin, named data '{key}', is missing from the program"
            in result.stderr), result.stderr
