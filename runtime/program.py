"""Load a .pte with CudaGqaBackend registered and call its methods on torch tensors.

    from cuda_gqa.runtime.program import load_method
    forward = load_method("model.pte")          # registers the backend, loads the method once
    (out,) = forward.execute([q, k, v])          # ExecuTorch's Method: CPU torch tensors in and out
"""

from __future__ import annotations

from pathlib import Path

from .backend_library import device_status, load_backend_library


def load_method(pte: str | Path, method: str = "forward"):
    """ExecuTorch's Method `method` of the program at `pte`, its delegates initialised.

    Raises FileNotFoundError, ValueError for a method the program lacks, and
    RuntimeError naming this machine's GPU status when a delegate refuses to
    initialise (no GPU, no cubin for it, a corrupt payload: the backend logs the cause).
    """
    pte = Path(pte)
    if not pte.is_file():
        raise FileNotFoundError(f"{pte}: no such program")
    load_backend_library()
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(pte)
    if method not in program.method_names:
        raise ValueError(f"{pte} has no method {method!r} (it has {', '.join(sorted(program.method_names))})")
    try:
        return program.load_method(method)
    except RuntimeError as e:
        usable, device = device_status()
        gpu = device if usable else f"no usable GPU: {device}"
        raise RuntimeError(f"{pte}: method {method!r} failed to load ({gpu}); see the CudaGqaBackend log "
                           f"line above for the cause") from e
