"""A preset's whole decoder step lowered to CudaGqaBackend, bundled for a GPU machine without executorch.

    python bench/llm_whole_bundle.py .gpu-1b-whole      # here (make gpu-llm-1b-whole)
    python3 bench/llm_step.py --models llama3.2-1b --pte llama3.2-1b=.gpu-1b-whole/llama3.2-1b.pte --out $OUT

Writes to the folder:

- PRESET.pte: export_llm(whole_model=True, external_weights=True): each method
  (prefill of --prefill-len tokens, decode of one) is one CudaGqaBackend
  delegate from the embedding to the LM head, cubins for --archs, KV caches of
  --max-seq-len keys. A method whose step was not taken whole (attention only,
  the rest on the CPU) fails the export here, with the summary's reason;
- instead of PRESET.ptd (2.5 GB for llama3.2-1b in bfloat16: the weights as the
  fused plan reads them, norms folded in and projections stacked) its prefix,
  carried bytes (the RoPE tables) and manifest (export/llm/ptd_manifest.py).
  llm_step's --pte route finds PRESET.ptd.manifest.json beside the .pte,
  rebuilds PRESET.ptd from the preset's seeded weights (every SHA-256 checked)
  and deletes it after its runs; by hand:
  python3 -m cuda_gqa.export.llm.ptd_manifest rebuild DIR/PRESET.ptd.manifest.json DIR/PRESET.ptd;
- PRESET.json: what was exported, its sizes and how long each stage took.

The Makefile target copies the runner and the libraries it loads beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

PRESET = "llama3.2-1b"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MAX_SEQ_LEN = 4096  # llm_step's default --context
PREFILL_LEN = 512  # llm_step's default --prefill: its runner prefill is then one call


def _log(message: str) -> None:
    print(f"[llm_whole_bundle] {message}", flush=True)


def export_bundle(folder: Path, preset: str = PRESET, dtype: str = "bfloat16", max_seq_len: int = MAX_SEQ_LEN,
                  prefill_len: int = PREFILL_LEN, archs: tuple[str, ...] = ("sm_90",), keep_ptd: bool = False) -> dict:
    """Writes folder/PRESET.pte, its .ptd's prefix, carried bytes and manifest (the .ptd itself only
    with keep_ptd) and folder/PRESET.json; returns what PRESET.json holds. RuntimeError if a method's
    step did not go whole to CudaGqaBackend."""
    from cuda_gqa.export.llm.pipeline import export_llm
    from cuda_gqa.export.llm.presets import build_preset
    from cuda_gqa.export.llm.ptd_manifest import describe_ptd

    warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")
    warnings.filterwarnings("ignore", category=FutureWarning)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = build_preset(preset, max_seq_len=max_seq_len, dtype=DTYPES[dtype])
    build_s = time.perf_counter() - start
    _log(f"built {preset} ({dtype}, seeded weights, max_seq_len {max_seq_len}) in {build_s:.0f} s")
    result = export_llm(model, prefill_len=prefill_len, archs=list(archs), out=folder / f"{preset}.pte",
                        external_weights=True, whole_model=True, log=_log)
    _log(result.summary().replace("\n", "; "))
    partial = {m: why for m, why in result.model_reports.items() if not why.startswith("whole step")}
    if partial or not result.model_reports:
        raise RuntimeError(f"{preset}: not every method's step went whole to the GPU: {partial or 'no whole-step plan'}")
    start = time.perf_counter()
    manifest = describe_ptd(result.ptd, model, preset=preset, seed=0, dtype=dtype)
    describe_s = time.perf_counter() - start
    kinds = {kind: sum(kind in e for e in manifest["entries"]) for kind in ("source", "derived", "carried")}
    _log(f"{result.ptd.name}: {manifest['size'] / 2**20:.1f} MiB in {len(manifest['entries'])} segments "
         f"(parameters {kinds['source']}, derived {kinds['derived']}, carried {kinds['carried']}), described in "
         f"{describe_s:.0f} s")
    if not keep_ptd:
        result.ptd.unlink()
    info = dict(preset=preset, dtype=dtype, max_seq_len=max_seq_len, prefill_len=prefill_len, archs=list(archs),
                pte=result.pte.name, pte_bytes=result.size_bytes, ptd=result.ptd.name, ptd_bytes=manifest["size"],
                manifest=f"{result.ptd.name}.manifest.json", segments=kinds, methods=result.model_reports,
                build_seconds=round(build_s, 1), export_seconds=round(result.seconds, 1),
                describe_seconds=round(describe_s, 1))
    (folder / f"{preset}.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--preset", default=PRESET)
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--max-seq-len", type=int, default=MAX_SEQ_LEN)
    parser.add_argument("--prefill-len", type=int, default=PREFILL_LEN)
    parser.add_argument("--archs", default="sm_90")
    parser.add_argument("--keep-ptd", action="store_true", help="keep PRESET.ptd (to run the program here)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    info = export_bundle(args.folder, args.preset, args.dtype, args.max_seq_len, args.prefill_len,
                         tuple(args.archs.split(",")), args.keep_ptd)
    _log(f"bundle of {info['pte']} written to {args.folder} in {time.perf_counter() - start:.0f} s (model built in "
         f"{info['build_seconds']:.0f} s, exported in {info['export_seconds']:.0f} s, .ptd described in "
         f"{info['describe_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":  # the compile workers import this module: nothing runs on import
    sys.exit(main())
