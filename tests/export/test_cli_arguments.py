"""The export CLIs check every argument before any work: a bad value ends the command with exit status 2
and one line naming the flag and what it accepts, never a traceback or a silent default."""

from __future__ import annotations

import pytest

from cuda_gqa.export.__main__ import parse_args as demo_args
from cuda_gqa.export.llm.__main__ import parse_args as llm_args


def refusal(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


DEMO_REFUSALS = {
    "seq-len 0": (["--seq-len", "0"], "argument --seq-len: 0 is outside the accepted range 1 to"),
    "batch 0": (["--batch", "0"], "argument --batch: 0 is outside the accepted range 1 to"),
    "heads-kv 0": (["--heads-kv", "0"], "argument --heads-kv: 0 is outside the accepted range 1 to"),
    "heads-kv not a divisor": (["--heads-kv", "3"], "argument --heads-kv: 3 does not divide --heads-q 8"),
    "head-dim 60": (["--head-dim", "60"], "argument --head-dim: 60: accepted a multiple of 16 from 16 to 256"),
    "kv-len -1": (["--kv-len", "-1"], "argument --kv-len: -1 is outside the accepted range 1 to"),
    "seq-len text": (["--seq-len", "many"], "argument --seq-len: 'many' is not an integer"),
    "archs": (["--archs", "sm_70"], "argument --archs: 'sm_70' is not a comma-separated list of sm_80"),
    "target-device": (["--target-device", "cpu"], "argument --target-device: 'cpu': accepted 'cuda' or 'cuda:N'"),
}


@pytest.mark.parametrize("case", sorted(DEMO_REFUSALS))
def test_demo_cli_refuses_bad_values_in_one_line(case, tmp_path, capsys):
    argv, message = DEMO_REFUSALS[case]
    assert message in refusal(demo_args, ["--out", str(tmp_path / "demo"), *argv], capsys)


def test_demo_cli_checks_out_before_exporting(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = refusal(demo_args, ["--out", str(tmp_path / "file")], capsys)
    assert f"argument --out: {tmp_path / 'file'} exists and is not a folder" in err
    err = refusal(demo_args, ["--out", str(tmp_path / "file" / "demo")], capsys)
    assert f"argument --out: {tmp_path / 'file'} (a parent of {tmp_path / 'file' / 'demo'}) is not a folder" in err
    assert demo_args(["--out", str(tmp_path / "new" / "demo")]).seq_len == 128


LLM_REFUSALS = {
    "prefill-len 0": (["--prefill-len", "0"], "argument --prefill-len: 0 is outside the accepted range 1 to"),
    "prefill-len above max": (["--max-seq-len", "16", "--prefill-len", "32"],
                              "argument --prefill-len: 32 is above --max-seq-len 16"),
    "max-seq-len 0": (["--max-seq-len", "0"], "argument --max-seq-len: 0 is outside the accepted range 1 to"),
    "reference-tokens -1": (["--reference-tokens", "-1"],
                            "argument --reference-tokens: -1 is outside the accepted range 1 to"),
    "reference-tokens too many": (["--max-seq-len", "16", "--reference-tokens", "7"],
                                  "argument --reference-tokens: 7 new tokens after a 11-token prompt exceed "
                                  "--max-seq-len 16 (accepted: 1 to 6)"),
    "reference-prompt-len 0": (["--reference-prompt-len", "0"], "argument --reference-prompt-len: 0 is outside"),
    "seed -1": (["--seed", "-1"], "argument --seed: -1 is outside the accepted range 0 to"),
    "archs": (["--archs", "sm_75"], "argument --archs: 'sm_75' is not a comma-separated list of sm_80"),
}


@pytest.mark.parametrize("case", sorted(LLM_REFUSALS))
def test_llm_cli_refuses_bad_values_in_one_line(case, tmp_path, capsys):
    argv, message = LLM_REFUSALS[case]
    assert message in refusal(llm_args, ["--preset", "tiny-llama3", "--out", str(tmp_path / "m.pte"), *argv], capsys)


def test_llm_cli_checks_out_and_checkpoint_before_exporting(tmp_path, capsys):
    err = refusal(llm_args, ["--preset", "tiny-llama3", "--out", str(tmp_path)], capsys)
    assert f"argument --out: {tmp_path} is a folder, not a file" in err
    (tmp_path / "config.json").write_text("{}")
    err = refusal(llm_args, ["--checkpoint", str(tmp_path / "config.json")], capsys)
    assert "argument --checkpoint: " in err and "is not a folder" in err
    args = llm_args(["--preset", "tiny-llama3", "--max-seq-len", "16", "--reference-tokens", "6"])
    assert (args.reference_tokens, args.prefill_len) == (6, None)
