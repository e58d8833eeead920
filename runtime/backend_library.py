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
    """$CUDA_GQA_BACKEND_LIB, else the CMake build folder of this checkout."""
    path = Path(os.environ.get(ENV_LIBRARY) or _REPO_BUILD_DIR / LIBRARY_NAME)
    if not path.is_file():
        raise BackendLibraryError(
            f"{path} not found: build it with `make build` or point {ENV_LIBRARY} at it"
        )
    return path


@lru_cache(maxsize=None)
def load_backend_library() -> ctypes.CDLL:
    """Load the backend library once; registers CudaGqaBackend with ExecuTorch."""
    lib = ctypes.CDLL(str(library_path()), mode=ctypes.RTLD_GLOBAL)
    lib.cuda_gqa_device_status.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.cuda_gqa_device_status.restype = ctypes.c_int
    lib.cuda_gqa_validate_payload.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    lib.cuda_gqa_validate_payload.restype = ctypes.c_int
    lib.cuda_gqa_payload_version.argtypes = []
    lib.cuda_gqa_payload_version.restype = ctypes.c_int
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
