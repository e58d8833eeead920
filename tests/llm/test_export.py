"""export_llm and its CLI: the .pte's methods, shared cache, numerics and partition report."""

import contextlib
import dataclasses
import io
import json

import pytest
import torch
from executorch.exir._serialize._program import deserialize_pte_binary
from executorch.runtime import Runtime

from cuda_gqa.backends.sdpa import SdpaCall, is_sdpa
from cuda_gqa.export.llm.__main__ import main
from cuda_gqa.export.llm.pipeline import export_llm
from cuda_gqa.export.llm.presets import TINY_PRESETS, build_preset

from llm_models import MAX_SEQ_LEN, PREFILL_LEN, one_layer
from test_checkpoint import HF_CONFIGS, write_checkpoint


def test_prefill_then_decode_steps_match_eager(cpu_pte):
    preset, model, pte = cpu_pte
    program = Runtime.get().load_program(pte)
    assert {"prefill", "decode"} <= set(program.method_names)
    prefill, decode = program.load_method("prefill"), program.load_method("decode")
    prompt = torch.randint(0, 256, (1, PREFILL_LEN), generator=torch.Generator().manual_seed(0))
    model.reset_buffers()
    with torch.no_grad():
        expected = model(prompt, torch.tensor([0]))
    (logits,) = prefill.execute([prompt, torch.tensor([0])])
    # The prefill method returns the first new token's logits only: its last row's.
    torch.testing.assert_close(logits, expected[:, -1:], atol=1e-5, rtol=1e-4)
    # Decode through the other method: it sees the cache prefill wrote. Past
    # the sliding window (8) so old keys must drop out.
    token = logits[:, -1].argmax(-1, keepdim=True)
    for pos in range(PREFILL_LEN, PREFILL_LEN + 9):
        with torch.no_grad():
            expected = model(token, torch.tensor([pos]))
        (logits,) = decode.execute([token, torch.tensor([pos])])
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4, msg=f"{preset} decode at {pos}")
        token = logits[:, -1].argmax(-1, keepdim=True)


def test_program_carries_its_shape_metadata(cpu_pte):
    _, model, pte = cpu_pte
    program = Runtime.get().load_program(pte)
    value = lambda name: program.load_method(name).execute([])[0]
    assert (value("get_max_seq_len"), value("get_prefill_len"), value("get_vocab_size")) == (MAX_SEQ_LEN, PREFILL_LEN,
                                                                                           256)


def test_bad_arguments_are_refused():
    model = one_layer("tiny-llama3")
    with pytest.raises(ValueError, match="prefill_len=30 must be in 1..max_seq_len=24"):
        export_llm(model, prefill_len=30)
    with pytest.raises(ValueError, match="prefill_len=0 must be in 1..max_seq_len=24"):  # not the default
        export_llm(model, prefill_len=0)
    with pytest.raises(ValueError, match="must be set and equal max_seq_len=16"):
        export_llm(model, max_seq_len=16)
    with pytest.raises(ValueError, match="unknown cpu_partitioner 'mps'"):
        export_llm(model, cpu_partitioner="mps")
    with pytest.raises(ValueError, match="max_seq_len is needed"):
        export_llm("tiny-llama3")


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """The CLI on a one-layer Llama checkpoint: its whole step goes to CudaGqaBackend for sm_90."""
    root = tmp_path_factory.mktemp("cli")
    # 4 query heads of D=16 (the kernels' smallest head dim), 2 KV heads.
    write_checkpoint(root / "tiny-llama", {**HF_CONFIGS["llama"], "num_hidden_layers": 1, "num_attention_heads": 4})
    pte = root / "model.pte"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["--checkpoint", str(root / "tiny-llama"), "--max-seq-len", "32", "--prefill-len", "8",
                   "--archs", "sm_90", "--cpu-partitioner", "none", "--out", str(pte)])
    assert rc == 0, stdout.getvalue()
    return pte, stdout.getvalue()


def test_cli_reports_the_whole_step_and_every_attention_layer_of_both_methods(cli_export):
    pte, stdout = cli_export
    assert "[export] lowering to ExecuTorch (CudaGqaModelPartitioner)" in stdout
    for method in ("prefill", "decode"):
        lines = [l for l in stdout.splitlines() if l.startswith(f"{method}: ")]
        assert lines[0].startswith(f"{method}: whole step on the GPU: "), lines
        assert lines[1] == f"{method}: 1 of 1 attention calls delegated to CudaGqaBackend"
    assert f"MiB written to {pte} in " in stdout


def _delegates(pte, backend_id: str) -> dict[str, int]:
    """How many delegates of `backend_id` each method of the .pte holds."""
    program = deserialize_pte_binary(pte.read_bytes()).program
    return {plan.name: sum(d.id == backend_id for d in plan.delegates) for plan in program.execution_plan}


def test_cli_pte_loads_and_holds_one_delegate_per_whole_step(cli_export):
    """A method taken whole is one delegate; one taken attention-only has one per call."""
    pte, stdout = cli_export
    program = Runtime.get().load_program(pte)
    assert {"prefill", "decode", "get_max_seq_len"} <= set(program.method_names)
    lines = [l for l in stdout.splitlines() if l.startswith(("prefill: ", "decode: "))]
    whole = {l.split(":")[0] for l in lines if "whole step on the GPU" in l}
    calls = {l.split(":")[0]: int(l.split()[1]) for l in lines if "attention calls delegated" in l}
    expected = {method: 1 if method in whole else count for method, count in calls.items()}
    assert whole == {"prefill", "decode"}
    assert {m: n for m, n in _delegates(pte, "CudaGqaBackend").items() if m in expected} == expected


def test_cli_names_a_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    assert main(["--checkpoint", str(tmp_path)]) == 2
    assert "error: config.json: model_type 'falcon'" in capsys.readouterr().err


def test_xnnpack_takes_the_projections(cpu_pte):
    preset, _, pte = cpu_pte
    xnnpack = _delegates(pte, "XnnpackBackend")
    assert (xnnpack["prefill"] > 0 and xnnpack["decode"] > 0) == (preset == "tiny-mistral")


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_attention_calls_are_ones_the_kernels_take_but_for_the_mask(preset):
    """What the partitioner will see: each layer's SDPA reads the whole cache with a bool
    mask [1, 1, L, max_seq_len]; apart from that mask, the kernels take every call
    (Gemma 2's soft-capped attention has no SDPA)."""
    model = build_preset(preset, max_seq_len=MAX_SEQ_LEN, dtype=torch.bfloat16).requires_grad_(False)
    with torch.no_grad():
        graph = torch.export.export(model, (torch.zeros(1, PREFILL_LEN, dtype=torch.long),
                                            torch.tensor([0]))).graph_module.graph
    calls = [SdpaCall.from_node(n) for n in graph.nodes if is_sdpa(n)]
    config = model.config
    assert len(calls) == (0 if config.attn_logit_softcap else config.num_layers)
    for call in calls:
        assert call.shapes[1] == (1, config.num_kv_heads, MAX_SEQ_LEN, config.head_dim)
        mask = call.attn_mask.meta["val"]
        assert (mask.dtype, tuple(mask.shape)) == (torch.bool, (1, 1, PREFILL_LEN, MAX_SEQ_LEN))
        assert dataclasses.replace(call, attn_mask=None).unsupported_reason() is None
