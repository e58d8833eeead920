"""Compile argmax_rows (greedy token ids from logits) and its merge for one vocabulary and GPU arch.

Two stages by default: argmax_rows over splits of SPLIT columns writes
(key, index) partials to an int32 workspace of argmax_workspace_shape, then
argmax_merge picks each row's winner. num_splits = 1 is one program per row
looping over all V columns (no workspace, no merge).
"""

from __future__ import annotations

import torch
import triton

from ..kernels.argmax_rows import argmax_merge, argmax_rows
from ..limits import SUPPORTED_DTYPES
from .programmatic_launch import wait_for_previous_constexpr
from .triton_to_cubin import CompiledKernel, compile_to_cubin
from .variant import POINTER_TYPE

SPLIT = 4096  # columns per program with several splits: 32 programs per row for V = 128256
BLOCK = 1024  # columns per loop step
NUM_WARPS = 4  # argmax_rows'; argmax_merge uses 1


def argmax_num_splits(vocab: int) -> int:
    """Programs per row the two-stage argmax uses for a `vocab`-wide row."""
    return triton.cdiv(vocab, SPLIT)


def argmax_split(vocab: int, num_splits: int) -> int:
    """The SPLIT constexpr: columns per program (one split: the whole row, in BLOCK steps)."""
    return triton.cdiv(vocab, BLOCK) * BLOCK if num_splits == 1 else SPLIT


def argmax_workspace_shape(l: int, num_splits: int) -> tuple[int, int, int]:
    """The int32 Partials workspace (keys, then indices) for L rows; none needed when num_splits == 1."""
    return (l, 2, num_splits)


def compile_argmax_rows(*, dtype: torch.dtype, vocab: int, num_splits: int, arch: int,
                        wait_for_previous: bool = False) -> CompiledKernel:
    """argmax_rows over `dtype` logits [L, vocab] as a cubin for sm_<arch>: num_splits programs per
    row, 1 or argmax_num_splits(vocab).

    Logits is compiled as 16-byte aligned, stride_lr as a multiple of 16
    elements when vocab is one. With num_splits == 1 it writes Out and Partials
    is not a parameter; otherwise it writes Partials and Out is not one
    (argmax_merge writes it).
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"logits dtype {dtype} is not supported: use float16, bfloat16 or float32")
    if vocab <= 0:
        raise ValueError(f"vocabulary size {vocab} must be positive")
    if num_splits not in (1, argmax_num_splits(vocab)):
        raise ValueError(f"num_splits={num_splits}: use 1 or argmax_num_splits({vocab}) = {argmax_num_splits(vocab)}")
    signature = {"Logits": POINTER_TYPE[dtype], "Out": "*i64", "Partials": "*i32", "stride_lr": "i32"}
    constexprs = {"V": vocab, "NUM_SPLITS": num_splits, "SPLIT": argmax_split(vocab, num_splits), "BLOCK": BLOCK,
                  **wait_for_previous_constexpr(wait_for_previous, arch)}
    constexprs["Partials" if num_splits == 1 else "Out"] = None
    aligned = ["Logits"] + (["stride_lr"] if vocab % 16 == 0 else [])
    return compile_to_cubin(argmax_rows, signature=signature, constexprs=constexprs,
                            divisible_by_16=frozenset(aligned), arch=arch, num_warps=NUM_WARPS, num_stages=1)


def compile_argmax_merge(*, num_splits: int, arch: int, wait_for_previous: bool = False) -> CompiledKernel:
    """argmax_merge of num_splits partials per row, as a cubin for sm_<arch> (no divisibility assumed)."""
    if num_splits < 2:
        raise ValueError(f"argmax_merge merges 2 or more splits, not {num_splits}")
    constexprs = {"NUM_SPLITS": num_splits, "BLOCK_S": triton.next_power_of_2(num_splits),
                  **wait_for_previous_constexpr(wait_for_previous, arch)}
    return compile_to_cubin(argmax_merge, signature={"Partials": "*i32", "Out": "*i64"}, constexprs=constexprs,
                            divisible_by_16=frozenset(), arch=arch, num_warps=1, num_stages=1)


def argmax_rows_grid(l: int, num_splits: int) -> tuple[int, int, int]:
    return (l, num_splits, 1)


def argmax_merge_grid(l: int) -> tuple[int, int, int]:
    return (l, 1, 1)
