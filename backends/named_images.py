"""Kernel images stored once per .pte, in ExecuTorch's named data, instead of in each payload.

Every layer of a model carries the same cubins. preprocess moves each image
(cubins and PTX) of a payload into the NamedDataStore under a key made
from its content hash, and the payload keeps only the key (Cubin.image_key,
Kernel.ptx_key). ExecuTorch merges the stores of all delegates, so an
image shared by any number of delegates is serialized once; the runtimes
resolve keys through the program's named data map at init.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from .serialization import payload_generated as fb

if TYPE_CHECKING:  # executorch is not needed to read or move images (the GPU machine has none)
    from executorch.exir._serialize._named_data_store import NamedDataStore

KEY_PREFIX = "cuda_gqa/"
# The C++ runtime copies each image before loading it; 16 keeps the
# in-file copy friendly to vector loads all the same.
IMAGE_ALIGNMENT = 16


def image_key(image: bytes) -> str:
    """The named-data key of an image: its SHA-256, so equal images share one key."""
    return KEY_PREFIX + hashlib.sha256(image).hexdigest()


def _as_bytes(array) -> bytes:
    return np.asarray(array, dtype=np.uint8).tobytes()


def _payload_kernels(payload: fb.PayloadT) -> list:
    return [k for plan in payload.plans or [] for k in plan.kernels or []]


def move_images_to_named_data(payload: fb.PayloadT, store: "NamedDataStore") -> None:
    """Replace every inline cubin and PTX of `payload` by a key into `store`
    (anything with NamedDataStore's add_named_data(key, data, alignment))."""

    def move(holder, image_field: str, key_field: str) -> None:
        image = getattr(holder, image_field)
        if image is None or len(image) == 0:
            return
        data = _as_bytes(image)
        setattr(holder, key_field, image_key(data))
        store.add_named_data(getattr(holder, key_field), data, alignment=IMAGE_ALIGNMENT)
        setattr(holder, image_field, None)

    for kernel in _payload_kernels(payload):
        for cubin in kernel.cubins or []:
            move(cubin, "image", "imageKey")
        move(kernel, "ptx", "ptxKey")
