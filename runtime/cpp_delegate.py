"""CudaGqaBackend's own init/execute/destroy through the C API (cuda_gqa_delegate_*), without an
ExecuTorch program: the C++ backend on numpy arrays and CPU torch tensors (host memory, staged)
and CUDA torch tensors (device memory, used in place). For tests and benchmarks of the C++
runtime; CubinLauncher is the pure-Python way to run a payload on torch tensors."""

from __future__ import annotations

import ctypes

from cuda_gqa.backends.serialization.dtypes import DTYPE_OF_NAME

from .backend_library import load_backend_library

MAX_RANK = 8  # CUDA_GQA_MAX_RANK
ERROR_OK = 0


class CudaGqaTensor(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int32), ("rank", ctypes.c_uint32), ("sizes", ctypes.c_int64 * MAX_RANK),
                ("strides", ctypes.c_int64 * MAX_RANK), ("data", ctypes.c_void_p), ("device", ctypes.c_int32)]


class CudaGqaNamedData(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]


def init(payload: bytes, program: int | None = None) -> tuple[int, int | None]:
    """(ExecuTorch error code, delegate handle or None); options: the process-wide ones.
    program: a handle from create_program, whose named data the delegate reads (its
    constants) and whose other delegates share its states and constants."""
    buf = ctypes.create_string_buffer(payload, len(payload))
    handle = ctypes.c_void_p()
    lib = load_backend_library()
    if program is None:
        rc = lib.cuda_gqa_delegate_init(buf, len(payload), ctypes.byref(handle))
    else:
        rc = lib.cuda_gqa_delegate_init_in_program(program, buf, len(payload), ctypes.byref(handle))
    return rc, handle.value if rc == ERROR_OK else None


def create_program(named_data: dict[str, bytes]) -> int:
    """A program (cuda_gqa_program_create) holding a copy of `named_data` (key -> bytes, what an
    ExecuTorch program's named data holds: payload constants by name). Destroy its delegates
    before it (destroy_program)."""
    items = [(key.encode(), bytes(data)) for key, data in named_data.items()]
    entries = (CudaGqaNamedData * max(len(items), 1))()
    buffers = [ctypes.create_string_buffer(data, len(data)) for _, data in items]  # alive for the call
    for entry, (key, data), buf in zip(entries, items, buffers):
        entry.key, entry.data, entry.size = key, ctypes.cast(buf, ctypes.c_void_p), len(data)
    program = load_backend_library().cuda_gqa_program_create(entries, len(items))
    if not program:
        raise ValueError("cuda_gqa_program_create refused the named data (its log line says why)")
    return program


def program_buffer_counts(program: int) -> tuple[int, int]:
    """(buffers the backend took from the program's named data, those it has not freed yet)."""
    taken, held = ctypes.c_size_t(0), ctypes.c_size_t(0)
    load_backend_library().cuda_gqa_program_buffer_counts(program, ctypes.byref(taken), ctypes.byref(held))
    return taken.value, held.value


def destroy_program(program: int | None) -> None:
    load_backend_library().cuda_gqa_program_destroy(program)


def live_constant_count() -> int:
    """Payload constants with a device copy in the C++ backend (one per program and name)."""
    return int(load_backend_library().cuda_gqa_live_constant_count())


def _require_dense(shape, strides) -> None:
    """Host memory is staged with one linear copy: only dense row-major strides describe it."""
    if 0 in tuple(shape):
        return  # nothing to copy: any strides do
    expected, dense = 1, True
    for size, stride in zip(reversed(shape), reversed(strides)):
        dense &= size <= 1 or stride == expected
        expected *= size
    if not dense:
        raise ValueError(f"host tensor of shape {tuple(shape)} with strides {tuple(strides)} is not dense and "
                         "row-major: pass a contiguous copy")


def host_tensor(array) -> CudaGqaTensor:
    """A numpy array, in host memory (dense and row-major, else ValueError)."""
    _require_dense(array.shape, [s // array.itemsize for s in array.strides])
    t = CudaGqaTensor(dtype=DTYPE_OF_NAME[str(array.dtype)], rank=array.ndim, data=array.ctypes.data, device=-1)
    for d in range(array.ndim):
        t.sizes[d], t.strides[d] = array.shape[d], array.strides[d] // array.itemsize
    return t


def torch_tensor(tensor) -> CudaGqaTensor:
    """A torch tensor, read and written in place: host memory for a CPU tensor (dense and row-major,
    else ValueError), else device memory."""
    if tensor.device.type == "cpu":
        _require_dense(tensor.shape, tensor.stride())
    t = CudaGqaTensor(dtype=DTYPE_OF_NAME[str(tensor.dtype).removeprefix("torch.")], rank=tensor.dim(),
                      data=tensor.data_ptr(), device=-1 if tensor.device.type == "cpu" else tensor.device.index)
    for d in range(tensor.dim()):
        t.sizes[d], t.strides[d] = tensor.shape[d], tensor.stride(d)
    return t


def arguments(tensors: list[CudaGqaTensor]):
    """The argument array execute takes; build it once to time executes alone."""
    return (CudaGqaTensor * len(tensors))(*tensors)


def execute(handle: int, tensors) -> int:
    """ExecuTorch error code of one execute on `tensors` (a list, or arguments(list))."""
    args = tensors if isinstance(tensors, ctypes.Array) else arguments(tensors)
    return load_backend_library().cuda_gqa_delegate_execute(handle, args, len(args))


def destroy(handle: int | None) -> None:
    load_backend_library().cuda_gqa_delegate_destroy(handle)


def loaded_module_count() -> int:
    """Modules the C++ backend's process-wide cache holds."""
    return int(load_backend_library().cuda_gqa_loaded_module_count())
