"""Which dimension of an attention tensor is which.

PyTorch's SDPA takes q/k/v/out as [B, H, S, D] ("BHSD"); ExecuTorch's
`llama::custom_sdpa` and `llama::update_cache` take [B, S, H, D] ("BSHD").
The kernels address either through strides (only D must be contiguous), so
a layout only decides which dim of a delegate argument feeds which kernel
stride, size and grid factor: the payload binds dims, the runtimes never
know the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYOUTS = ("BHSD", "BSHD")


@dataclass(frozen=True)
class Layout:
    name: str = "BHSD"

    def __post_init__(self):
        if self.name not in LAYOUTS:
            raise ValueError(f"layout {self.name!r} is not one of {LAYOUTS}")

    @property
    def batch(self) -> int:
        return 0

    @property
    def heads(self) -> int:
        return self.name.index("H")

    @property
    def seq(self) -> int:
        return self.name.index("S")

    @property
    def head_dim(self) -> int:
        return 3

    def shape(self, batch, heads, seq, head_dim) -> list:
        """[B, H, S, D] sizes in this layout's order."""
        sizes = [None] * 4
        sizes[self.batch], sizes[self.heads], sizes[self.seq], sizes[self.head_dim] = batch, heads, seq, head_dim
        return sizes


BHSD, BSHD = Layout("BHSD"), Layout("BSHD")
