import pytest

from cuda_gqa.export.llm.pipeline import export_llm

from llm_models import PREFILL_LEN, one_layer


@pytest.fixture(scope="session", params=["tiny-mistral", "tiny-gemma2", "tiny-gemma3"])
def cpu_pte(request, tmp_path_factory):
    """(preset, eager model, .pte path), attention left on the CPU.

    tiny-mistral attends through SDPA with a sliding-window mask and lowers its
    projections to XNNPACK (the default); tiny-gemma2's first layer attends
    through the written-out soft-capped attention, and tiny-gemma3's through
    SDPA after q/k norms and the sliding layers' own RoPE table, both on
    portable kernels."""
    model = one_layer(request.param)
    out = tmp_path_factory.mktemp("cpu_pte") / f"{request.param}.pte"
    export_llm(model, prefill_len=PREFILL_LEN, archs=None, out=out,
               cpu_partitioner="xnnpack" if request.param == "tiny-mistral" else None)
    return request.param, model, out
