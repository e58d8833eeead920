"""What compiling a kernel for one arch yields: the cubin, its PTX and its entry point's description."""

from __future__ import annotations

from dataclasses import dataclass


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
