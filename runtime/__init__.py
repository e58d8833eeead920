"""cuda_gqa.runtime: the Python shim over the C++ backend library."""

from .backend_library import (
    BackendLibraryError,
    device_status,
    get_backend_option,
    library_path,
    load_backend_library,
    profiled_kernel_time_ns,
    set_backend_option,
    validate_payload,
    zero_states,
)

__all__ = [
    "BackendLibraryError",
    "device_status",
    "get_backend_option",
    "library_path",
    "load_backend_library",
    "profiled_kernel_time_ns",
    "set_backend_option",
    "validate_payload",
    "zero_states",
]
