"""Finds and loads libcuda_gqa_backend.so into this process.

Loading it with RTLD_GLOBAL registers "CudaGqaBackend" with the ExecuTorch
runtime that the executorch Python package uses (both link the wheel's
libexecutorch.so), so programs loaded afterwards can run their delegates.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path

LIBRARY_NAME = "libcuda_gqa_backend.so"
ENV_LIBRARY = "CUDA_GQA_BACKEND_LIB"
_REPO_BUILD_DIR = Path(__file__).resolve().parent.parent / "build"


class BackendLibraryError(RuntimeError):
    pass


def library_path() -> Path:
    """$CUDA_GQA_BACKEND_LIB, else the CMake build folder of this checkout, else its GPU
    bundle (.gpu/, from `make gpu-bundle`: the library with ExecuTorch's beside it)."""
    if os.environ.get(ENV_LIBRARY):
        candidates = [Path(os.environ[ENV_LIBRARY])]
    else:
        candidates = [_REPO_BUILD_DIR / LIBRARY_NAME, _REPO_BUILD_DIR.parent / ".gpu" / LIBRARY_NAME]
    for path in candidates:
        if path.is_file():
            return path
    raise BackendLibraryError(
        f"{' or '.join(map(str, candidates))} not found: build it with `make build` or point {ENV_LIBRARY} at it"
    )


@lru_cache(maxsize=None)
def zero_states() -> None:
    """Zeroes every delegate-owned state (KV caches) the C++ backend holds in this process.
    Not needed to start a new sequence at position 0: rows past the filled length are never read."""
    message = ctypes.create_string_buffer(512)
    if load_backend_library().cuda_gqa_zero_states(message, len(message)) != 0:
        raise RuntimeError(f"CudaGqaBackend: zeroing the states failed: {message.value.decode()}")


def load_backend_library() -> ctypes.CDLL:
    """Load the backend library once; registers CudaGqaBackend with ExecuTorch."""
    lib = ctypes.CDLL(str(library_path()), mode=ctypes.RTLD_GLOBAL)
    lib.cuda_gqa_device_status.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.cuda_gqa_device_status.restype = ctypes.c_int
    lib.cuda_gqa_validate_payload.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    lib.cuda_gqa_validate_payload.restype = ctypes.c_int
    lib.cuda_gqa_payload_version.argtypes = []
    lib.cuda_gqa_payload_version.restype = ctypes.c_int
    lib.cuda_gqa_set_option.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
    lib.cuda_gqa_set_option.restype = ctypes.c_int
    lib.cuda_gqa_get_option.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                                        ctypes.c_char_p, ctypes.c_size_t]
    lib.cuda_gqa_get_option.restype = ctypes.c_int
    lib.cuda_gqa_profiled_kernel_time_ns.argtypes = []
    lib.cuda_gqa_profiled_kernel_time_ns.restype = ctypes.c_uint64
    lib.cuda_gqa_live_state_count.argtypes = []
    lib.cuda_gqa_live_state_count.restype = ctypes.c_size_t
    lib.cuda_gqa_zero_states.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.cuda_gqa_zero_states.restype = ctypes.c_int
    lib.cuda_gqa_loaded_module_count.argtypes = []
    lib.cuda_gqa_loaded_module_count.restype = ctypes.c_size_t
    lib.cuda_gqa_delegate_init.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
    lib.cuda_gqa_delegate_init.restype = ctypes.c_int
    lib.cuda_gqa_delegate_execute.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.cuda_gqa_delegate_execute.restype = ctypes.c_int
    lib.cuda_gqa_delegate_destroy.argtypes = [ctypes.c_void_p]
    lib.cuda_gqa_delegate_destroy.restype = None
    lib.cuda_gqa_live_constant_count.argtypes = []
    lib.cuda_gqa_live_constant_count.restype = ctypes.c_size_t
    lib.cuda_gqa_program_create.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.cuda_gqa_program_create.restype = ctypes.c_void_p
    lib.cuda_gqa_delegate_init_in_program.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                                      ctypes.POINTER(ctypes.c_void_p)]
    lib.cuda_gqa_delegate_init_in_program.restype = ctypes.c_int
    lib.cuda_gqa_program_buffer_counts.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                                   ctypes.POINTER(ctypes.c_size_t)]
    lib.cuda_gqa_program_buffer_counts.restype = None
    lib.cuda_gqa_program_destroy.argtypes = [ctypes.c_void_p]
    lib.cuda_gqa_program_destroy.restype = None
    return lib


def device_status() -> tuple[bool, str]:
    """(usable, description): the GPU the backend would run on, or why there is none."""
    message = ctypes.create_string_buffer(512)
    rc = load_backend_library().cuda_gqa_device_status(message, len(message))
    return rc == 0, message.value.decode(errors="replace")


def validate_payload(data: bytes) -> str | None:
    """None if the C++ runtime accepts this payload, else its reason."""
    message = ctypes.create_string_buffer(512)
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    rc = load_backend_library().cuda_gqa_validate_payload(buf, len(data), message, len(message))
    return None if rc == 0 else message.value.decode(errors="replace")


# Value kinds of cuda_gqa_set_option / cuda_gqa_get_option (cuda_gqa_c_api.h).
_OPTION_BOOL, _OPTION_INT, _OPTION_STRING = 0, 1, 2
# Each option's type (runtime/cpp/backend_options.h documents them).
BACKEND_OPTION_TYPES = {"device": int, "stream": str, "synchronize": bool, "profile": bool,
                        "launch_graphs": bool, "programmatic_launch": bool}


def set_backend_option(key: str, value: bool | int | str) -> None:
    """Sets a process-wide CudaGqaBackend option through ExecuTorch's set_option; it applies
    to delegates initialised afterwards. "stream" takes the CUstream handle as a string
    (e.g. str(torch.cuda.current_stream().cuda_stream)). Raises ValueError when the backend
    refuses the value (its log line on stderr names the cause)."""
    if isinstance(value, bool):
        kind, number, text = _OPTION_BOOL, int(value), None
    elif isinstance(value, int):
        kind, number, text = _OPTION_INT, value, None
    elif isinstance(value, str):
        kind, number, text = _OPTION_STRING, 0, value.encode()
    else:
        raise TypeError(f"option {key!r}: {type(value).__name__} is not a bool, int or str")
    if kind == _OPTION_INT and not -(2**31) <= number < 2**31:
        raise ValueError(f"option {key!r}: {number} does not fit ExecuTorch's int option")
    rc = load_backend_library().cuda_gqa_set_option(key.encode(), kind, number, text)
    if rc != 0:
        raise ValueError(f"CudaGqaBackend refused option {key!r}={value!r} (executorch error {rc:#x})")


def get_backend_option(key: str) -> bool | int | str:
    """The process-wide value of a CudaGqaBackend option, read through ExecuTorch's get_option."""
    if key not in BACKEND_OPTION_TYPES:
        raise KeyError(f"unknown CudaGqaBackend option {key!r} (known: {', '.join(BACKEND_OPTION_TYPES)})")
    kind = {bool: _OPTION_BOOL, int: _OPTION_INT, str: _OPTION_STRING}[BACKEND_OPTION_TYPES[key]]
    number, text = ctypes.c_int(0), ctypes.create_string_buffer(256)
    rc = load_backend_library().cuda_gqa_get_option(key.encode(), kind, ctypes.byref(number), text, len(text))
    if rc != 0:
        raise ValueError(f"CudaGqaBackend get_option({key!r}) failed (executorch error {rc:#x})")
    if kind == _OPTION_STRING:
        return text.value.decode()
    return bool(number.value) if kind == _OPTION_BOOL else number.value


def profiled_kernel_time_ns() -> int:
    """Kernel time of every execute run with the "profile" option, summed since loading."""
    return int(load_backend_library().cuda_gqa_profiled_kernel_time_ns())
