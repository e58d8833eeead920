from .payload_serializer import (
    FILE_IDENTIFIER,
    OLDEST_PAYLOAD_VERSION,
    PAYLOAD_VERSION,
    PROGRAMMATIC_LAUNCH_ARCH,
    PayloadError,
    deserialize_payload,
    serialize_payload,
)

__all__ = [
    "FILE_IDENTIFIER",
    "OLDEST_PAYLOAD_VERSION",
    "PAYLOAD_VERSION",
    "PROGRAMMATIC_LAUNCH_ARCH",
    "PayloadError",
    "deserialize_payload",
    "serialize_payload",
]
