"""Compile specs of CudaGqaBackend: what the user may ask of the AOT stage.

Specs travel from the partitioner to preprocess as (key, bytes) pairs, the
ExecuTorch way; this module is the one place that writes and reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from executorch.exir.backend.compile_spec_schema import CompileSpec


# Architectures Triton 3.x compiles for that the kernels are written for:
# A100, A10/RTX 30xx, Jetson Orin, L4/L40/RTX 40xx, H100/H200.
SUPPORTED_ARCHS = (80, 86, 87, 89, 90)
# Every supported arch by default: a .pte runs on whichever of these GPUs it
# lands on, and on newer ones through the PTX fallback.
DEFAULT_ARCHS = SUPPORTED_ARCHS
_KNOWN_KEYS = ("archs", "ptx", "target_device")


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
    text = str(arch).strip().lower().removeprefix("sm_")
    if isinstance(arch, bool) or not text.isdigit() or int(text) not in SUPPORTED_ARCHS:
        raise ValueError(
            f"unsupported target arch {arch!r}: choose from "
            + ", ".join(f"sm_{a}" for a in SUPPORTED_ARCHS)
        )
    return int(text)


def _parse_archs(archs: Iterable[int | str]) -> tuple[int, ...]:
    parsed = tuple(sorted({_parse_arch(a) for a in archs}))
    if not parsed:
        raise ValueError("at least one target arch is needed")
    return parsed


def _parse_target_device(device: str) -> str:
    index = device.removeprefix("cuda:")
    if not device.startswith("cuda:") or not index.isdigit():
        raise ValueError(f"target_device must be 'cuda:N', got {device!r}")
    return f"cuda:{int(index)}"


def make_compile_specs(archs: Iterable[int | str] = DEFAULT_ARCHS, ptx: bool = True,
                       target_device: str | None = None) -> list[CompileSpec]:
    """Compile specs for CudaGqaPartitioner; archs as 90 or "sm_90"; target_device as "cuda:0"."""
    if isinstance(archs, (str, int)):
        raise ValueError(f"archs must be a list of archs, e.g. ['sm_80', 'sm_90'], got {archs!r}")
    if not isinstance(ptx, bool):
        raise ValueError(f"ptx must be True or False, got {ptx!r}")
    specs = [
        CompileSpec("archs", ",".join(map(str, _parse_archs(archs))).encode()),
        CompileSpec("ptx", b"1" if ptx else b"0"),
    ]
    if target_device is not None:
        # The key ExecuTorch's PropagateDevicePass reads.
        specs.append(CompileSpec("target_device", _parse_target_device(target_device).encode()))
    return specs


def parse_compile_specs(specs: Sequence[CompileSpec]) -> CudaGqaOptions:
    """Read compile specs back; unknown or repeated keys and bad values are refused."""
    values = {}
    for spec in specs:
        if spec.key not in _KNOWN_KEYS:
            raise ValueError(f"unknown CudaGqaBackend compile spec {spec.key!r} (known: {', '.join(_KNOWN_KEYS)})")
        if spec.key in values:
            raise ValueError(f"CudaGqaBackend compile spec {spec.key!r} given twice")
        try:
            values[spec.key] = bytes(spec.value).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"CudaGqaBackend compile spec {spec.key!r} is not ASCII text: "
                             f"{bytes(spec.value)[:32]!r}") from None
    options = {}
    if "archs" in values:
        options["archs"] = _parse_archs(a for a in values["archs"].split(",") if a.strip())
    if "ptx" in values:
        if values["ptx"] not in ("0", "1"):
            raise ValueError(f"compile spec ptx must be 0 or 1, got {values['ptx']!r}")
        options["ptx"] = values["ptx"] == "1"
    if "target_device" in values:
        options["target_device"] = _parse_target_device(values["target_device"])
    return CudaGqaOptions(**options)
