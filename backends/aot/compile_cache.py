"""On-disk cache of compiled kernels, so re-exporting a model does not recompile its cubins.

An entry is one file, `<cache dir>/<key>.kernel`, named by the compile key
(triton_to_cubin.compile_key: kernel source with its @triton.jit callees,
Triton version, arch, signature, constexprs, divisibility, options):

    MAGIC | header length (u32 LE) | JSON header | cubin | PTX (UTF-8)

The header repeats the key and holds the kernel's metadata and the sizes
and SHA-256 of the cubin and PTX. An entry that fails any check (truncated,
edited, another key, another format) is ignored, and the caller recompiles
and overwrites it: nothing from the cache is trusted unverified. Entries are
written to a temporary file in the cache dir and renamed into place, so
concurrent exports never see half an entry.

Location: $CUDA_GQA_CACHE_DIR, else ~/.cache/cuda_gqa. Delete the folder
to clear it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

from .compiled_kernel import CompiledKernel, EntryParam

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "CUDA_GQA_CACHE_DIR"
_MAGIC = b"cuda_gqa kernel cache 1\n"
_HEADER_LENGTH_BYTES = 4
_ELF_MAGIC = b"\x7fELF"
_INT_FIELDS = ("arch", "num_warps", "num_stages", "shared_mem_bytes", "global_scratch_bytes",
               "global_scratch_align", "profile_scratch_bytes", "profile_scratch_align")


def cache_dir() -> Path:
    """Where entries live: $CUDA_GQA_CACHE_DIR, else ~/.cache/cuda_gqa."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "cuda_gqa"


def _entry_path(key: str) -> Path:
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"cache key must be a SHA-256 hex digest, got {key!r}")
    return cache_dir() / f"{key}.kernel"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_entry(key: str, kernel: CompiledKernel) -> bytes:
    """The bytes of the cache entry holding `kernel` under `key`."""
    ptx = kernel.ptx.encode()
    header = {
        "key": key,
        "name": kernel.name,
        **{field: getattr(kernel, field) for field in _INT_FIELDS},
        "params": [[p.name, p.type, p.divisibility] for p in kernel.params],
        "cubin_bytes": len(kernel.cubin), "cubin_sha256": _sha256(kernel.cubin),
        "ptx_bytes": len(ptx), "ptx_sha256": _sha256(ptx),
    }
    header_bytes = json.dumps(header, sort_keys=True).encode()
    return (_MAGIC + len(header_bytes).to_bytes(_HEADER_LENGTH_BYTES, "little") + header_bytes
            + kernel.cubin + ptx)


def decode_entry(key: str, data: bytes) -> CompiledKernel:
    """The kernel an entry holds; ValueError naming the first check it fails."""
    if not data.startswith(_MAGIC):
        raise ValueError("not a cuda_gqa cache entry of this format")
    start = len(_MAGIC) + _HEADER_LENGTH_BYTES
    header_length = int.from_bytes(data[len(_MAGIC):start], "little")
    try:
        header = json.loads(data[start:start + header_length])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable header: {e}") from None
    if not isinstance(header, dict) or header.get("key") != key:
        raise ValueError("header names another key")
    body = data[start + header_length:]
    try:
        cubin_bytes, ptx_bytes = int(header["cubin_bytes"]), int(header["ptx_bytes"])
        if len(body) != cubin_bytes + ptx_bytes:
            raise ValueError(f"{len(body)} bytes of images, header says {cubin_bytes + ptx_bytes}")
        cubin, ptx = body[:cubin_bytes], body[cubin_bytes:]
        if _sha256(cubin) != header["cubin_sha256"] or _sha256(ptx) != header["ptx_sha256"]:
            raise ValueError("image checksum mismatch")
        if not cubin.startswith(_ELF_MAGIC):
            raise ValueError("cubin is not an ELF image")
        ints = {field: header[field] for field in _INT_FIELDS}
        if not all(type(v) is int for v in ints.values()):
            raise ValueError("non-integer metadata")
        params = tuple(EntryParam(str(name), str(type_), int(divisibility))
                       for name, type_, divisibility in header["params"])
        return CompiledKernel(name=str(header["name"]), cubin=bytes(cubin), ptx=ptx.decode(), params=params, **ints)
    except (KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed header: {e!r}") from None


def load(key: str) -> Optional[CompiledKernel]:
    """The cached kernel of `key`, or None when there is no valid entry."""
    path = _entry_path(key)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        logger.warning("cannot read compile cache entry %s (%s); recompiling", path, e)
        return None
    try:
        return decode_entry(key, data)
    except ValueError as e:
        logger.warning("ignoring corrupt compile cache entry %s (%s); recompiling", path, e)
        return None


def store(key: str, kernel: CompiledKernel) -> None:
    """Write the entry atomically; a cache that cannot be written only costs a warning."""
    path = _entry_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{key[:16]}.", suffix=".tmp",
                                         delete=False) as tmp:
            tmp.write(encode_entry(key, kernel))
        os.replace(tmp.name, path)
    except OSError as e:
        logger.warning("cannot write compile cache entry %s: %s", path, e)
        try:
            os.unlink(tmp.name)
        except (NameError, OSError):
            pass
