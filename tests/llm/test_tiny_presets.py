"""CI smoke test of every built-in family: each tiny preset, exported as a user would (the whole
step on the GPU where the kernels hold it, else attention on the GPU and XNNPACK for the
projections), delegates every attention layer of both methods with its KV-cache update and loads
in ExecuTorch's runtime. Export times are a benchmark (bench/llm_export_time.py)."""

import pytest
from executorch.runtime import Runtime

from cuda_gqa.export.llm.pipeline import export_llm
from cuda_gqa.export.llm.presets import PRESETS, TINY_PRESETS
from cuda_gqa.runtime import load_backend_library


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_tiny_preset_delegates_every_layer_with_its_cache_and_loads(preset, tmp_path):
    layers = PRESETS[preset].num_layers
    result = export_llm(preset, max_seq_len=64, archs=["sm_90"], out=tmp_path / "model.pte")
    whole = preset != "tiny-gemma2"  # its written-out soft-capped attention is not in the whole-step plan
    for method in ("prefill", "decode"):
        assert result.model_reports[method].startswith("whole step" if whole else "attention only")
        report = result.reports[method]
        assert len(report) == layers and all(d.delegated for d in report), report
        for layer, decision in enumerate(report):
            assert decision.reason.endswith(f"KV cache owned by the delegate (layers.{layer}.self_attn.k_cache, "
                                            f"layers.{layer}.self_attn.v_cache)"), decision.reason
    load_backend_library()
    program = Runtime.get().load_program(result.pte)
    assert {"prefill", "decode", "get_max_seq_len", "get_prefill_len"} <= set(program.method_names)
