"""The decoder in eager PyTorch: cache consistency and each family's attention variant."""

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from cuda_gqa.export.llm.decoder import (FULL_ATTENTION, SLIDING_ATTENTION, Decoder, DecoderConfig,
                                         LinearRopeScaling, rope_inverse_frequencies, softcapped_attention)
from cuda_gqa.export.llm.presets import PRESETS, TINY_PRESETS, build_preset, randomize_weights

MAX_SEQ_LEN = 24


def _tokens(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _incremental(model: Decoder, tokens: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of a prefill of the first `prefill` tokens, then one decode step per token."""
    steps = [model(tokens[:, :prefill], torch.tensor([0]))]
    steps += [model(tokens[:, i:i + 1], torch.tensor([i])) for i in range(prefill, tokens.shape[1])]
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_prefill_then_decode_matches_one_pass(preset):
    model = build_preset(preset, max_seq_len=MAX_SEQ_LEN)
    tokens = _tokens(20)
    with torch.no_grad():
        whole = model(tokens, torch.tensor([0]))
    model.reset_buffers()
    torch.testing.assert_close(_incremental(model, tokens, prefill=7), whole, atol=1e-5, rtol=1e-5)
    assert whole.shape == (1, 20, PRESETS[preset].vocab_size)
    assert whole.std() > 0.05  # the seeded weights give logits that are not flat


def test_last_row_logits_are_the_last_row_of_every_rows_logits():
    model = build_preset("tiny-llama3", max_seq_len=MAX_SEQ_LEN)
    tokens = _tokens(9)
    with torch.no_grad():
        every_row = model(tokens, torch.tensor([0]))
        model.reset_buffers()
        with model.last_row_logits():
            last_row = model(tokens, torch.tensor([0]))
        assert model(tokens[:, :2], torch.tensor([0])).shape[1] == 2  # outside it, every row again
    assert last_row.shape == (1, 1, every_row.shape[-1])
    torch.testing.assert_close(last_row, every_row[:, -1:])


def test_restarting_at_position_zero_ignores_the_previous_sequence():
    model = build_preset("tiny-llama3", max_seq_len=MAX_SEQ_LEN)
    first, second = _tokens(12, seed=1), _tokens(5, seed=2)
    with torch.no_grad():
        model(first, torch.tensor([0]))
        after_other_sequence = model(second, torch.tensor([0]))
    fresh = build_preset("tiny-llama3", max_seq_len=MAX_SEQ_LEN)
    with torch.no_grad():
        torch.testing.assert_close(after_other_sequence, fresh(second, torch.tensor([0])))


def test_sliding_window_hides_keys_that_far_back():
    windowed = build_preset("tiny-mistral", max_seq_len=MAX_SEQ_LEN)
    window = windowed.config.sliding_window
    full_config = dataclasses.replace(windowed.config, layer_types=None, sliding_window=None)
    full = Decoder(full_config, max_seq_len=MAX_SEQ_LEN)
    full.load_state_dict(windowed.state_dict())
    tokens = _tokens(20)
    with torch.no_grad():
        a, b = windowed(tokens, torch.tensor([0])), full(tokens, torch.tensor([0]))
    # Positions that see no more than `window` keys are unchanged; later ones differ.
    torch.testing.assert_close(a[:, :window], b[:, :window])
    assert (a[:, window:] - b[:, window:]).abs().amax(dim=-1).min() > 1e-4


def test_attention_mask_of_a_sliding_layer():
    model = build_preset("tiny-gemma2", max_seq_len=10)
    assert [model.config.window(i) for i in range(2)] == [8, None]
    mask = model.attention_mask(torch.tensor([8, 9]), window=3)
    assert mask.shape == (1, 1, 2, 10)
    assert mask[0, 0].nonzero().tolist() == [[0, 6], [0, 7], [0, 8], [1, 7], [1, 8], [1, 9]]


def test_softcapped_attention_is_sdpa_when_the_cap_is_far_away():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, l, 16, generator=g) for h, l in ((4, 3), (2, 10), (2, 10)))
    mask = torch.rand(1, 1, 3, 10, generator=g) > 0.3
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.2, enable_gqa=True)
    torch.testing.assert_close(softcapped_attention(q, k, v, mask, 0.2, softcap=1e6), expected)
    capped = softcapped_attention(q, k, v, mask, 0.2, softcap=0.5)
    assert (capped - expected).abs().max() > 1e-3


def test_gemma2_final_logits_are_soft_capped():
    model = build_preset("tiny-gemma2", max_seq_len=MAX_SEQ_LEN)
    with torch.no_grad():
        model.lm_head.weight.mul_(1e4)  # tied with the embedding: logits would be huge
        logits = model(_tokens(4), torch.tensor([0]))
    assert logits.abs().max() <= model.config.final_logit_softcap


def test_presets_have_the_published_shapes():
    llama = PRESETS["llama3-8b"]
    assert (llama.num_heads // llama.num_kv_heads, llama.head_dim, llama.num_layers) == (4, 128, 32)
    qwen = PRESETS["qwen2.5-1.5b"]
    assert (qwen.num_heads // qwen.num_kv_heads, qwen.qkv_bias) == (6, True)
    assert PRESETS["tiny-qwen2"].num_heads // PRESETS["tiny-qwen2"].num_kv_heads == 7
    assert PRESETS["tiny-mqa"].num_kv_heads == 1
    assert PRESETS["tiny-gemma2"].layer_types == (SLIDING_ATTENTION, "full_attention")
    for name, global_layers in (("gemma3-270m", [5, 11, 17]), ("gemma3-1b", [5, 11, 17, 23])):
        gemma3 = PRESETS[name]
        assert (gemma3.num_heads, gemma3.num_kv_heads, gemma3.head_dim, gemma3.sliding_window) == (4, 1, 256, 512)
        assert [i for i, t in enumerate(gemma3.layer_types) if t == FULL_ATTENTION] == global_layers
    with torch.device("meta"):  # parameter counts as published: 999,885,952 for 1B, 268M for 270M
        counts = {name: sum(p.numel() for p in Decoder(PRESETS[name], max_seq_len=8).parameters())
                  for name in ("gemma3-1b", "gemma3-270m")}
    assert counts["gemma3-1b"] == 999_885_952 and round(counts["gemma3-270m"] / 1e6) == 268


def test_bad_configs_are_refused():
    tiny = PRESETS["tiny-llama3"]
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        dataclasses.replace(tiny, num_kv_heads=3)
    with pytest.raises(ValueError, match="need sliding_window"):
        dataclasses.replace(tiny, layer_types=(SLIDING_ATTENTION,) * 2)
    with pytest.raises(ValueError, match="unknown preset 'llama5'"):
        build_preset("llama5", max_seq_len=8)


def test_seeded_weights_repeat():
    a = build_preset("tiny-qwen3", max_seq_len=8, seed=3)
    b = randomize_weights(Decoder.uninitialized(PRESETS["tiny-qwen3"], max_seq_len=8), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_tied_embeddings_stay_tied():
    model = build_preset("tiny-llama3", max_seq_len=8)
    assert model.lm_head.weight is model.embed_tokens.weight
    untied = build_preset("tiny-qwen3", max_seq_len=8)
    assert not torch.equal(untied.lm_head.weight, untied.embed_tokens.weight)


def test_llama3_rope_scaling_slows_only_long_wavelengths():
    config = PRESETS["llama3.2-1b"]
    scaled = rope_inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    plain = rope_inverse_frequencies(config.head_dim, config.rope_theta)
    wavelength = 2 * math.pi / plain
    short, long = wavelength < 8192 / 4, wavelength > 8192 / 1  # original context / high and low factors
    assert short.any() and long.any() and (~short & ~long).any()
    torch.testing.assert_close(scaled[short], plain[short])
    torch.testing.assert_close(scaled[long], plain[long] / 32)
    between = ~short & ~long  # a ramp from unscaled to scaled as the wavelength grows
    assert ((scaled[between] < plain[between]) & (scaled[between] > plain[between] / 32)).all()
    assert (scaled[between] / plain[between]).diff().le(0).all()


def test_linear_rope_scaling_slows_every_frequency():
    plain = rope_inverse_frequencies(16, 1e6)
    torch.testing.assert_close(rope_inverse_frequencies(16, 1e6, LinearRopeScaling(factor=8.0)), plain / 8)
    assert plain[0] == 1.0 and plain[-1] < 1e-4


def _logits_with(config: DecoderConfig, weights: dict, tokens: torch.Tensor) -> torch.Tensor:
    model = Decoder(config, max_seq_len=MAX_SEQ_LEN).eval()
    model.load_state_dict(weights)
    with torch.no_grad():
        return model(tokens, torch.tensor([0]))


def test_gemma3_sliding_layers_rotate_with_the_local_base_and_full_layers_with_the_global_one():
    model = build_preset("tiny-gemma3", max_seq_len=MAX_SEQ_LEN)
    config, weights, tokens = model.config, model.state_dict(), _tokens(12)
    positions = torch.arange(MAX_SEQ_LEN, dtype=torch.float64)[:, None]
    for table, theta in ((model.rope_local_cos, 1e4), (model.rope_cos, 1e6)):
        torch.testing.assert_close(table[:, :8], (positions * rope_inverse_frequencies(16, theta)).cos().float())
    gemma3 = _logits_with(config, weights, tokens)
    # A local base equal to the global one is the same as none.
    same_base = dataclasses.replace(config, rope_local_theta=config.rope_theta)
    torch.testing.assert_close(_logits_with(same_base, weights, tokens),
                               _logits_with(dataclasses.replace(config, rope_local_theta=None), weights, tokens))
    assert (gemma3 - _logits_with(same_base, weights, tokens)).abs().max() > 1e-4
    # Full layers never read the local table.
    all_full = dataclasses.replace(config, layer_types=(FULL_ATTENTION,) * 2)
    torch.testing.assert_close(_logits_with(all_full, weights, tokens),
                               _logits_with(dataclasses.replace(all_full, rope_local_theta=123.0), weights, tokens))
