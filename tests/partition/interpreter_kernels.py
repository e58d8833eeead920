"""A Triton kernel for tests of payload_interpreter.py itself (imported by name in its subprocess)."""

import triton
import triton.language as tl


@triton.jit
def add_weight_rows(x_ptr, w_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[row] = x[row] + w[row] over rows of n contiguous elements; one program per row."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    keep = cols < n
    x = tl.load(x_ptr + row * n + cols, mask=keep)
    w = tl.load(w_ptr + row * n + cols, mask=keep)
    tl.store(out_ptr + row * n + cols, x + w, mask=keep)
