"""Compile specs of CudaGqaBackend: what the user may ask of the AOT stage.

Specs travel from the partitioner to preprocess as (key, bytes) pairs, the
ExecuTorch way; this module is the one place that writes and reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from executorch.exir.backend.compile_spec_schema import CompileSpec

from .limits import SUPPORTED_DTYPES


# Architectures Triton 3.x compiles for that the kernels are written for:
# A100, A10/RTX 30xx, Jetson Orin, L4/L40/RTX 40xx, H100/H200.
SUPPORTED_ARCHS = (80, 86, 87, 89, 90)
# Every supported arch by default: a .pte runs on whichever of these GPUs it
# lands on, and on newer ones through the PTX fallback.
DEFAULT_ARCHS = SUPPORTED_ARCHS
_KNOWN_KEYS = ("archs", "ptx", "target_device", "dtypes", "max_seq_len", "generic_plans")
_DTYPE_NAMES = {str(d).removeprefix("torch."): d for d in SUPPORTED_DTYPES}


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
    # Delegate only attention in these dtypes (the rest stays on the CPU).
    dtypes: tuple[torch.dtype, ...] = SUPPORTED_DTYPES
    # Delegate only attention with L_q and L_kv up to this (None: any).
    max_seq_len: int | None = None
    # Follow each launch plan with one compiled without alignment assumptions,
    # which misaligned tensors run instead of being refused (twice the compiles).
    generic_plans: bool = True


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
    """"cuda:N", or "cuda" for "cuda:0" (as torch.device reads it)."""
    index = "0" if device == "cuda" else device.removeprefix("cuda:")
    if not device.startswith("cuda") or not index.isdigit():
        raise ValueError(f"target_device must be 'cuda' or 'cuda:N', got {device!r}")
    return f"cuda:{int(index)}"


def _parse_dtypes(dtypes: Iterable[torch.dtype | str]) -> tuple[torch.dtype, ...]:
    parsed = set()
    for dtype in dtypes:
        name = str(dtype).strip().removeprefix("torch.")
        if name not in _DTYPE_NAMES:
            raise ValueError(f"unsupported dtype {dtype!r}: choose from {', '.join(_DTYPE_NAMES)}")
        parsed.add(_DTYPE_NAMES[name])
    if not parsed:
        raise ValueError("at least one dtype is needed")
    return tuple(d for d in SUPPORTED_DTYPES if d in parsed)


def _parse_max_seq_len(value: int | str) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"max_seq_len must be a positive integer, got {value!r}")
    return int(text)


def make_compile_specs(archs: Iterable[int | str] = DEFAULT_ARCHS, ptx: bool = True,
                       target_device: str | None = None, dtypes: Iterable[torch.dtype | str] | None = None,
                       max_seq_len: int | None = None, generic_plans: bool = True) -> list[CompileSpec]:
    """Compile specs for CudaGqaPartitioner; archs as 90 or "sm_90"; target_device as "cuda:0";
    dtypes as torch dtypes or names ("bfloat16"); max_seq_len bounds L_q and L_kv;
    generic_plans=False leaves out the unaligned plans (misaligned tensors are then refused)."""
    if isinstance(archs, (str, int)):
        raise ValueError(f"archs must be a list of archs, e.g. ['sm_80', 'sm_90'], got {archs!r}")
    if not isinstance(ptx, bool):
        raise ValueError(f"ptx must be True or False, got {ptx!r}")
    if not isinstance(generic_plans, bool):
        raise ValueError(f"generic_plans must be True or False, got {generic_plans!r}")
    specs = [
        CompileSpec("archs", ",".join(map(str, _parse_archs(archs))).encode()),
        CompileSpec("ptx", b"1" if ptx else b"0"),
    ]
    if target_device is not None:
        # The key ExecuTorch's PropagateDevicePass reads.
        specs.append(CompileSpec("target_device", _parse_target_device(target_device).encode()))
    if dtypes is not None:
        if isinstance(dtypes, (str, torch.dtype)):
            raise ValueError(f"dtypes must be a list, e.g. ['bfloat16'], got {dtypes!r}")
        names = (str(d).removeprefix("torch.") for d in _parse_dtypes(dtypes))
        specs.append(CompileSpec("dtypes", ",".join(names).encode()))
    if max_seq_len is not None:
        specs.append(CompileSpec("max_seq_len", str(_parse_max_seq_len(max_seq_len)).encode()))
    if not generic_plans:
        specs.append(CompileSpec("generic_plans", b"0"))
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
    if "generic_plans" in values:
        if values["generic_plans"] not in ("0", "1"):
            raise ValueError(f"compile spec generic_plans must be 0 or 1, got {values['generic_plans']!r}")
        options["generic_plans"] = values["generic_plans"] == "1"
    if "target_device" in values:
        options["target_device"] = _parse_target_device(values["target_device"])
    if "dtypes" in values:
        options["dtypes"] = _parse_dtypes(values["dtypes"].split(","))
    if "max_seq_len" in values:
        options["max_seq_len"] = _parse_max_seq_len(values["max_seq_len"])
    return CudaGqaOptions(**options)
