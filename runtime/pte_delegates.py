"""What a .pte holds for CudaGqaBackend: its delegate payloads and the program's named data.

For tools and tests on the export machine (needs executorch): the payloads
and named data go to LaunchPlan / CubinLauncher as
`CubinLauncher(payload, named_data=named_data)`; the named data holds the
payloads' images stored by key and their constants (weights) by name.
"""

from __future__ import annotations

from typing import Optional

BACKEND_ID = "CudaGqaBackend"


def cuda_gqa_delegates(pte: bytes, ptd: Optional[bytes] = None) -> tuple[list[bytes], dict[str, bytes]]:
    """(payload of each CudaGqaBackend delegate in program order, named data key -> bytes).
    ptd: the external data file (.ptd) the program was exported with, if any (constants
    stored with an external tag): its entries join the .pte's, first as in ExecuTorch's
    runtime, which reads a key from the external data before the program's."""
    from executorch.exir._serialize._program import _extract_delegate_payload, deserialize_pte_binary

    payloads = []
    while (payload := _extract_delegate_payload(pte, BACKEND_ID, len(payloads))) is not None:
        payloads.append(bytes(payload))
    store = deserialize_pte_binary(pte).named_data
    named_data = {} if store is None else {key: bytes(store.buffers[entry.buffer_index])
                                           for key, entry in store.pte_data.items()}
    if ptd is not None:
        named_data.update(external_named_data(ptd))
    return payloads, named_data


def external_named_data(ptd: bytes) -> dict[str, bytes]:
    """The named data of a .ptd file (ExecuTorch's FlatTensor format): key -> bytes."""
    from executorch.exir._serialize._cord import Cord
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    data = FlatTensorSerializer().deserialize(Cord(ptd))
    return {key: bytes(data.buffers[entry.buffer_index]) for key, entry in data.named_data.items()}
