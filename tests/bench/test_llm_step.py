"""bench/llm_step.py, the whole-model decode-step benchmark, in its CPU smoke mode: every route gets a
row (a measurement or the reason it has none), the bound counts the bytes a step must read, the C++
runner is invoked and read as llm_runner.cpp prints, and a model that fails leaves the others'
rows. Timing itself is the GPU machine's business."""

import json
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import llm_step  # noqa: E402
from llm_runner_cli import parse_decode_at, parse_prefill  # noqa: E402

SMOKE = ["--device", "cpu", "--context", "32", "--prefill", "8", "--steps", "3", "--warmup", "1",
         "--prefill-steps", "2", "--no-compile"]


def _rows(out: Path) -> dict[tuple[str, str], dict]:
    report = json.loads((out / "llm_step.json").read_text())
    return {(row["model"], row["route"]): row for row in report["rows"]}


def test_cpu_smoke_run_has_a_row_per_route_with_positive_times(tmp_path, capsys):
    assert llm_step.main([*SMOKE, "--models", "tiny-llama3", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    assert set(rows) == {("tiny-llama3", route) for route in
                         (llm_step.EAGER, llm_step.GRAPH, llm_step.COMPILED, llm_step.BOUND)}
    eager = rows["tiny-llama3", llm_step.EAGER]
    assert eager["decode_ms"] > 0 and eager["prefill_ms"] > 0 and eager["error"] is None
    assert rows["tiny-llama3", llm_step.BOUND]["decode_ms"] > 0
    assert "CUDA" in rows["tiny-llama3", llm_step.GRAPH]["error"]
    assert "--no-compile" in rows["tiny-llama3", llm_step.COMPILED]["error"]
    printed = capsys.readouterr().out
    table = (tmp_path / "llm_step.md").read_text()
    assert table in printed and printed.rstrip().endswith(table.rstrip().splitlines()[-1])
    for route in (llm_step.EAGER, llm_step.GRAPH, llm_step.COMPILED, llm_step.BOUND):
        assert f"| tiny-llama3 | {route} |" in table


def test_a_model_that_fails_leaves_error_rows_and_the_next_model_runs(tmp_path, monkeypatch):
    build = llm_step.build_model

    def build_or_fail(name, *args, **kwargs):
        if name == "tiny-qwen2":
            raise MemoryError("out of device memory (simulated)")
        return build(name, *args, **kwargs)

    monkeypatch.setattr(llm_step, "build_model", build_or_fail)
    assert llm_step.main([*SMOKE, "--models", "tiny-qwen2,tiny-llama3", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    assert "simulated" in rows["tiny-qwen2", llm_step.EAGER]["error"]
    assert rows["tiny-qwen2", llm_step.EAGER]["decode_ms"] is None
    assert rows["tiny-llama3", llm_step.EAGER]["decode_ms"] > 0


@pytest.mark.parametrize("preset, context", [("tiny-llama3", 32), ("tiny-qwen3", 32), ("tiny-mistral", 32)])
def test_the_bound_reads_each_weight_once_and_the_keys_each_layer_attends(preset, context):
    model = llm_step.build_model(preset, context, llm_step.DTYPES["bfloat16"], llm_step.torch.device("cpu"))
    c = model.config
    h, kv, d = c.hidden_size, c.num_kv_heads * c.head_dim, c.head_dim
    attention = h * c.num_heads * d * 2 + 2 * h * kv + (c.num_heads * d + 2 * kv if c.qkv_bias else 0)
    norms = 2 * h + (2 * d if c.qk_norm else 0)
    layer = attention + 3 * h * c.intermediate_size + norms
    embedding_read = c.vocab_size * h if c.tie_word_embeddings else h  # untied: one row of the table
    lm_head = 0 if c.tie_word_embeddings else c.vocab_size * h
    keys = [context if c.window(i) is None else min(c.window(i), context) for i in range(c.num_layers)]
    weights = c.num_layers * layer + h + embedding_read + lm_head
    assert llm_step.step_bytes(model, context) == 2 * weights + sum(2 * k * kv * 2 for k in keys)


def test_the_cache_is_filled_with_random_rows_not_zeros():
    model = llm_step.build_model("tiny-llama3", 16, llm_step.DTYPES["bfloat16"], llm_step.torch.device("cpu"))
    for layer in model.layers:
        for cache in (layer.self_attn.k_cache, layer.self_attn.v_cache):
            assert cache.float().std() > 0.5 and (cache != 0).float().mean() > 0.99


def test_runner_output_is_read_as_llm_runner_prints_it():
    decode = parse_decode_at("loaded m.pte in 0.10 s\ndecode-at: 64 steps at positions 4032..4095: median 1.234 ms, "
                             "p90 1.500 ms per step, 790.1 tokens/s\n")
    assert decode == dict(steps=64, first=4032, last=4095, median_ms=1.234, p90_ms=1.5, tokens_per_s=790.1)
    prefill = parse_prefill("prompt 512 tokens: prefill 12.50 ms (4 call(s) of 128 tokens)\n")
    assert prefill == dict(prompt_tokens=512, prefill_ms=12.5, calls=4, chunk=128)
    assert parse_prefill("error: prefill failed") == {}


FAKE_RUNNER = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls.txt"
case " $* " in
  *" --decode-at "*) echo "decode-at: 3 steps at positions 29..31: median 0.900 ms, p90 1.000 ms per step, 1100.0 tokens/s";;
  *" --prompt "*) echo "prompt 8 tokens: prefill 4.25 ms (1 call(s) of 8 tokens)";;
esac
"""


def test_exported_program_row_comes_from_the_runner_beside_it(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    runner = folder / llm_step.RUNNER
    runner.write_text(FAKE_RUNNER)
    runner.chmod(runner.stat().st_mode | stat.S_IEXEC)
    (folder / "model.pte").write_bytes(b"not read by the fake runner")
    (folder / "model.ptd").write_bytes(b"")
    out = tmp_path / "out"
    assert llm_step.main([*SMOKE, "--models", "tiny-llama3", "--pte", f"tiny-llama3={folder / 'model.pte'}",
                          "--out", str(out)]) == 0
    row = _rows(out)["tiny-llama3", llm_step.RUNNER_ROUTE]
    assert row["decode_ms"] == 0.9 and row["prefill_ms"] == 4.25 and row["error"] is None
    decode_call, prompt_call = (folder / "calls.txt").read_text().splitlines()
    assert f"--data {folder / 'model.ptd'} --decode-at 29 --steps 3 --warmup 1" in decode_call
    assert "--prompt" in prompt_call and "--new-tokens 1 --prefill-warmup 2" in prompt_call
    assert "| tiny-llama3 | exported .pte (C++ runner) | 0.900 |" in (out / "llm_step.md").read_text()


def test_a_missing_runner_is_a_row_with_the_reason(tmp_path):
    pte = tmp_path / "model.pte"
    pte.write_bytes(b"")
    assert llm_step.main([*SMOKE, "--models", "tiny-llama3", "--pte", f"tiny-llama3={pte}",
                          "--out", str(tmp_path / "out")]) == 0
    row = _rows(tmp_path / "out")["tiny-llama3", llm_step.RUNNER_ROUTE]
    assert row["decode_ms"] is None and "no runner" in row["error"]


@pytest.mark.parametrize("argv, message", [
    (["--models", "tiny-llama3", "--pte", "model.pte"], "expected MODEL=PATH"),
    (["--models", "tiny-llama3", "--pte", "tiny-qwen2=model.pte"], "is not one of --models"),
    (["--models", "no-such-model"], "unknown preset"),
    (["--models", "tiny-llama3", "--context", "8", "--prefill", "16"], "--prefill"),
])
def test_bad_arguments_are_refused_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        llm_step.main(["--device", "cpu", *argv])
    assert message in str(exit_info.value) + capsys.readouterr().err


def test_compile_route_times_the_compiled_step_and_checks_it_against_eager(tmp_path):
    """The compile path end to end with Dynamo's eager backend (Inductor on this CPU takes minutes)."""
    argv = [a for a in SMOKE if a != "--no-compile"]
    assert llm_step.main([*argv, "--models", "tiny-llama3", "--compile-backend", "eager", "--out", str(tmp_path)]) == 0
    row = _rows(tmp_path)["tiny-llama3", llm_step.COMPILED]
    assert row["error"] is None and row["decode_ms"] > 0 and row["prefill_ms"] > 0
    notes = "; ".join(row["notes"])
    assert "decode compiled in" in notes and "prefill compiled in" in notes
    assert "decode logits vs eager: rel. diff" in notes and "MISMATCH" not in notes


def test_compile_is_skipped_when_the_budget_left_is_short_of_the_last_compile_scaled_by_layers():
    settings = llm_step.Settings(context=32, prefill=8, dtype=llm_step.torch.bfloat16,
                                 device=llm_step.torch.device("cpu"), steps=1, warmup=0, prefill_steps=1,
                                 compile=True, compile_mode="default", compile_backend="inductor",
                                 deadline=llm_step.time.perf_counter() + 200, runner=None, runner_timeout_s=1,
                                 log_file=Path("unused"))
    assert settings.compile_skipped(16) is None
    settings.compiles.append((110.0, 16))
    assert settings.compile_skipped(16) is None  # about 110 s of the 200 left
    assert "needs about 220 s" in settings.compile_skipped(32)
    settings.compile = False
    assert "--no-compile" in settings.compile_skipped(16)


def test_json_rows_carry_the_table_figures(tmp_path):
    rows = [llm_step.Row("m", llm_step.BOUND, decode_ms=1.0), llm_step.Row("m", llm_step.EAGER, decode_ms=4.0),
            llm_step.Row("m", llm_step.COMPILED, decode_ms=2.0), llm_step.Row("m", llm_step.GRAPH, error="x")]
    found = {row["route"]: row for row in llm_step.derived(rows)}
    assert [row["route"] for row in llm_step.derived(rows)] == [llm_step.EAGER, llm_step.GRAPH, llm_step.COMPILED,
                                                              llm_step.BOUND]
    assert found[llm_step.EAGER]["tokens_per_s"] == 250 and found[llm_step.EAGER]["fraction_of_bound"] == 0.25
    assert found[llm_step.EAGER]["speed_vs_compile_graph"] == 0.5
    assert found[llm_step.GRAPH]["tokens_per_s"] is None and found[llm_step.GRAPH]["error"] == "x"


def test_the_gpu_machine_needs_no_executorch_to_run_it():
    code = textwrap.dedent(f"""
        import sys
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("executorch", "safetensors"):
                    raise ImportError(f"{{name}} is not on the GPU machine")
        sys.meta_path.insert(0, Blocker())
        sys.path.insert(0, {str(BENCH)!r})
        import llm_step, llm_logits_check, bench_attention
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_runner_decode_is_also_timed_without_programmatic_launch_when_asked(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    runner = folder / llm_step.RUNNER
    runner.write_text(FAKE_RUNNER)
    runner.chmod(runner.stat().st_mode | stat.S_IEXEC)
    (folder / "model.pte").write_bytes(b"not read by the fake runner")
    (folder / "model.ptd").write_bytes(b"")
    out = tmp_path / "out"
    assert llm_step.main([*SMOKE, "--models", "tiny-llama3", "--pte", f"tiny-llama3={folder / 'model.pte'}",
                          "--compare-programmatic-launch", "--out", str(out)]) == 0
    plain = _rows(out)["tiny-llama3", llm_step.RUNNER_PLAIN_LAUNCH_ROUTE]
    assert plain["decode_ms"] == 0.9 and plain["error"] is None
    calls = (folder / "calls.txt").read_text().splitlines()
    assert [("--no-programmatic-launch" in c, "--decode-at" in c) for c in calls] == [
        (False, True), (True, True), (False, False)]
