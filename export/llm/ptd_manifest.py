"""Rebuild a model's .ptd (ExecuTorch external weights) where it cannot travel, from its seed.

A llama3.2-1b .ptd is 2.5 GB (float16); a GPU run carries 64 MiB. But every
byte of it is either the file's leading part (header and flatbuffer: keys,
layouts, segment offsets; a few KiB), zero padding, the bytes of a parameter
of the seeded preset, which `build_preset` recomputes bit for bit on any
machine (presets.seeded_values), a constant a whole-step program made from
them (a fused weight), or a small buffer whose bytes travel. So here, after
export:

    describe_ptd(ptd, model, preset=..., seed=..., dtype=...)  # -> PTD.prefix, [PTD.carried,] PTD.manifest.json

and on the GPU machine (torch only: nothing here or in what it imports needs
executorch):

    python3 -m cuda_gqa.export.llm.ptd_manifest rebuild PTD.manifest.json OUT.ptd [--device cuda]

rebuilds the model with the same preset, seed and dtype, writes the prefix,
then each data segment at its offset (made as its source says, below), and checks every segment's SHA-256
against the manifest: a mismatch fails naming the segments, and nothing is
left at OUT.ptd.

The manifest (JSON): the .ptd's size and SHA-256, the prefix file and its
SHA-256, the model (preset, seed, dtype), and per data segment its absolute
offset, size, SHA-256, the named-data keys that point at it, and its source,
one of:

- "source" + "layout": a parameter name of the model's state dict, "as-is" or
  "transposed" (a 2-D weight stored [in, out]; the attention-only programs);
- "derived": a constant of a fused whole-step plan (backends/model/fuse.py: a
  weight with its RMSNorm folded in, projections stacked), named by how it
  is made from the parameters; the rebuild makes it again with
  fuse.derive_constant (elementwise float math and concatenation: the same
  bits on any machine);
- "carried": the offset of its bytes in PTD.carried, a file that travels
  beside the prefix: a buffer the whole-step program reads as a constant
  (the RoPE tables: computed with cos/sin, whose last bit may differ between
  torch builds and CPUs, and depending on max_seq_len; a MiB or so).

Version 1 manifests (parameters only) are written as before and still
rebuild; a manifest with a derived or carried segment is version 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import sys
import time
from pathlib import Path
from typing import Optional, Union

import torch

from cuda_gqa.backends.model.fuse import derive_constant  # torch only, like everything the rebuild imports

MANIFEST_VERSION = 2
VERSIONS = (1, 2)  # what rebuild_ptd reads: version 1 knows parameter segments only
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LAYOUTS = ("as-is", "transposed")


class PtdRebuildError(RuntimeError):
    pass


def _tensor_bytes(tensor: torch.Tensor, layout: str) -> memoryview:
    if layout == "transposed":
        tensor = tensor.t()
    return memoryview(tensor.detach().cpu().contiguous().view(torch.uint8).numpy()).cast("B")


def _sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def _segments(data) -> tuple[int, list[tuple[int, int, list[str]]]]:
    """(segment_base_offset, [(offset in the file, size, [keys])]) of the .ptd bytes `data`, read
    with ExecuTorch's own FlatTensor deserializer (here only: the rebuild side never parses it)."""
    from executorch.extension.flat_tensor.serialize.serialize import (
        _deserialize_to_flat_tensor,
        _get_extended_header,
    )

    header = _get_extended_header(bytes(data[:64]))
    if header is None:
        raise ValueError("not a FlatTensor (.ptd) file: no extended header")
    if header.segment_base_offset + header.segment_data_size != len(data):
        raise ValueError(f"segment data ends at {header.segment_base_offset + header.segment_data_size}, "
                         f"the file has {len(data)} bytes")
    flat = _deserialize_to_flat_tensor(bytes(data[:header.segment_base_offset]))  # the flatbuffer is in there
    keys: dict[int, list[str]] = {}
    for named in flat.named_data:
        keys.setdefault(named.segment_index, []).append(named.key)
    return header.segment_base_offset, [(header.segment_base_offset + s.offset, s.size, keys.get(i, []))
                                        for i, s in enumerate(flat.segments)]


def ptd_contents(ptd: Union[str, Path]) -> dict[str, tuple[str, str]]:
    """key -> (SHA-256 of its data, its tensor layout) of a .ptd: two files with equal contents
    serve the same programs, whatever order their segments are in (here only: needs executorch)."""
    from executorch.extension.flat_tensor.serialize.serialize import _deserialize_to_flat_tensor

    with Path(ptd).open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        base, segments = _segments(data)
        flat = _deserialize_to_flat_tensor(bytes(data[:base]))
        digests = [_sha256(data[offset:offset + size]) for offset, size, _ in segments]
        return {named.key: (digests[named.segment_index], repr(named.tensor_layout)) for named in flat.named_data}


def _sources(model: torch.nn.Module, layout: str) -> dict[str, str]:
    """sha256 -> state-dict name of every parameter's bytes in `layout` (2-D ones only when
    transposed). Buffers (RoPE tables, caches) are not sources: they stay in the .pte."""
    found, seen = {}, set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if not isinstance(tensor, torch.nn.Parameter) or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if layout == "as-is" or tensor.dim() == 2:
            found.setdefault(_sha256(_tensor_bytes(tensor, layout)), name)
    return found


def _named_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a fused plan's constants are made from: the program's parameters and buffers by name."""
    return dict(model.named_buffers()) | model.state_dict()


class _Reads(dict):
    """_named_tensors that remembers which names were read (what a derived constant is made of)."""

    def __init__(self, tensors: dict):
        super().__init__(tensors)
        self.names: set[str] = set()

    def __getitem__(self, name):
        self.names.add(name)
        return super().__getitem__(name)


def _derivation(keys: list[str], tensors: dict, buffers: set[str], digest: str):
    """("derived", key) if fuse.derive_constant(key) over the parameters alone makes bytes of SHA-256
    `digest`; ("carried", bytes) if it does from a buffer (the bytes travel); None if no key does."""
    for key in keys:
        reads = _Reads(tensors)
        try:
            data = _tensor_bytes(derive_constant(key, reads), "as-is")
        except (KeyError, ValueError, RuntimeError, IndexError):
            continue  # not a name derive_constant reads (or not of this model)
        if _sha256(data) == digest:
            return ("carried", bytes(data)) if reads.names & buffers else ("derived", key)
    return None


def describe_ptd(ptd: Union[str, Path], model: torch.nn.Module, *, preset: str, seed: int, dtype: str,
                 manifest: Optional[Path] = None) -> dict:
    """Writes PTD.prefix (the bytes before the first segment), PTD.carried if some segment is a
    buffer, and the manifest (default PTD.manifest.json) for `ptd`, a .ptd exported from `model` =
    build_preset(preset, seed=seed, dtype=dtype). Every data segment must be a parameter's bytes
    (as stored or transposed), a fused constant made from them, or a buffer; one that is none of
    these fails here (the GPU machine could not rebuild it). Returns the manifest."""
    ptd = Path(ptd)
    tensors = _named_tensors(model)
    buffers = {name for name, _ in model.named_buffers()}
    carried = bytearray()
    with ptd.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        base, segments = _segments(data)
        digests = {offset: _sha256(data[offset:offset + size]) for offset, size, _ in segments}
        sources = {"as-is": _sources(model, "as-is"), "transposed": None}
        entries, unknown, cursor = [], [], base
        for offset, size, keys in sorted(segments):
            if offset < cursor or any(data[cursor:offset]):
                raise ValueError(f"{ptd}: bytes before the segment at {offset} are not zero padding")
            entry = dict(offset=offset, size=size, sha256=digests[offset], keys=keys)
            cursor = offset + size
            if digests[offset] in sources["as-is"]:
                entries.append(dict(entry, source=sources["as-is"][digests[offset]], layout="as-is"))
                continue
            derivation = _derivation(keys, tensors, buffers, digests[offset])
            if derivation is not None and derivation[0] == "derived":
                entries.append(dict(entry, derived=derivation[1]))
                continue
            if derivation is not None:
                entries.append(dict(entry, carried=len(carried)))
                carried += derivation[1]
                continue
            if sources["transposed"] is None:  # transposed copies are hashed only if some segment needs them
                sources["transposed"] = _sources(model, "transposed")
            if digests[offset] in sources["transposed"]:
                entries.append(dict(entry, source=sources["transposed"][digests[offset]], layout="transposed"))
                continue
            unknown.append(f"{keys[:2]} ({size} bytes at {offset})")
        if unknown:
            raise ValueError(f"{ptd}: {len(unknown)} data segments match no parameter of the model, no constant "
                             f"derived from them and no buffer: " + "; ".join(unknown[:5]))
        if any(data[cursor:]):
            raise ValueError(f"{ptd}: bytes after the last segment are not zero padding")
        prefix = ptd.with_name(ptd.name + ".prefix")
        prefix.write_bytes(data[:base])
        file_digest = hashlib.sha256()
        for start in range(0, len(data), 1 << 26):
            file_digest.update(data[start:start + (1 << 26)])
        plain = all("source" in entry for entry in entries)
        description = dict(version=1 if plain else MANIFEST_VERSION, ptd=ptd.name, size=len(data),
                           sha256=file_digest.hexdigest(),
                           prefix=dict(file=prefix.name, size=base, sha256=_sha256(data[:base])),
                           model=dict(preset=preset, seed=seed, dtype=dtype), entries=entries)
    if carried:
        carried_file = ptd.with_name(ptd.name + ".carried")
        carried_file.write_bytes(carried)
        description["carried"] = dict(file=carried_file.name, size=len(carried), sha256=_sha256(carried))
    manifest = manifest or ptd.with_name(ptd.name + ".manifest.json")
    manifest.write_text(json.dumps(description, indent=1) + "\n")
    return description


def _checked_file(manifest: Path, spec: dict, what: str) -> bytes:
    """The bytes of the file `spec` names beside the manifest, if its size and SHA-256 are spec's."""
    path = manifest.parent / spec["file"]
    if not path.exists():
        raise PtdRebuildError(f"{manifest}: no {what} file {path}")
    data = path.read_bytes()
    if len(data) != spec["size"] or _sha256(data) != spec["sha256"]:
        raise PtdRebuildError(f"{manifest}: the {what} file differs from the one the manifest describes")
    return data


def _source_name(entry: dict) -> str:
    if "derived" in entry:
        return f"derived {entry['derived']}"
    if "carried" in entry:
        return f"carried bytes at {entry['carried']}"
    return f"{entry.get('source')} ({entry.get('layout')})"


def _entry_bytes(manifest: Path, entry: dict, tensors: dict, carried: bytes):
    """A segment's bytes, made as its source says."""
    if "derived" in entry:
        try:
            return _tensor_bytes(derive_constant(entry["derived"], tensors), "as-is")
        except (KeyError, ValueError, RuntimeError, IndexError) as e:
            raise PtdRebuildError(f"{manifest}: cannot derive {entry['derived']!r} from the model: "
                                  f"{type(e).__name__}: {e}") from None
    if "carried" in entry:
        start = entry["carried"]
        if start + entry["size"] > len(carried):
            raise PtdRebuildError(f"{manifest}: carried bytes {start}..{start + entry['size']} are past the "
                                  f"carried file's {len(carried)}")
        return memoryview(carried)[start:start + entry["size"]]
    if entry.get("source") not in tensors or entry.get("layout") not in LAYOUTS:
        raise PtdRebuildError(f"{manifest}: unknown source {_source_name(entry)}")
    return _tensor_bytes(tensors[entry["source"]], entry["layout"])


def rebuild_ptd(manifest: Union[str, Path], out: Union[str, Path], model: Optional[torch.nn.Module] = None,
                device: Optional[str] = None, log=lambda message: None) -> dict:
    """Writes the .ptd `manifest` describes to `out`: its prefix (beside the manifest), then each
    segment from `model` (default: the manifest's preset rebuilt with its seed and dtype, the
    weights computed on `device`): a parameter, a fused constant derived from them, or bytes of
    the carried file beside the manifest. Raises PtdRebuildError, leaving no file, when a
    segment's, the prefix's or the carried file's SHA-256 differs from the manifest's. Returns
    the manifest."""
    from .presets import build_preset

    manifest = Path(manifest)
    description = json.loads(manifest.read_text())
    if description.get("version") not in VERSIONS:
        raise PtdRebuildError(f"{manifest}: manifest version {description.get('version')}, this rebuild reads "
                              f"versions {', '.join(map(str, VERSIONS))}")
    prefix = _checked_file(manifest, description["prefix"], "prefix")
    carried = _checked_file(manifest, description["carried"], "carried") if "carried" in description else b""
    if model is None:
        spec = description["model"]
        start = time.perf_counter()
        model = build_preset(spec["preset"], max_seq_len=8, dtype=DTYPES[spec["dtype"]], seed=spec["seed"],
                             device=device)
        log(f"built {spec['preset']} ({spec['dtype']}, seed {spec['seed']}) in {time.perf_counter() - start:.1f} s")
    tensors = _named_tensors(model)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    mismatched = []
    start = time.perf_counter()
    try:
        with partial.open("wb") as f:
            f.write(prefix)
            for entry in sorted(description["entries"], key=lambda e: e["offset"]):
                data = _entry_bytes(manifest, entry, tensors, carried)
                if len(data) != entry["size"] or _sha256(data) != entry["sha256"]:
                    mismatched.append(f"{_source_name(entry)}, keys {entry['keys'][:2]}")
                f.write(b"\0" * (entry["offset"] - f.tell()))
                f.write(data)
            f.write(b"\0" * (description["size"] - f.tell()))
            if f.tell() != description["size"]:
                raise PtdRebuildError(f"{out}: {f.tell()} bytes written, the manifest says {description['size']}")
        if mismatched:
            raise PtdRebuildError(
                f"{len(mismatched)} of {len(description['entries'])} weight segments differ from the exported "
                f"ones (this machine's seeded weights are not the export machine's): " + "; ".join(mismatched[:5]))
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    log(f"wrote {out} ({description['size'] / 2**20:.1f} MiB, {len(description['entries'])} segments, every "
        f"SHA-256 as exported) in {time.perf_counter() - start:.1f} s")
    return description


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cuda_gqa.export.llm.ptd_manifest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rebuild = sub.add_parser("rebuild", help="write the .ptd a manifest describes (torch only)")
    rebuild.add_argument("manifest", type=Path)
    rebuild.add_argument("out", type=Path)
    rebuild.add_argument("--device", help="where to compute the seeded weights (e.g. cuda; default cpu)")
    args = parser.parse_args(argv)
    try:
        rebuild_ptd(args.manifest, args.out, device=args.device, log=lambda m: print(f"[ptd] {m}", flush=True))
    except PtdRebuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
