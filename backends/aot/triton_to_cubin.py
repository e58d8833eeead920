"""Compile a @triton.jit (or @gluon.jit) kernel to a cubin for a given GPU arch, with no GPU present.

Specialisation is fixed explicitly: which arguments are compile-time
constants and which pointer/int arguments are assumed divisible by 16. The
exact entry-point parameter list, hidden parameters Triton appends included,
is read back from the PTX and returned with the cubin so the payload can
record it and the runtime can check every assumption before a launch.

compile_to_cubin looks each compilation up first in this process (the
layers of a model repeat the same kernels) and then in the on-disk cache
(compile_cache.py); only a miss compiles, in a worker process
(compile_pool.py).
"""

from __future__ import annotations

import hashlib
import re
import threading
from typing import Optional

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend

from . import compile_cache
from .compile_pool import run_compile
from .compiled_kernel import CompiledKernel, EntryParam

_PTX_PARAM_TYPE = {".u64": "ptr", ".b64": "ptr", ".u32": "i32", ".b32": "i32", ".s32": "i32",
                   ".s64": "i64", ".f32": "fp32"}
_SIGNATURE_PARAM_TYPE = {"i32": "i32", "i64": "i64", "fp32": "fp32"}
_HIDDEN_PARAMS = ("global_scratch", "profile_scratch")
# Bump when what compile_uncached derives from Triton's output changes, so
# cache entries written by older code are not reused.
CACHE_FORMAT = 1

_compiled_here: dict[str, CompiledKernel] = {}  # compile key -> kernel, this process
_compiled_here_lock = threading.Lock()

__all__ = ["CompiledKernel", "EntryParam", "compile_key", "compile_to_cubin", "compile_uncached",
           "forget_compiled_in_process"]


def _ptx_entry_param_types(ptx: str, name: str) -> list[str]:
    match = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    if match is None:
        raise RuntimeError(f"entry {name} not found in the PTX Triton produced")
    return re.findall(r"\.param\s+(\.\w+)", match.group(1))


def _triton_source(fn, signature: dict[str, str], constexprs: dict[str, object],
                   divisible_by_16: frozenset[str]) -> ASTSource:
    full_signature = {name: "constexpr" if name in constexprs else signature[name] for name in fn.arg_names}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in sorted(divisible_by_16)}
    if fn.is_gluon():
        from triton.experimental.gluon._runtime import GluonASTSource  # Triton 3.9's Gluon

        return GluonASTSource(fn=fn, signature=full_signature, constexprs=constexprs, attrs=attrs)
    return ASTSource(fn=fn, signature=full_signature, constexprs=constexprs, attrs=attrs)


def _options(num_warps: int, num_stages: int, maxnreg: Optional[int]) -> dict:
    # enable_fp_fusion explicit: Triton 3.9 warns that its default changes in 3.10.
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True}
    if maxnreg is not None:  # a warp-specialized kernel's register budget per thread
        options["maxnreg"] = maxnreg
    return options


def _cache_invalidating_env() -> dict:
    """Environment variables Triton itself keys its cache on (none set: empty)."""
    try:
        from triton._C.libtriton import get_cache_invalidating_env_vars
    except ImportError:
        return {}
    return get_cache_invalidating_env_vars()


_source_hash_lock = threading.Lock()


def compile_key(fn, *, signature: dict[str, str], constexprs: dict[str, object], divisible_by_16: frozenset[str],
                arch: int, num_warps: int, num_stages: int, maxnreg: Optional[int] = None) -> str:
    """SHA-256 naming one compilation, from the pieces Triton keys its own cache on:
    the source's hash (fn.cache_key covers the @triton.jit functions it calls,
    plus signature, constexprs and divisibility attributes), the backend's
    (ptxas version, arch) and the parsed options (num_warps, num_stages, ...)."""
    source = _triton_source(fn, signature, constexprs, divisible_by_16)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    options = backend.parse_options(_options(num_warps, num_stages, maxnreg))
    env = sorted(_cache_invalidating_env().items())
    # source.hash() parses kernel sources with ast.parse, which CPython 3.11
    # does not allow in two threads at once (compile batches key in threads).
    with _source_hash_lock:
        source_hash = source.hash()
    text = (f"cuda_gqa-{CACHE_FORMAT}-triton-{triton.__version__}-{source_hash}-{backend.hash()}-"
            f"{options.hash()}-{env}")
    return hashlib.sha256(text.encode()).hexdigest()


def forget_compiled_in_process() -> None:
    """Drop this process's memo of compiled kernels (the disk cache stays)."""
    with _compiled_here_lock:
        _compiled_here.clear()


def compile_to_cubin(fn, *, signature: dict[str, str], constexprs: dict[str, object],
                     divisible_by_16: frozenset[str], arch: int, num_warps: int, num_stages: int,
                     maxnreg: Optional[int] = None) -> CompiledKernel:
    """Compile `fn` for sm_<arch>, or reuse an identical earlier compilation.

    signature: every argument of `fn` to its Triton type ("*fp16", "i32", "fp32", ...);
    constexpr arguments are given in `constexprs` instead.
    """
    spec = dict(signature=signature, constexprs=constexprs, divisible_by_16=frozenset(divisible_by_16), arch=arch,
                num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg)
    key = compile_key(fn, **spec)
    with _compiled_here_lock:
        kernel = _compiled_here.get(key)
    if kernel is None:
        kernel = compile_cache.load(key)
        if kernel is None:
            kernel = run_compile(compile_uncached, fn, spec)
            compile_cache.store(key, kernel)
        with _compiled_here_lock:
            _compiled_here[key] = kernel
    return kernel


def compile_uncached(fn, *, signature: dict[str, str], constexprs: dict[str, object],
                     divisible_by_16: frozenset[str], arch: int, num_warps: int, num_stages: int,
                     maxnreg: Optional[int] = None) -> CompiledKernel:
    """Compile `fn` for sm_<arch> with Triton, consulting no cache of ours."""
    source = _triton_source(fn, signature, constexprs, divisible_by_16)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options=_options(num_warps, num_stages, maxnreg))
    meta = compiled.metadata
    ptx = compiled.asm["ptx"]

    runtime_args = [name for name in fn.arg_names if name not in constexprs]
    params = [
        EntryParam(name, "ptr" if signature[name].startswith("*") else _SIGNATURE_PARAM_TYPE[signature[name]],
                   16 if name in divisible_by_16 else 1)
        for name in runtime_args
    ]
    emitted = _ptx_entry_param_types(ptx, meta.name)
    hidden = len(emitted) - len(params)
    if hidden < 0 or hidden > len(_HIDDEN_PARAMS):
        raise RuntimeError(f"{meta.name}: the PTX entry has {len(emitted)} parameters, "
                           f"the signature {len(params)} and Triton appends at most {len(_HIDDEN_PARAMS)}")
    params += [EntryParam(name, "ptr", 1) for name in _HIDDEN_PARAMS[:hidden]]
    emitted_types = [_PTX_PARAM_TYPE.get(t, t) for t in emitted]
    if emitted_types != [p.type for p in params]:
        raise RuntimeError(f"{meta.name}: PTX parameter types {emitted_types} do not match {[p.type for p in params]}")

    return CompiledKernel(
        name=meta.name,
        arch=arch,
        cubin=bytes(compiled.asm["cubin"]),
        ptx=ptx,
        num_warps=meta.num_warps,
        num_stages=meta.num_stages,
        shared_mem_bytes=meta.shared,
        global_scratch_bytes=getattr(meta, "global_scratch_size", 0) or 0,
        global_scratch_align=getattr(meta, "global_scratch_align", 1) or 1,
        profile_scratch_bytes=getattr(meta, "profile_scratch_size", 0) or 0,
        profile_scratch_align=getattr(meta, "profile_scratch_align", 1) or 1,
        params=tuple(params),
    )
