"""The static variant of one attention call, as the AOT stage compiles it.

Everything here becomes a Triton constexpr or a signature type, so it is
fixed per cubin: causal, window, soft-cap, whether there is a mask (its kind,
dtype and the dimensions it broadcasts over, whose strides are compiled as 0)
and whether a device kv_len scalar bounds the keys (its integer type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..limits import MASK_DTYPES

POINTER_TYPE = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
                torch.bool: "*i1", torch.int32: "*i32", torch.int64: "*i64"}
KV_LEN_DTYPES = (torch.int32, torch.int64)
# Mask strides along [B, H_q, L_q, L_kv], in kernel parameter names.
MASK_STRIDES = ("stride_mb", "stride_mh", "stride_mm", "stride_mn")


@dataclass(frozen=True)
class AttentionVariant:
    is_causal: bool = False
    window_left: int = -1  # keys left of the diagonal a query sees; -1: all
    softcap: float = 0.0  # 0: off
    mask_dtype: Optional[torch.dtype] = None  # None: no mask; bool hides keys, a float one is added
    # Per [B, H_q, L_q, L_kv] dim: the mask has size 1 there (its stride is compiled as 0).
    mask_broadcast: tuple[bool, bool, bool, bool] = (False, False, False, False)
    kv_len_dtype: Optional[torch.dtype] = None  # None: all L_kv keys are filled

    def __post_init__(self):
        if self.window_left < -1:
            raise ValueError(f"window_left={self.window_left}: use -1 for no window, else a count >= 0")
        if self.softcap < 0:
            raise ValueError(f"softcap={self.softcap} is negative")
        if self.mask_dtype is not None and self.mask_dtype not in MASK_DTYPES:
            raise ValueError(f"mask dtype {self.mask_dtype} is not one of {[str(d) for d in MASK_DTYPES]}")
        if self.kv_len_dtype is not None and self.kv_len_dtype not in KV_LEN_DTYPES:
            raise ValueError(f"kv_len dtype {self.kv_len_dtype} is not one of {[str(d) for d in KV_LEN_DTYPES]}")

    @property
    def mask_kind(self) -> str:
        if self.mask_dtype is None:
            return "none"
        return "bool" if self.mask_dtype == torch.bool else "additive"

    @property
    def runtime_mask_strides(self) -> tuple[str, ...]:
        """Mask stride parameters passed at launch (the others are compiled as 0)."""
        if self.mask_dtype is None:
            return ()
        return tuple(name for name, broadcast in zip(MASK_STRIDES, self.mask_broadcast) if not broadcast)

    def signature(self) -> dict[str, str]:
        """Triton types of the variant's runtime parameters (Mask, KvLen, mask strides)."""
        signature = {name: "i32" for name in self.runtime_mask_strides}
        if self.mask_dtype is not None:
            signature["Mask"] = POINTER_TYPE[self.mask_dtype]
        if self.kv_len_dtype is not None:
            signature["KvLen"] = POINTER_TYPE[self.kv_len_dtype]
        return signature

    def kernel_constexprs(self) -> dict[str, object]:
        """The constexprs naming the kernels' variant (what the Triton JIT is given too)."""
        return {"IS_CAUSAL": self.is_causal, "WINDOW_LEFT": self.window_left, "MASK_KIND": self.mask_kind,
                "SOFTCAP": float(self.softcap)}

    def constexprs(self) -> dict[str, object]:
        """All constexprs of an AOT compile: kernel_constexprs, unused pointers and broadcast strides."""
        constexprs = self.kernel_constexprs()
        constexprs.update({name: 0 for name in MASK_STRIDES if name not in self.runtime_mask_strides})
        if self.mask_dtype is None:
            constexprs["Mask"] = None
        if self.kv_len_dtype is None:
            constexprs["KvLen"] = None
        return constexprs
