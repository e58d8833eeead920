"""add: Out = A + B over N contiguous elements, for a residual add no linear's epilogue took.

Added in float32 and rounded to Out's dtype once (what torch does for two
half-precision tensors). Out may alias A or B. Program i handles elements
[i * BLOCK, (i + 1) * BLOCK).
"""

import triton
import triton.language as tl


@triton.jit
def add(A, B, Out, N, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < N
    a = tl.load(A + offsets, mask=ok).to(tl.float32)
    b = tl.load(B + offsets, mask=ok).to(tl.float32)
    tl.store(Out + offsets, (a + b).to(Out.dtype.element_ty), mask=ok)
