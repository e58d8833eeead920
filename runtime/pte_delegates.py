"""What a .pte holds for CudaGqaBackend: its delegate payloads and the program's named data.

For tools and tests on the export machine (needs executorch): the payloads
and named data go to LaunchPlan / CubinLauncher as
`CubinLauncher(payload, named_data=named_data)`.
"""

from __future__ import annotations

BACKEND_ID = "CudaGqaBackend"


def cuda_gqa_delegates(pte: bytes) -> tuple[list[bytes], dict[str, bytes]]:
    """(payload of each CudaGqaBackend delegate in program order, named data key -> bytes)."""
    from executorch.exir._serialize._program import _extract_delegate_payload, deserialize_pte_binary

    payloads = []
    while (payload := _extract_delegate_payload(pte, BACKEND_ID, len(payloads))) is not None:
        payloads.append(bytes(payload))
    store = deserialize_pte_binary(pte).named_data
    named_data = {} if store is None else {key: bytes(store.buffers[entry.buffer_index])
                                           for key, entry in store.pte_data.items()}
    return payloads, named_data
