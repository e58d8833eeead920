"""The start of a kernel a whole-step plan may launch as a programmatic dependent of the one before.

With ENABLED (sm_90+ images only: griddepcontrol is Hopper's), the kernel
waits for the previous kernel's memory before touching any, then lets the
next kernel's CTAs be scheduled while its own run (payload.fbs,
Kernel.waits_for_previous). The trigger fires once every CTA of this grid has
passed it, so CTAs of the next grid never crowd out CTAs of this one.
"""

import triton
import triton.language as tl


@triton.jit
def wait_for_previous(ENABLED: tl.constexpr):
    if ENABLED:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
