from .payload_serializer import (
    FILE_IDENTIFIER,
    PAYLOAD_VERSION,
    PayloadError,
    deserialize_payload,
    serialize_payload,
)

__all__ = [
    "FILE_IDENTIFIER",
    "PAYLOAD_VERSION",
    "PayloadError",
    "deserialize_payload",
    "serialize_payload",
]
