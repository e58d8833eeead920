"""The .ptd of a whole-step program (its weights as the fused plan reads them) described where it is
exported and rebuilt where it cannot travel, without executorch: bench/llm_whole_bundle.py's bundle."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cuda_gqa.backends.model.fuse import fold_name, stack_name
from cuda_gqa.export.llm.ptd_manifest import PtdRebuildError, ptd_contents, rebuild_ptd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from llm_whole_bundle import export_bundle  # noqa: E402

PRESET, MAX_SEQ_LEN, PREFILL_LEN = "tiny-llama3", 24, 8
PTE, PTD = f"{PRESET}.pte", f"{PRESET}.ptd"  # the names llm_step's --pte route looks for
CARRIED = (PTE, f"{PTD}.prefix", f"{PTD}.carried", f"{PTD}.manifest.json")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The bundle's folder (its .ptd kept, to compare with) and its manifest."""
    folder = tmp_path_factory.mktemp("whole")
    info = export_bundle(folder, PRESET, "float32", MAX_SEQ_LEN, PREFILL_LEN, ("sm_90",), keep_ptd=True)
    assert (info["pte"], info["ptd"], info["manifest"]) == (PTE, PTD, f"{PTD}.manifest.json")
    assert set(info["methods"]) == {"prefill", "decode"}
    return folder, json.loads((folder / f"{PTD}.manifest.json").read_text())


def _carried(folder: Path, to: Path) -> Path:
    """What travels to the GPU machine: everything but the .ptd."""
    to.mkdir()
    for name in CARRIED:
        shutil.copy(folder / name, to / name)
    return to / f"{PTD}.manifest.json"


def test_fused_constants_are_derived_and_buffers_carried(bundle):
    folder, manifest = bundle
    by_key = {key: entry for entry in manifest["entries"] for key in entry["keys"]}
    assert set(by_key) == set(ptd_contents(folder / PTD))
    qkv = stack_name([fold_name(f"layers.0.self_attn.{p}_proj.weight", "layers.0.input_layernorm.weight", 0.0)
                      for p in "qkv"])
    assert by_key[qkv]["derived"] == qkv  # norm folded into the stacked projections
    assert by_key["layers.0.self_attn.o_proj.weight"]["source"] == "layers.0.self_attn.o_proj.weight"
    assert {"rope_cos", "rope_sin"} <= {key for key, e in by_key.items() if "carried" in e}
    assert manifest["version"] == 2 and manifest["carried"]["size"] == 2 * MAX_SEQ_LEN * 16 * 4
    assert not any("source" not in e and "derived" not in e and "carried" not in e for e in manifest["entries"])


def test_rebuilt_without_executorch_byte_identical(bundle, tmp_path):
    """The GPU machine's path, executorch unimportable: the rebuilt .ptd is the exported one."""
    folder, _ = bundle
    manifest = _carried(folder, tmp_path / "carried")
    code = textwrap.dedent(f"""
        import sys
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("executorch", "safetensors"):
                    raise ImportError(f"{{name}} is not on the GPU machine")
        sys.meta_path.insert(0, Blocker())
        from cuda_gqa.export.llm.ptd_manifest import main
        assert main(["rebuild", {str(manifest)!r}, {str(tmp_path / 'rebuilt.ptd')!r}]) == 0
        assert not any(m.split(".")[0] == "executorch" for m in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "rebuilt.ptd").read_bytes() == (folder / PTD).read_bytes()


def test_a_wrong_derivation_or_carried_file_is_refused_and_leaves_no_file(bundle, tmp_path):
    folder, _ = bundle
    manifest = _carried(folder, tmp_path / "carried")
    description = json.loads(manifest.read_text())
    derived = next(e for e in description["entries"] if "derived" in e)
    derived["derived"] = derived["derived"].replace(",0.0)", ",1.0)")  # another fold: other bytes
    manifest.write_text(json.dumps(description))
    with pytest.raises(PtdRebuildError, match=r"1 of \d+ weight segments differ.*derived layers\.0\."):
        rebuild_ptd(manifest, tmp_path / "rebuilt.ptd")
    derived["derived"] = "layers.0.no_such.weight@rmsnorm(norm.weight,0.0)"
    manifest.write_text(json.dumps(description))
    with pytest.raises(PtdRebuildError, match="cannot derive 'layers.0.no_such.weight@rmsnorm"):
        rebuild_ptd(manifest, tmp_path / "rebuilt.ptd")
    assert not list(tmp_path.glob("rebuilt.ptd*"))
    _carried(folder, tmp_path / "again")
    (tmp_path / "again" / f"{PTD}.carried").write_bytes(b"\0" * description["carried"]["size"])
    with pytest.raises(PtdRebuildError, match="the carried file differs"):
        rebuild_ptd(tmp_path / "again" / f"{PTD}.manifest.json", tmp_path / "rebuilt.ptd")


def test_a_newer_manifest_version_is_refused(bundle, tmp_path):
    folder, _ = bundle
    manifest = _carried(folder, tmp_path / "carried")
    description = json.loads(manifest.read_text())
    description["version"] = 3
    manifest.write_text(json.dumps(description))
    with pytest.raises(PtdRebuildError, match="manifest version 3, this rebuild reads versions 1, 2"):
        rebuild_ptd(manifest, tmp_path / "rebuilt.ptd")


def test_the_bundle_is_what_llm_step_rebuilds(bundle, tmp_path):
    """llm_step's --pte route: the .ptd rebuilt beside the .pte from PTE.ptd.manifest.json, then deleted."""
    import llm_step

    folder, _ = bundle
    _carried(folder, tmp_path / "carried")
    pte = tmp_path / "carried" / PTE
    with llm_step.program_data(pte, torch.device("cpu")) as data:
        assert data == pte.with_suffix(".ptd")
        assert data.read_bytes() == (folder / PTD).read_bytes()
    assert not data.exists()
