"""Rebuild a model's .ptd (ExecuTorch external weights) where it cannot travel, from its seed.

A llama3.2-1b .ptd is 2.5 GB (float16); a GPU run carries 64 MiB. But every
byte of it is either the file's leading part (header and flatbuffer: keys,
layouts, segment offsets; a few KiB), zero padding, or the bytes of a
parameter of the seeded preset, which `build_preset` recomputes bit for bit on
any machine (presets.seeded_values). So here, after export:

    describe_ptd(ptd, model, preset=..., seed=..., dtype=...)  # -> writes PTD.prefix and PTD.manifest.json

and on the GPU machine (torch only: nothing here or in what it imports needs
executorch):

    python3 -m cuda_gqa.export.llm.ptd_manifest rebuild PTD.manifest.json OUT.ptd [--device cuda]

rebuilds the model with the same preset, seed and dtype, writes the prefix,
then each data segment at its offset, and checks every segment's SHA-256
against the manifest: a mismatch fails naming the segments, and nothing is
left at OUT.ptd.

The manifest (JSON): the .ptd's size and SHA-256, the prefix file and its
SHA-256, the model (preset, seed, dtype), and per data segment its absolute
offset, size, SHA-256, the named-data keys that point at it, and its source:
a parameter name of the model's state dict and a layout ("as-is", or
"transposed" for a 2-D weight stored [in, out]).
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

MANIFEST_VERSION = 1
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


def describe_ptd(ptd: Union[str, Path], model: torch.nn.Module, *, preset: str, seed: int, dtype: str,
                 manifest: Optional[Path] = None) -> dict:
    """Writes PTD.prefix (the bytes before the first segment) and the manifest (default
    PTD.manifest.json) for `ptd`, a .ptd exported from `model` = build_preset(preset, seed=seed,
    dtype=dtype). Every data segment must be a parameter's bytes, as stored or transposed; one
    that is not fails here (the GPU machine could not rebuild it). Returns the manifest."""
    ptd = Path(ptd)
    with ptd.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        base, segments = _segments(data)
        digests = {offset: _sha256(data[offset:offset + size]) for offset, size, _ in segments}
        sources = {layout: None for layout in LAYOUTS}
        entries, unknown, cursor = [], [], base
        for offset, size, keys in sorted(segments):
            if offset < cursor or any(data[cursor:offset]):
                raise ValueError(f"{ptd}: bytes before the segment at {offset} are not zero padding")
            for layout in LAYOUTS:  # transposed copies are hashed only if some segment needs them
                if sources[layout] is None:
                    sources[layout] = _sources(model, layout)
                if digests[offset] in sources[layout]:
                    entries.append(dict(offset=offset, size=size, sha256=digests[offset], keys=keys,
                                        source=sources[layout][digests[offset]], layout=layout))
                    break
            else:
                unknown.append(f"{keys[:2]} ({size} bytes at {offset})")
            cursor = offset + size
        if unknown:
            raise ValueError(f"{ptd}: {len(unknown)} data segments match no parameter of the model: "
                             + "; ".join(unknown[:5]))
        if any(data[cursor:]):
            raise ValueError(f"{ptd}: bytes after the last segment are not zero padding")
        prefix = ptd.with_name(ptd.name + ".prefix")
        prefix.write_bytes(data[:base])
        file_digest = hashlib.sha256()
        for start in range(0, len(data), 1 << 26):
            file_digest.update(data[start:start + (1 << 26)])
        description = dict(version=MANIFEST_VERSION, ptd=ptd.name, size=len(data), sha256=file_digest.hexdigest(),
                           prefix=dict(file=prefix.name, size=base, sha256=_sha256(data[:base])),
                           model=dict(preset=preset, seed=seed, dtype=dtype), entries=entries)
    manifest = manifest or ptd.with_name(ptd.name + ".manifest.json")
    manifest.write_text(json.dumps(description, indent=1) + "\n")
    return description


def rebuild_ptd(manifest: Union[str, Path], out: Union[str, Path], model: Optional[torch.nn.Module] = None,
                device: Optional[str] = None, log=lambda message: None) -> dict:
    """Writes the .ptd `manifest` describes to `out`: its prefix (beside the manifest), then each
    segment from `model` (default: the manifest's preset rebuilt with its seed and dtype, the
    weights computed on `device`). Raises PtdRebuildError, leaving no file, when a segment's or
    the prefix's SHA-256 differs from the manifest's. Returns the manifest."""
    from .presets import build_preset

    manifest = Path(manifest)
    description = json.loads(manifest.read_text())
    if description.get("version") != MANIFEST_VERSION:
        raise PtdRebuildError(f"{manifest}: manifest version {description.get('version')}, expected "
                              f"{MANIFEST_VERSION}")
    prefix = (manifest.parent / description["prefix"]["file"]).read_bytes()
    if len(prefix) != description["prefix"]["size"] or _sha256(prefix) != description["prefix"]["sha256"]:
        raise PtdRebuildError(f"{manifest}: the prefix file differs from the one the manifest describes")
    if model is None:
        spec = description["model"]
        start = time.perf_counter()
        model = build_preset(spec["preset"], max_seq_len=8, dtype=DTYPES[spec["dtype"]], seed=spec["seed"],
                             device=device)
        log(f"built {spec['preset']} ({spec['dtype']}, seed {spec['seed']}) in {time.perf_counter() - start:.1f} s")
    state = model.state_dict()
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    mismatched = []
    start = time.perf_counter()
    try:
        with partial.open("wb") as f:
            f.write(prefix)
            for entry in sorted(description["entries"], key=lambda e: e["offset"]):
                if entry["source"] not in state or entry["layout"] not in LAYOUTS:
                    raise PtdRebuildError(f"{manifest}: unknown source {entry['source']!r} ({entry['layout']})")
                data = _tensor_bytes(state[entry["source"]], entry["layout"])
                if len(data) != entry["size"] or _sha256(data) != entry["sha256"]:
                    mismatched.append(f"{entry['source']} ({entry['layout']}, keys {entry['keys'][:2]})")
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
