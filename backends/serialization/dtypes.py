"""The payload's element types: each DType's name (torch's and numpy's spelling) and size.

The one table the AOT stage, the launch plan, the cubin launcher and the C
API binding map through; runtime/cpp/dtype_map.h is its C++ counterpart.
"""

from . import payload_generated as fb

DTYPE_NAMES = {fb.DType.Float32: "float32", fb.DType.Float16: "float16", fb.DType.BFloat16: "bfloat16",
               fb.DType.Bool: "bool", fb.DType.Int32: "int32", fb.DType.Int64: "int64"}
DTYPE_SIZES = {fb.DType.Float32: 4, fb.DType.Float16: 2, fb.DType.BFloat16: 2, fb.DType.Bool: 1,
               fb.DType.Int32: 4, fb.DType.Int64: 8}
DTYPE_OF_NAME = {name: code for code, name in DTYPE_NAMES.items()}


def torch_dtype_codes(torch) -> dict:
    """torch dtype -> payload DType (torch passed in: the launch plan imports no torch)."""
    return {getattr(torch, name): code for code, name in DTYPE_NAMES.items()}
