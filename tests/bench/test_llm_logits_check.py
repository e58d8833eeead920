"""bench/llm_logits_check.py: an exported program's logits against float32 eager, read from the runner's
--logits-out and reported against the stated tolerance. The runner here is a stand-in that writes
given logits; the float32 reference is given too (the GPU machine computes both for real)."""

import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import llm_logits_check  # noqa: E402

NEW_TOKENS, VOCAB = 4, 256

FAKE_RUNNER = """#!/bin/sh
echo "$@" > "$(dirname "$0")/call.txt"
while [ $# -gt 0 ]; do
  if [ "$1" = --logits-out ]; then cp "$(dirname "$0")/logits.bin" "$2"; fi
  shift
done
"""


def run(tmp_path, monkeypatch, offset: float) -> tuple[int, str]:
    expected = torch.randn(NEW_TOKENS, VOCAB, generator=torch.Generator().manual_seed(0)) * 5
    monkeypatch.setattr(llm_logits_check, "eager_reference",
                        lambda args: (torch.arange(8), expected.argmax(1).tolist(), expected))
    folder = tmp_path / "bundle"
    folder.mkdir()
    (expected + offset).numpy().astype(np.float32).tofile(folder / "logits.bin")
    runner = folder / llm_logits_check.RUNNER
    runner.write_text(FAKE_RUNNER)
    runner.chmod(runner.stat().st_mode | stat.S_IEXEC)
    (folder / "model.pte").write_bytes(b"not read")
    (folder / "model.ptd").write_bytes(b"")
    out = tmp_path / "out"
    code = llm_logits_check.main(["--model", "tiny-llama3", "--pte", str(folder / "model.pte"), "--max-seq-len", "32",
                                  "--prompt-len", "8", "--new-tokens", str(NEW_TOKENS), "--out", str(out)])
    call = (folder / "call.txt").read_text()
    assert "--teacher-forcing" in call and f"--data {folder / 'model.ptd'}" in call
    return code, (out / "llm_logits_check.md").read_text()


def test_logits_within_the_tolerance_pass(tmp_path, monkeypatch):
    code, report = run(tmp_path, monkeypatch, 0.01)
    assert code == 0
    assert "| largest absolute difference | 0.0100 |" in report
    assert f"| rows whose greedy token agrees | {NEW_TOKENS} of {NEW_TOKENS} |" in report
    assert "within the stated tolerance: yes" in report


def test_logits_outside_the_tolerance_fail_and_say_how_many(tmp_path, monkeypatch):
    code, report = run(tmp_path, monkeypatch, 1.0)
    assert code == 1
    assert "within the stated tolerance: no" in report
    outside = int(report.split("abs(eager) | ")[1].split(" of")[0])
    assert 0 < outside <= NEW_TOKENS * VOCAB


@pytest.mark.parametrize("argv, message", [
    (["--prompt-len", "0"], "--prompt-len must be at least 1"),
    (["--prompt-len", "30", "--new-tokens", "8", "--max-seq-len", "32"], "exceed --max-seq-len"),
])
def test_bad_arguments_are_refused_with_the_reason(tmp_path, argv, message, capsys):
    pte = tmp_path / "model.pte"
    pte.write_bytes(b"")
    with pytest.raises(SystemExit):
        llm_logits_check.parse_args(["--model", "tiny-llama3", "--pte", str(pte), "--out", str(tmp_path), *argv])
    assert message in capsys.readouterr().err
