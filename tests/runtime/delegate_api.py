"""ctypes bindings of the C API's delegate functions (cuda_gqa_delegate_init/execute/destroy)
for tests: numpy arrays and CPU torch tensors in host memory, CUDA torch tensors in device memory."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

MAX_RANK = 8  # CUDA_GQA_MAX_RANK
ERROR_OK = 0
# DType of payload.fbs for each numpy / torch element type name.
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}


class CudaGqaTensor(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int32), ("rank", ctypes.c_uint32), ("sizes", ctypes.c_int64 * MAX_RANK),
                ("strides", ctypes.c_int64 * MAX_RANK), ("data", ctypes.c_void_p), ("device", ctypes.c_int32)]


def load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    lib.cuda_gqa_delegate_init.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
    lib.cuda_gqa_delegate_init.restype = ctypes.c_int
    lib.cuda_gqa_delegate_execute.argtypes = [ctypes.c_void_p, ctypes.POINTER(CudaGqaTensor), ctypes.c_size_t]
    lib.cuda_gqa_delegate_execute.restype = ctypes.c_int
    lib.cuda_gqa_delegate_destroy.argtypes = [ctypes.c_void_p]
    lib.cuda_gqa_delegate_destroy.restype = None
    lib.cuda_gqa_loaded_module_count.argtypes = []
    lib.cuda_gqa_loaded_module_count.restype = ctypes.c_size_t
    lib.cuda_gqa_set_option.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
    lib.cuda_gqa_set_option.restype = ctypes.c_int
    return lib


def init(lib: ctypes.CDLL, payload: bytes) -> tuple[int, int | None]:
    """(ExecuTorch error code, delegate handle or None)."""
    buf = ctypes.create_string_buffer(payload, len(payload))
    handle = ctypes.c_void_p()
    rc = lib.cuda_gqa_delegate_init(buf, len(payload), ctypes.byref(handle))
    return rc, handle.value if rc == ERROR_OK else None


def host_tensor(array: np.ndarray) -> CudaGqaTensor:
    t = CudaGqaTensor(dtype=DTYPES[str(array.dtype)], rank=array.ndim, data=array.ctypes.data, device=-1)
    for d in range(array.ndim):
        t.sizes[d], t.strides[d] = array.shape[d], array.strides[d] // array.itemsize
    return t


def torch_tensor(tensor) -> CudaGqaTensor:
    """A torch tensor, read and written in place: host memory for a CPU tensor, else device memory."""
    t = CudaGqaTensor(dtype=DTYPES[str(tensor.dtype).removeprefix("torch.")], rank=tensor.dim(),
                      data=tensor.data_ptr(), device=-1 if tensor.device.type == "cpu" else tensor.device.index)
    for d in range(tensor.dim()):
        t.sizes[d], t.strides[d] = tensor.shape[d], tensor.stride(d)
    return t


def execute(lib: ctypes.CDLL, handle: int, tensors: list[CudaGqaTensor]) -> int:
    args = (CudaGqaTensor * len(tensors))(*tensors)
    return lib.cuda_gqa_delegate_execute(handle, args, len(tensors))
