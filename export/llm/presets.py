"""Named decoder shapes with seeded random weights: tiny ones for CI, real ones for benchmarks.

Each tiny preset keeps its family's attention variant (GQA ratio, QKV bias,
q/k norm, sliding window, soft-cap, MQA) at dimensions that export in seconds;
head dims are multiples of 16, as the kernels need.
"""

from __future__ import annotations

import torch

from .decoder import FULL_ATTENTION, SLIDING_ATTENTION, Decoder, DecoderConfig, RMSNorm, RopeScaling

LLAMA3_ROPE_SCALING = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=8192)
_TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, head_dim=16)

PRESETS: dict[str, DecoderConfig] = {
    # Tiny, one per family.
    "tiny-llama3": DecoderConfig(**_TINY, num_heads=8, num_kv_heads=2, rope_theta=500000.0,
                                 rope_scaling=LLAMA3_ROPE_SCALING, tie_word_embeddings=True),
    "tiny-qwen2": DecoderConfig(**_TINY, num_heads=14, num_kv_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
                                qkv_bias=True, tie_word_embeddings=True),
    "tiny-qwen3": DecoderConfig(**_TINY, num_heads=8, num_kv_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
                                qk_norm=True),
    "tiny-mistral": DecoderConfig(**_TINY, num_heads=8, num_kv_heads=2, sliding_window=8,
                                  layer_types=(SLIDING_ATTENTION,) * 2),
    "tiny-gemma2": DecoderConfig(**_TINY, num_heads=4, num_kv_heads=2, rms_norm_eps=1e-6, sliding_window=8,
                                 layer_types=(SLIDING_ATTENTION, FULL_ATTENTION), attn_logit_softcap=50.0,
                                 final_logit_softcap=30.0, query_pre_attn_scalar=32.0, hidden_act="gelu_tanh",
                                 norm_weight_offset=1.0, scale_embeddings=True, sandwich_norms=True,
                                 tie_word_embeddings=True),
    "tiny-mqa": DecoderConfig(**_TINY, num_heads=8, num_kv_heads=1),
    # Real shapes (random weights): Meta's and Qwen's published configs.
    "llama3-8b": DecoderConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                               num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
                               bos_token_id=128000, eos_token_ids=(128001, 128009)),
    "llama3.2-1b": DecoderConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
                                 num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500000.0,
                                 rope_scaling=LLAMA3_ROPE_SCALING, tie_word_embeddings=True,
                                 bos_token_id=128000, eos_token_ids=(128001, 128008, 128009)),
    "qwen2.5-1.5b": DecoderConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                                  num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6,
                                  qkv_bias=True, tie_word_embeddings=True,
                                  bos_token_id=151643, eos_token_ids=(151645, 151643)),
}
TINY_PRESETS = tuple(name for name in PRESETS if name.startswith("tiny-"))


def randomize_weights(model: Decoder, seed: int = 0) -> Decoder:
    """Seeded weights at the scale trained models have (std 0.02; norm scales near 1, so a
    mis-mapped norm weight changes the output)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                if isinstance(module, RMSNorm):
                    param.copy_(1.0 - module.weight_offset + 0.1 * noise)
                else:
                    param.copy_(0.02 * noise)
    return model


def build_preset(name: str, *, max_seq_len: int, dtype: torch.dtype = torch.float32, batch_size: int = 1,
                 seed: int = 0) -> Decoder:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
    model = Decoder.uninitialized(PRESETS[name], max_seq_len=max_seq_len, batch_size=batch_size, dtype=dtype)
    return randomize_weights(model, seed).eval()
