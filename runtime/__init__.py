"""cuda_gqa.runtime: the Python shim over the C++ backend library."""

from .backend_library import (
    BackendLibraryError,
    device_status,
    library_path,
    load_backend_library,
    validate_payload,
)

__all__ = [
    "BackendLibraryError",
    "device_status",
    "library_path",
    "load_backend_library",
    "validate_payload",
]
