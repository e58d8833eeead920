"""Compile specs of CudaGqaBackend: what the user may ask of the AOT stage.

Specs travel from the partitioner to preprocess as (key, bytes) pairs, the
ExecuTorch way; this module is the one place that writes and reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from executorch.exir.backend.compile_spec_schema import CompileSpec


# Architectures Triton 3.x compiles for that the kernels are written for.
SUPPORTED_ARCHS = (80, 86, 87, 89, 90)
DEFAULT_ARCHS = (80, 90)


@dataclass(frozen=True)
class CudaGqaOptions:
    archs: tuple[int, ...] = DEFAULT_ARCHS
    # Also ship PTX of the lowest arch, JIT-compiled by the driver on GPUs
    # newer than every cubin.
    ptx: bool = True
    # "cuda:N": ExecuTorch's device-aware memory planning (PropagateDevicePass)
    # plans the delegate's inputs and outputs in that GPU's memory, allocated
    # by the runtime's CUDA DeviceAllocator. None: host memory, staged by the delegate.
    target_device: str | None = None


def _parse_arch(arch: int | str) -> int:
    text = str(arch).lower().removeprefix("sm_")
    if not text.isdigit() or int(text) not in SUPPORTED_ARCHS:
        raise ValueError(
            f"unsupported target arch {arch!r}: choose from "
            + ", ".join(f"sm_{a}" for a in SUPPORTED_ARCHS)
        )
    return int(text)


def _parse_target_device(device: str) -> str:
    index = device.removeprefix("cuda:")
    if not device.startswith("cuda:") or not index.isdigit():
        raise ValueError(f"target_device must be 'cuda:N', got {device!r}")
    return f"cuda:{int(index)}"


def make_compile_specs(archs: Iterable[int | str] = DEFAULT_ARCHS, ptx: bool = True,
                       target_device: str | None = None) -> list[CompileSpec]:
    """Compile specs for CudaGqaPartitioner; archs as 90 or "sm_90"; target_device as "cuda:0"."""
    parsed = sorted({_parse_arch(a) for a in archs})
    if not parsed:
        raise ValueError("at least one target arch is needed")
    specs = [
        CompileSpec("archs", ",".join(map(str, parsed)).encode()),
        CompileSpec("ptx", b"1" if ptx else b"0"),
    ]
    if target_device is not None:
        # The key ExecuTorch's PropagateDevicePass reads.
        specs.append(CompileSpec("target_device", _parse_target_device(target_device).encode()))
    return specs


def parse_compile_specs(specs: Sequence[CompileSpec]) -> CudaGqaOptions:
    """Read compile specs back; unknown keys and bad values are refused."""
    values = {}
    for spec in specs:
        if spec.key not in ("archs", "ptx", "target_device"):
            raise ValueError(f"unknown CudaGqaBackend compile spec {spec.key!r} (known: archs, ptx, target_device)")
        values[spec.key] = bytes(spec.value).decode()
    options = {}
    if "archs" in values:
        options["archs"] = tuple(sorted({_parse_arch(a) for a in values["archs"].split(",")}))
    if "ptx" in values:
        if values["ptx"] not in ("0", "1"):
            raise ValueError(f"compile spec ptx must be 0 or 1, got {values['ptx']!r}")
        options["ptx"] = values["ptx"] == "1"
    if "target_device" in values:
        options["target_device"] = _parse_target_device(values["target_device"])
    return CudaGqaOptions(**options)
