"""Compile a @triton.jit kernel to a cubin for a given GPU arch, with no GPU present.

Specialisation is fixed explicitly: which arguments are compile-time
constants and which pointer/int arguments are assumed divisible by 16. The
exact entry-point parameter list, hidden parameters Triton appends included,
is read back from the PTX and returned with the cubin so the payload can
record it and the runtime can check every assumption before a launch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_PTX_PARAM_TYPE = {".u64": "ptr", ".b64": "ptr", ".u32": "i32", ".b32": "i32", ".s32": "i32",
                   ".s64": "i64", ".f32": "fp32"}
_SIGNATURE_PARAM_TYPE = {"i32": "i32", "i64": "i64", "fp32": "fp32"}
_HIDDEN_PARAMS = ("global_scratch", "profile_scratch")


@dataclass(frozen=True)
class EntryParam:
    name: str  # kernel argument name, or "global_scratch"/"profile_scratch"
    type: str  # "ptr" | "i32" | "i64" | "fp32"
    divisibility: int  # 16 when compiled assuming divisibility by 16, else 1


@dataclass(frozen=True)
class CompiledKernel:
    name: str  # entry symbol in the cubin
    arch: int
    cubin: bytes
    ptx: str
    num_warps: int
    num_stages: int
    shared_mem_bytes: int
    global_scratch_bytes: int
    global_scratch_align: int
    profile_scratch_bytes: int
    profile_scratch_align: int
    params: tuple[EntryParam, ...]  # entry-point order, hidden parameters included


def _ptx_entry_param_types(ptx: str, name: str) -> list[str]:
    match = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    if match is None:
        raise RuntimeError(f"entry {name} not found in the PTX Triton produced")
    return re.findall(r"\.param\s+(\.\w+)", match.group(1))


def compile_to_cubin(fn, *, signature: dict[str, str], constexprs: dict[str, object],
                     divisible_by_16: frozenset[str], arch: int, num_warps: int, num_stages: int) -> CompiledKernel:
    """Compile `fn` for sm_<arch>.

    signature: every argument of `fn` to its Triton type ("*fp16", "i32", "fp32", ...);
    constexpr arguments are given in `constexprs` instead.
    """
    full_signature = {name: "constexpr" if name in constexprs else signature[name] for name in fn.arg_names}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible_by_16}
    source = ASTSource(fn=fn, signature=full_signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages,
                                       # Explicit: Triton 3.9 warns that its default changes in 3.10.
                                       "enable_fp_fusion": True})
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
