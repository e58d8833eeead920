"""Fusions on the whole-model plan: fewer ops, the same function."""

import pytest
import torch

from cuda_gqa.backends.model.fuse import fuse
from cuda_gqa.backends.model.recognize import recognise
from cuda_gqa.backends.model.reference import evaluate

from model_steps import edge_step


def _run(plan, model, tokens, position):
    states = {f"layers.{i}.self_attn.{which}": getattr(layer.self_attn, which).clone()
              for i, layer in enumerate(model.layers) for which in ("k_cache", "v_cache")}
    constants = {name: plan.constant_data[name] for name in plan.constants}
    (logits,) = evaluate(plan, {"tokens": tokens, "input_pos": torch.tensor([position])}, states, constants)
    return logits, states


@pytest.mark.parametrize("preset, length", [("tiny-llama3", 1), ("tiny-qwen2", 2), ("tiny-gemma3", 1)])
def test_the_fused_plan_computes_what_the_plan_computes(tiny_model, preset, length):
    model = tiny_model(preset)
    gen = torch.Generator().manual_seed(7)
    for layer in model.layers:
        for cache in (layer.self_attn.k_cache, layer.self_attn.v_cache):
            cache[:, :, :5] = torch.randn(cache[:, :, :5].shape, generator=gen)
    tokens = torch.randint(0, model.config.vocab_size, (1, length), generator=gen)
    plan = recognise(edge_step(model, length))
    expected, expected_states = _run(plan, model, tokens, 5)
    fused = fuse(recognise(edge_step(model, length)))
    logits, states = _run(fused, model, tokens, 5)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    for name in states:
        torch.testing.assert_close(states[name], expected_states[name], rtol=1e-4, atol=1e-4)


def test_a_llama_layer_fuses_to_four_linears(tiny_model):
    model = tiny_model("tiny-llama3")
    plan = fuse(recognise(edge_step(model, 1)))
    layer = ["linear", "rope", "rope", "cache_write", "cache_write", "attention", "linear", "linear", "linear"]
    # The LM head's weight is the (tied) embedding table: its norm stays a kernel of its own.
    assert plan.kinds() == ["embedding"] + layer * model.config.num_layers + ["rmsnorm", "linear"]
    qkv, _, _, _, _, _, o_proj, gate_up, down = plan.ops[1:10]
    c = model.config
    assert qkv.output.shape[-1] == (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    assert qkv.attrs["norm_eps"] == pytest.approx(c.rms_norm_eps)
    assert gate_up.attrs["gated"] == "silu" and gate_up.inputs["weight"].shape == (2 * c.intermediate_size,
                                                                                    c.hidden_size)
    assert "residual" in o_proj.inputs and "residual" in down.inputs
    assert "lm_head.weight" in plan.constants and "layers.0.self_attn.q_proj.weight" not in plan.constants


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-gemma3"])
def test_every_constant_of_a_fused_plan_is_made_again_from_the_parameters_alone(tiny_model, preset):
    from cuda_gqa.backends.model.fuse import derive_constant

    model = tiny_model(preset, dtype=torch.bfloat16)
    plan = fuse(recognise(edge_step(model, 1)))
    parameters = dict(model.named_buffers()) | model.state_dict()  # tied weights under both names
    assert any("@rmsnorm(" in name for name in plan.constants) and any("+" in name for name in plan.constants)
    for name in plan.constants:
        derived = derive_constant(name, parameters)
        assert derived.dtype == plan.constant_data[name].dtype
        assert torch.equal(derived.view(torch.uint8), plan.constant_data[name].contiguous().view(torch.uint8)), name


@pytest.mark.parametrize("preset", ["tiny-llama3", "tiny-gemma3"])
def test_a_bfloat16_step_reads_fuses_and_computes_eager_logits_within_its_rounding(tiny_model, preset):
    """bf16 graphs hold fp32 upcasts inside RMSNorm and SiLU: the plan reads through them."""
    model = tiny_model(preset, dtype=torch.bfloat16)
    plan = fuse(recognise(edge_step(model, 1)))
    assert "gated_act" not in plan.kinds()  # gate/up still merged into one gated linear
    tokens = torch.tensor([[5]])
    logits, _ = _run(plan, model, tokens, 0)
    with torch.no_grad():
        expected = model(tokens, torch.tensor([0]))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, rtol=0, atol=2e-2 * expected.abs().max().item())


def test_a_gated_activation_of_one_linears_halves_becomes_that_linear_gated():
    # Phi-3's gate_up_proj: one linear, split into gate and up columns, silu(gate) * up.
    from cuda_gqa.backends.model.fuse import gate_up_halves
    from cuda_gqa.backends.model.ops import CONSTANT, INPUT, INTERMEDIATE, ModelPlan, Op, Value

    x = Value("x", INPUT, (1, 3, 8), torch.float32)
    weight = Value("gate_up", CONSTANT, (12, 8), torch.float32)
    both = Value("both", INTERMEDIATE, (1, 3, 12), torch.float32)
    gate, up = (both.viewed(("narrow", (2, start, 6)), (1, 3, 6)) for start in (0, 6))
    act = Value("act", INTERMEDIATE, (1, 3, 6), torch.float32)
    ops = [Op("linear", {"x": x, "weight": weight}, both, {"norm_eps": None, "gated": ""}),
           Op("gated_act", {"gate": gate, "up": up}, act, {"act": "silu"})]
    data = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    plan = ModelPlan([x], [act], {"gate_up": weight}, {}, list(ops), {"gate_up": data})
    inputs = {"x": torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(1))}
    (expected,) = evaluate(plan, inputs, {}, {"gate_up": data})

    gate_up_halves(plan)
    assert [(op.kind, op.attrs.get("gated"), op.output.name) for op in plan.ops] == [("linear", "silu", "act")]
    (fused,) = evaluate(plan, inputs, {}, {"gate_up": data})
    torch.testing.assert_close(fused, expected)

    swapped = ModelPlan([x], [act], {"gate_up": weight}, {}, [ops[0], Op("gated_act", {"gate": up, "up": gate}, act,
                                                                        {"act": "silu"})], {"gate_up": data})
    gate_up_halves(swapped)  # up before gate: not the kernel's [gate; up] rows
    assert [op.kind for op in swapped.ops] == ["linear", "gated_act"]
