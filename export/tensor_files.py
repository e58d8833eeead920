"""Raw tensor files: the bytes of a contiguous tensor, as the C++ runner reads them."""

from __future__ import annotations

from pathlib import Path

import torch


def write_tensor(path: Path, tensor: torch.Tensor) -> None:
    path.write_bytes(tensor.contiguous().view(torch.uint8).numpy().tobytes())


def read_tensor(path: Path, like: torch.Tensor) -> torch.Tensor:
    """Read a file written by write_tensor (or the runner) with `like`'s dtype and shape."""
    data = bytearray(path.read_bytes())
    expected = like.numel() * like.element_size()
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, expected {expected} for {tuple(like.shape)} {like.dtype}")
    return torch.frombuffer(data, dtype=torch.uint8).view(like.dtype).reshape(like.shape)
