"""Weights outside the .pte: export_llm(external_weights=True), the .ptd manifest and its rebuild from
the seed without executorch, and the LLM runner's --data and --decode-at on such a program."""

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from executorch.runtime import Runtime

from cuda_gqa.export.llm import presets
from cuda_gqa.export.llm.pipeline import export_llm
from cuda_gqa.export.llm.presets import build_preset, seeded_values
from cuda_gqa.export.llm.ptd_manifest import PtdRebuildError, describe_ptd, ptd_contents, rebuild_ptd
from cuda_gqa.export.llm.reference import write_reference

from test_llm_runner import run

REPO = Path(__file__).resolve().parents[2]
PRESET, MAX_SEQ_LEN, PREFILL_LEN = "tiny-llama3", 24, 8


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """(eager model, folder with model.pte + model.ptd + its prefix and manifest): attention on the
    CPU, projections on XNNPACK, float32."""
    folder = tmp_path_factory.mktemp("external")
    model = build_preset(PRESET, max_seq_len=MAX_SEQ_LEN)
    result = export_llm(model, prefill_len=PREFILL_LEN, archs=None, out=folder / "model.pte", external_weights=True)
    assert result.ptd == folder / "model.ptd"
    describe_ptd(result.ptd, model, preset=PRESET, seed=0, dtype="float32")
    return model, folder


def _carried(folder: Path, to: Path) -> Path:
    """What travels to the GPU machine: the .pte, the prefix and the manifest, not the .ptd."""
    to.mkdir()
    for name in ("model.pte", "model.ptd.prefix", "model.ptd.manifest.json"):
        shutil.copy(folder / name, to / name)
    return to / "model.ptd.manifest.json"


def test_the_parameters_leave_the_pte(external):
    model, folder = external
    params = {id(p): p for p in model.parameters()}.values()
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    assert (folder / "model.ptd").stat().st_size >= param_bytes
    # Left in the .pte: the graph, the RoPE tables (2 x 24 x 16 floats) and small constants.
    assert (folder / "model.pte").stat().st_size < param_bytes / 2
    manifest = json.loads((folder / "model.ptd.manifest.json").read_text())
    assert {e["source"] for e in manifest["entries"]} >= {"embed_tokens.weight", "norm.weight",
                                                           "layers.1.mlp.down_proj.weight"}
    keys = [k for e in manifest["entries"] for k in e["keys"]]
    assert set(keys) == set(ptd_contents(folder / "model.ptd"))


def test_the_rebuilt_ptd_is_byte_identical(external, tmp_path):
    _, folder = external
    manifest = _carried(folder, tmp_path / "carried")
    rebuild_ptd(manifest, tmp_path / "rebuilt.ptd")
    assert (tmp_path / "rebuilt.ptd").read_bytes() == (folder / "model.ptd").read_bytes()


def test_rebuild_needs_no_executorch(external, tmp_path):
    """The GPU machine's path (build_preset, rebuild_ptd, the eager reference) with executorch (and
    safetensors) unimportable."""
    _, folder = external
    manifest = _carried(folder, tmp_path / "carried")
    code = textwrap.dedent(f"""
        import sys
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("executorch", "safetensors"):
                    raise ImportError(f"{{name}} is not on the GPU machine")
        sys.meta_path.insert(0, Blocker())
        sys.path.insert(0, {str(REPO / 'bench')!r})
        import llm_decode_speed  # the bench's own imports
        from cuda_gqa.export.llm.ptd_manifest import main
        from cuda_gqa.export.llm.reference import write_reference
        from cuda_gqa.export.llm.presets import build_preset
        assert main(["rebuild", {str(manifest)!r}, {str(tmp_path / 'rebuilt.ptd')!r}]) == 0
        write_reference(build_preset("{PRESET}", max_seq_len=16), {str(tmp_path / 'x.pte')!r}, 3, 5)
        assert not any(m.split(".")[0] == "executorch" for m in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "rebuilt.ptd").read_bytes() == (folder / "model.ptd").read_bytes()
    assert (tmp_path / "expected_logits.bin").stat().st_size == 3 * 256 * 4


def test_other_weights_are_refused_and_leave_no_file(external, tmp_path):
    _, folder = external
    manifest = _carried(folder, tmp_path / "carried")
    description = json.loads(manifest.read_text())
    description["model"]["seed"] = 1  # another model: every weight segment differs
    manifest.write_text(json.dumps(description))
    with pytest.raises(PtdRebuildError, match=r"weight segments differ from the exported ones"):
        rebuild_ptd(manifest, tmp_path / "rebuilt.ptd")
    assert not list(tmp_path.glob("rebuilt.ptd*"))
    description["model"]["seed"] = 0
    description["prefix"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(description))
    with pytest.raises(PtdRebuildError, match="prefix"):
        rebuild_ptd(manifest, tmp_path / "rebuilt.ptd")


def test_the_program_with_its_rebuilt_ptd_runs_like_eager(external, tmp_path):
    model, folder = external
    rebuild_ptd(_carried(folder, tmp_path / "carried"), tmp_path / "rebuilt.ptd")
    program = Runtime.get().load_program(folder / "model.pte", data_path=tmp_path / "rebuilt.ptd")
    prefill, decode = program.load_method("prefill"), program.load_method("decode")
    prompt = torch.arange(PREFILL_LEN).view(1, PREFILL_LEN) * 31 % 256
    model.reset_buffers()
    with torch.no_grad():
        expected = model(prompt, torch.tensor([0]))
        (logits,) = prefill.execute([prompt, torch.tensor([0])])
        torch.testing.assert_close(logits, expected[:, -1:], atol=1e-5, rtol=1e-4)  # prefill: the last row's
        token = logits[:, -1].argmax(-1, keepdim=True)
        expected = model(token, torch.tensor([PREFILL_LEN]))
        (logits,) = decode.execute([token, torch.tensor([PREFILL_LEN])])
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)


def test_runner_generates_like_eager_with_data(external, tmp_path):
    model, folder = external
    command = write_reference(model, folder / "model.pte", 6, 5, folder=tmp_path, data=folder / "model.ptd")
    assert f"--data {folder / 'model.ptd'}" in command
    result = run(*command.split()[1:])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tokens: 6 of 6 match eager before the first difference PASS" in result.stdout
    assert "attention: no CudaGqaBackend calls (attention on the CPU)" in result.stdout
    result = run(*command.replace(f" --data {folder / 'model.ptd'}", "").split()[1:])  # without its weights
    assert result.returncode == 2 and "needs --data FILE.ptd" in result.stderr


def test_runner_teacher_forcing_compares_every_row(external, tmp_path):
    model, folder = external
    command = write_reference(model, folder / "model.pte", 6, 5, folder=tmp_path, data=folder / "model.ptd")
    result = run(*command.split()[1:], "--teacher-forcing")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "over 6 rows, 0 elements outside" in result.stdout
    assert "tokens: 6 of 6 argmaxes match eager's tokens (teacher forcing" in result.stdout
    tokens = torch.frombuffer(bytearray((tmp_path / "expected_tokens.bin").read_bytes()), dtype=torch.int64).clone()
    tokens[5] = (tokens[5] + 1) % 256  # eager "chose" another last token (never fed): that row's argmax differs
    (tmp_path / "expected_tokens.bin").write_bytes(tokens.numpy().tobytes())
    result = run(*command.split()[1:], "--teacher-forcing")
    assert result.returncode == 1 and "tokens: 5 of 6 argmaxes match" in result.stdout, result.stdout
    assert "over 6 rows, 0 elements outside" in result.stdout
    result = run(folder / "model.pte", "--data", folder / "model.ptd", "--prompt", tmp_path / "prompt.bin",
                 "--teacher-forcing")
    assert result.returncode == 2 and "needs --expected-tokens" in result.stderr


def test_runner_times_decode_steps_at_a_position(external):
    _, folder = external
    result = run(folder / "model.pte", "--data", folder / "model.ptd", "--decode-at", 17, "--steps", 5,
                 "--warmup", 2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "decode-at: 5 steps at positions 17..21: median " in result.stdout
    assert "tokens/s" in result.stdout and "attention: no CudaGqaBackend calls" in result.stdout
    result = run(folder / "model.pte", "--data", folder / "model.ptd", "--decode-at", 20, "--steps", 5)
    assert result.returncode == 2 and "run past the program's max_seq_len 24" in result.stderr


def test_seeded_weights_are_pinned():
    """The generator is part of every exported manifest: the same seed must give the same bytes on
    every machine, today and later (a change here breaks .ptd rebuilds of earlier exports)."""
    model = build_preset(PRESET, max_seq_len=8)
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode() + tensor.numpy().tobytes())
    assert digest.hexdigest() == PINNED_TINY_LLAMA3
    values = seeded_values(10, seed=0, stream=0, scale=1.0)
    assert values.tolist() == PINNED_VALUES


def test_seeded_weights_do_not_depend_on_the_chunking(monkeypatch):
    whole = seeded_values(1000, seed=3, stream=7, scale=0.02)
    monkeypatch.setattr(presets, "_CHUNK", 64)
    assert torch.equal(seeded_values(1000, seed=3, stream=7, scale=0.02), whole)
    assert not torch.equal(seeded_values(1000, seed=3, stream=8, scale=0.02), whole)
    assert abs(float(whole.std()) - 0.02) < 0.002


PINNED_TINY_LLAMA3 = "a648ad13af1780c8557b27f3eb0c74196fbc43c6b4308e49c531ce35e866f661"
PINNED_VALUES = [-0.27049189805984497, 0.03311535343527794, 1.7667005062103271, 0.5347045660018921,
                 -0.2069522887468338, 1.4005627632141113, 1.8308007717132568, 0.07269679754972458,
                 1.861075520515442, 0.28817087411880493]
