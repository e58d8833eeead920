"""The builder every kernel family uses to turn compiled kernels into payload records.

A payload kernel (fb.KernelT) is one entry point compiled for several GPU
archs, its parameters bound to what the runtime passes (delegate tensors,
their sizes and strides, constants, workspace slices) and its grid as
factors of the delegate's sizes. Attention, the KV-cache write and the
whole-model kernel families all describe their launches through the
functions here, so binding and per-arch compilation are written once.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterable, Mapping, Optional

import numpy as np

from .aot.compile_pool import compile_in_batch
from .serialization import payload_generated as fb

# Triton entry-parameter types (aot/compiled_kernel.EntryParam.type) -> payload ParamType.
PARAM_TYPE = {"ptr": fb.ParamType.Pointer, "i32": fb.ParamType.Int32,
               "i64": fb.ParamType.Int64, "fp32": fb.ParamType.Float32}


def grid_factor(arg: int, dim: int, divisor: int = 1) -> fb.GridFactorT:
    """One factor of a grid dimension: ceil(size(arg, dim) / divisor)."""
    return fb.GridFactorT(arg=arg, dim=dim, divisor=divisor)


def binding(kind: int, **fields):
    """A parameter binding: the parameter gets `kind` and these KernelParamT fields."""
    def bind(param: fb.KernelParamT) -> None:
        param.kind = kind
        for name, value in fields.items():
            setattr(param, name, value)
    return bind


# Kernels compiled for one payload, by what they are compiled from: plans of
# a dispatch table share kernels (e.g. one split kernel for every L_kv range),
# compiled once and described per plan.
_payload_compiles: ContextVar[Optional[dict]] = ContextVar("cuda_gqa_payload_compiles", default=None)


def compile_for_archs(compile_one, archs: Iterable[int], ptx: bool, describe, key=None) -> fb.KernelT:
    """compile_one(arch) for each arch into one payload kernel; describe(kernel, compiled)
    binds params and grid from the first arch's entry point (all must agree).

    Inside sharing_compiles() the compilations only start here, side by
    side with those of the payload's other kernels (aot/compile_pool.py), and
    the kernel is filled in when they have all finished. `key` names what
    compile_one compiles: kernels of one payload with equal keys are compiled once."""
    archs = list(archs)
    kernel = fb.KernelT(cubins=[])
    compiled_for = {arch: _binary_compatible_base(arch, archs) for arch in archs}
    bases = sorted(set(compiled_for.values()))

    def fill(base_results):
        results = [base_results[bases.index(compiled_for[arch])] for arch in archs]
        _fill_kernel(kernel, archs, results, ptx, describe)

    shared = _payload_compiles.get()
    if key is not None and shared is not None:
        key = (key, tuple(archs))
        if key in shared:
            shared[key].append(fill)
            return kernel
        shared[key] = [fill]
        fills = shared[key]
        compile_in_batch(compile_one, bases, lambda results: [f(results) for f in fills])
        return kernel
    compile_in_batch(compile_one, bases, fill)
    return kernel


def _binary_compatible_base(arch: int, archs: list[int]) -> int:
    """The arch whose cubin serves `arch`: the lowest of `archs` with its major version.

    A cubin for sm_XY runs on every sm_XZ with Z >= Y, and Triton generates the
    same code for sm_80/86/87/89 (a group of archs here has the same tiles, so
    the same shared memory), so one sm_80 compilation serves the group; the
    image is stored once (named data is keyed by content). sm_90 cubins are
    sm_90a, which runs on sm_90 only; no other 9.x exists.
    """
    return min(a for a in archs if a // 10 == arch // 10)


def _fill_kernel(kernel: fb.KernelT, archs: list[int], results, ptx: bool, describe) -> None:
    first = None
    for arch, compiled in zip(archs, results):
        if first is None:
            first = compiled
            kernel.name = compiled.name
            kernel.numWarps = compiled.num_warps
            describe(kernel, compiled)
            kernel.globalScratchBytes = compiled.global_scratch_bytes
            kernel.globalScratchAlign = compiled.global_scratch_align
            kernel.profileScratchBytes = compiled.profile_scratch_bytes
            kernel.profileScratchAlign = compiled.profile_scratch_align
            if ptx:
                # PTX of the lowest arch runs on every newer GPU through the driver's JIT.
                kernel.ptx = np.frombuffer(compiled.ptx.encode(), dtype=np.uint8)
                kernel.ptxArch = arch
        elif (compiled.params, compiled.name) != (first.params, first.name):
            raise RuntimeError(f"sm_{arch} compiled a different entry point than sm_{first.arch}")
        # Same launch config on every arch: take the largest shared memory
        # (and scratch) any of them needs.
        kernel.sharedMemBytes = max(kernel.sharedMemBytes, compiled.shared_mem_bytes)
        kernel.globalScratchBytes = max(kernel.globalScratchBytes, compiled.global_scratch_bytes)
        kernel.profileScratchBytes = max(kernel.profileScratchBytes, compiled.profile_scratch_bytes)
        kernel.cubins.append(fb.CubinT(arch=arch, image=np.frombuffer(compiled.cubin, dtype=np.uint8)))


@contextmanager
def sharing_compiles():
    """Within it, kernels of one payload with equal compile keys are compiled once, and
    every compilation starts side by side with the others (aot/compile_pool.py)."""
    from .aot.compile_pool import compiling_together

    token = _payload_compiles.set({})
    try:
        with compiling_together():
            yield
    finally:
        _payload_compiles.reset(token)


Binding = Callable[[fb.KernelParamT], None]


def bind_by_name(entry_params, bindings: Mapping[str, Binding], *, kernel: str) -> list[fb.KernelParamT]:
    """Bind each entry parameter through bindings[its name]; Triton's hidden scratch
    parameters bind themselves. A parameter with no binding is an error naming it."""
    hidden = {"global_scratch": fb.ParamKind.GlobalScratch, "profile_scratch": fb.ParamKind.ProfileScratch}
    bound = []
    for p in entry_params:
        param = fb.KernelParamT(type=PARAM_TYPE[p.type], divisibility=p.divisibility)
        if p.name in bindings:
            bindings[p.name](param)
        elif p.name in hidden:
            param.kind = hidden[p.name]
        else:
            raise ValueError(f"{kernel} has an entry parameter {p.name!r} this plan cannot bind")
        bound.append(param)
    return bound
