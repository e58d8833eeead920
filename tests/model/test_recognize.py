"""The whole-model plan: an exported decoder step read as ops, and what those ops compute.

The reference evaluation of the plan (backends/model/reference.py) must give
eager PyTorch's logits and leave the KV caches as eager leaves them: that is
what makes the plan a faithful reading of the graph.
"""

import pytest
import torch

from cuda_gqa.backends.model.ops import NotRecognised
from cuda_gqa.backends.model.recognize import recognise
from cuda_gqa.backends.model.reference import evaluate

from model_steps import edge_step

RECOGNISED = ("tiny-llama3", "tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-mqa", "tiny-gemma3")


def _fill_caches(model, upto: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for layer in model.layers:
        for cache in (layer.self_attn.k_cache, layer.self_attn.v_cache):
            cache.zero_()
            cache[:, :, :upto] = torch.randn(cache[:, :, :upto].shape, generator=gen).to(cache.dtype)


def _caches(model) -> dict[str, torch.Tensor]:
    return {f"layers.{i}.self_attn.{which}": getattr(layer.self_attn, which).clone()
            for i, layer in enumerate(model.layers) for which in ("k_cache", "v_cache")}


# Decode steps of every family; prefill chunks (from the start, and past it) of two.
CASES = [(preset, 1, 11) for preset in RECOGNISED] + [("tiny-llama3", 4, 0), ("tiny-gemma3", 3, 9)]


@pytest.mark.parametrize("preset, length, position", CASES)
def test_the_plan_computes_what_eager_computes(tiny_model, preset, length, position):
    model = tiny_model(preset)
    plan = recognise(edge_step(model, length))
    _fill_caches(model, position, seed=length)
    states = _caches(model)
    tokens = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(3))
    pos = torch.tensor([position])
    constants = {name: plan.constant_data[name] for name in plan.constants}
    (logits,) = evaluate(plan, {"tokens": tokens, "input_pos": pos}, states, constants)
    with torch.no_grad():
        expected = model(tokens, pos)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    for name, cache in _caches(model).items():
        torch.testing.assert_close(states[name], cache, rtol=1e-5, atol=1e-5, msg=f"cache {name}")


def test_a_decode_step_reads_as_the_ops_of_each_layer(tiny_model):
    model = tiny_model("tiny-llama3")
    plan = recognise(edge_step(model, 1))
    layer = ["rmsnorm", "linear", "linear", "linear", "rope", "rope", "cache_write", "cache_write", "attention",
             "linear", "add", "rmsnorm", "linear", "linear", "gated_act", "linear", "add"]
    assert plan.kinds() == ["embedding"] + layer * model.config.num_layers + ["rmsnorm", "linear"]
    assert [v.name for v in plan.inputs] == ["tokens", "input_pos"]
    assert set(plan.state_updates) == {f"layers.{i}.self_attn.{c}" for i in range(2) for c in ("k_cache", "v_cache")}
    window = [op.attrs["window"] for op in plan.ops if op.kind == "attention"]
    assert window == [None, None]


def test_sliding_window_layers_keep_their_window(tiny_model):
    model = tiny_model("tiny-mistral")
    plan = recognise(edge_step(model, 1))
    windows = [op.attrs["window"] for op in plan.ops if op.kind == "attention"]
    assert windows == [model.config.window(i) for i in range(model.config.num_layers)]
    assert all(w == model.config.sliding_window for w in windows)


def test_an_op_without_a_kernel_is_named(tiny_model):
    model = tiny_model("tiny-gemma2")  # soft-capped attention written out: not in the plan yet
    with pytest.raises(NotRecognised, match=r"aten_\w+: "):
        recognise(edge_step(model, 1))
