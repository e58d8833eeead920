"""Weights as payload constants: tensors the kernels read through pointers, stored in the program's named data.

A payload names each constant (Payload.constants: name, dtype, sizes) and a
kernel addresses it with a Constant param (its index); the bytes go once
into ExecuTorch's NamedDataStore under the constant's name, where every
delegate of the program that names it finds them (a program's prefill and
decode methods share every weight, and ExecuTorch keeps one copy of a key).
The runtimes upload each constant to device memory once at init.

    constants = PayloadConstants()
    w = constants.index("layers.0.attention.wq.weight", wq)  # the same index for the same name
    kernel.params.append(constant_param(w))
    payload.constants = constants.specs()
    constants.add_to_named_data(store)                       # in preprocess, with the payload
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .serialization import payload_generated as fb
from .serialization.dtypes import DTYPE_NAMES, torch_dtype_codes

if TYPE_CHECKING:  # executorch is only needed by the caller that owns the store
    import torch
    from executorch.exir._serialize._named_data_store import NamedDataStore

# Alignment of the bytes inside the .pte/.ptd: the runtime copies them to the
# device, so any would do; 64 keeps host reads of an mmapped file vectorised.
CONSTANT_ALIGNMENT = 64
# Divisibility a Constant param asserts by default: the runtimes' device
# copies are at least 256-byte aligned, and Triton's tt.divisibility is 16.
CONSTANT_DIVISIBILITY = 16


def _dtype_code(tensor: "torch.Tensor") -> int:
    import torch

    code = torch_dtype_codes(torch).get(tensor.dtype)
    if code is None:
        raise ValueError(f"a payload constant cannot be {tensor.dtype}; payload dtypes: "
                         f"{sorted(DTYPE_NAMES.values())}")
    return code


def constant_spec(name: str, tensor: "torch.Tensor") -> fb.ConstantSpecT:
    """The ConstantSpec of `tensor` stored under `name` (its dtype and sizes)."""
    if not name:
        raise ValueError("a payload constant needs a name (its named data key)")
    return fb.ConstantSpecT(name=name, dtype=_dtype_code(tensor), sizes=[int(s) for s in tensor.shape])


def constant_param(index: int, divisibility: int = CONSTANT_DIVISIBILITY) -> fb.KernelParamT:
    """A kernel param passing the device address of payload constant `index`."""
    return fb.KernelParamT(kind=fb.ParamKind.Constant, type=fb.ParamType.Pointer, constant=int(index),
                           divisibility=int(divisibility))


def constant_bytes(tensor: "torch.Tensor") -> bytes:
    """What a constant's named data entry holds: its elements, contiguous, little-endian."""
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


class PayloadConstants:
    """The constants of one payload, by name, in the order their indices were handed out."""

    def __init__(self):
        self._names: list[str] = []
        self._tensors: dict[str, "torch.Tensor"] = {}

    def index(self, name: str, tensor: "torch.Tensor") -> int:
        """The index of constant `name` (added on first use); ValueError if `name` was
        added with another dtype or shape."""
        known = self._tensors.get(name)
        if known is None:
            constant_spec(name, tensor)  # refuses what a payload cannot hold
            self._names.append(name)
            self._tensors[name] = tensor
            return len(self._names) - 1
        if known.dtype != tensor.dtype or tuple(known.shape) != tuple(tensor.shape):
            raise ValueError(f"constant '{name}' is {tensor.dtype} {list(tensor.shape)} here but "
                             f"{known.dtype} {list(known.shape)} where it was added first")
        return self._names.index(name)

    def __len__(self) -> int:
        return len(self._names)

    def specs(self) -> list[fb.ConstantSpecT]:
        """Payload.constants, in index order."""
        return [constant_spec(name, self._tensors[name]) for name in self._names]

    def named_data(self) -> dict[str, bytes]:
        """name -> bytes: what the program's named data holds for them (for the CPU
        interpreter and CubinLauncher, which take it as a dict)."""
        return {name: constant_bytes(self._tensors[name]) for name in self._names}

    def add_to_named_data(self, store: "NamedDataStore", external_tag: str | None = None) -> None:
        """Put every constant's bytes into `store` under its name: in the .pte, or with
        `external_tag` in the external .ptd of that name (NamedDataStore.add_named_data)."""
        for name in self._names:
            data = constant_bytes(self._tensors[name])
            if external_tag is None:
                store.add_named_data(name, data, alignment=CONSTANT_ALIGNMENT)
            else:
                store.add_named_data(name, data, alignment=CONSTANT_ALIGNMENT, external_tag=external_tag)
