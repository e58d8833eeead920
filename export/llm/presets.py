"""Named decoder shapes with seeded random weights: tiny ones for CI, real ones for benchmarks.

Each tiny preset keeps its family's attention variant (GQA ratio, QKV bias,
q/k norm, sliding window, soft-cap, per-layer RoPE bases, MQA) at dimensions that export in seconds;
head dims are multiples of 16, as the kernels need.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Union

import torch

from .decoder import FULL_ATTENTION, SLIDING_ATTENTION, Decoder, DecoderConfig, RMSNorm, RopeScaling

LLAMA3_ROPE_SCALING = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=8192)


# What every Gemma shares: norms scaling by (1 + weight) and around each sublayer, scaled
# embeddings tied to the output, GELU (tanh).
_GEMMA = dict(rms_norm_eps=1e-6, hidden_act="gelu_tanh", norm_weight_offset=1.0, scale_embeddings=True,
              sandwich_norms=True, tie_word_embeddings=True)


def _gemma3(*, num_layers: int, **sizes) -> DecoderConfig:
    """Gemma 3's text models up to 1B: 4 query heads on one KV head of D=256; five sliding layers
    (window 512, RoPE base 10^4) for each global one (base 10^6)."""
    layer_types = tuple(FULL_ATTENTION if (i + 1) % 6 == 0 else SLIDING_ATTENTION for i in range(num_layers))
    return DecoderConfig(**sizes, **_GEMMA, num_layers=num_layers, num_heads=4, num_kv_heads=1, head_dim=256,
                         rope_theta=1e6, rope_local_theta=10000.0, qk_norm=True, sliding_window=512,
                         layer_types=layer_types, query_pre_attn_scalar=256.0, bos_token_id=2, eos_token_ids=(1, 106))


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
    "tiny-gemma2": DecoderConfig(**_TINY, **_GEMMA, num_heads=4, num_kv_heads=2, sliding_window=8,
                                 layer_types=(SLIDING_ATTENTION, FULL_ATTENTION), attn_logit_softcap=50.0,
                                 final_logit_softcap=30.0, query_pre_attn_scalar=32.0),
    "tiny-gemma3": DecoderConfig(**_TINY, **_GEMMA, num_heads=4, num_kv_heads=1, rope_theta=1e6,
                                 rope_local_theta=10000.0, qk_norm=True, sliding_window=8,
                                 layer_types=(SLIDING_ATTENTION, FULL_ATTENTION), query_pre_attn_scalar=16.0),
    "tiny-mqa": DecoderConfig(**_TINY, num_heads=8, num_kv_heads=1),
    # Real shapes (random weights): Meta's, Qwen's and Google's published configs.
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
    "gemma3-270m": _gemma3(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_layers=18),
    "gemma3-1b": _gemma3(vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_layers=26),
}
TINY_PRESETS = tuple(name for name in PRESETS if name.startswith("tiny-"))


# Seeded weights from integer hashing, not torch's RNG: torch.randn's CPU
# kernels differ between builds and CPUs (an AVX2 and an AVX-512 machine take
# different code paths), so the same seed could give other weights on the GPU
# machine than here. Integer ops on int64 tensors holding 32-bit values (every
# product below 2**63) and one float64 multiply per value are exact everywhere,
# so a preset's weights are bit-identical on any machine and torch version:
# what lets a GPU machine rebuild a .ptd of a model exported here from the
# seed (export/llm/ptd_manifest.py).
_MASK32 = 0xFFFFFFFF
_WEYL = 0x61C88647  # odd, below 2**31
_CHUNK = 1 << 18  # elements per step: the temporaries stay in cache
# Each value is the sum of the two 16-bit halves of a 32-bit hash, minus its
# mean: a triangular distribution on [-65535, 65535] with this deviation.
_TRIANGULAR_STD = math.sqrt(2 * (65536**2 - 1) / 12)


def _mix32(x):
    """A 32-bit integer hash (two multiply-xorshift rounds) of a Python int, or in place of an
    int64 tensor, holding values in [0, 2**32) (products stay below 2**63)."""
    for shift, factor in ((16, 0x21F0AAAD), (15, 0x735A2D97)):
        x ^= x >> shift
        x *= factor
        x &= _MASK32
    x ^= x >> 15
    return x


def seeded_values(numel: int, seed: int, stream: int, scale: float, shift: float = 0.0,
                  device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """numel float32 values of deviation `scale` around `shift`, a function of (seed, stream)
    only, bit-identical on every machine and device (a CUDA device computes them faster: each
    step is its own kernel, so no multiply-add is fused into another rounding)."""
    key1 = _mix32((seed * 0x9E3779B1 + stream) & _MASK32)
    key2 = _mix32((key1 ^ 0x5BD1E995) + stream & _MASK32)
    out = torch.empty(numel, dtype=torch.float32, device=device)
    factor = scale / _TRIANGULAR_STD
    chunk = _CHUNK if out.device.type == "cpu" else 1 << 24  # fewer launches on a GPU
    for start in range(0, numel, chunk):
        end = min(numel, start + chunk)
        x = torch.arange(start, end, dtype=torch.int64, device=device)
        x *= _WEYL
        x += key1
        x &= _MASK32
        x = _mix32(x)
        x ^= key2
        x = _mix32(x)
        y = (x >> 16).add_(x & 0xFFFF).sub_(65535).double()
        y *= factor
        if shift:
            y += shift
        out[start:end] = y  # float64 -> float32, round to nearest even
    return out


@contextlib.contextmanager
def _one_cpu_thread(device):
    """Small elementwise ops run best on one thread: with two or more, each op is a parallel
    region whose threads wait for each other, which on a busy machine costs 10x (measured on the
    2-core build machine under load: 12 s against 0.8 s of CPU time for 2**25 values)."""
    if torch.device(device or "cpu").type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def randomize_weights(model: Decoder, seed: int = 0, device: Optional[Union[str, torch.device]] = None) -> Decoder:
    """Seeded weights at the scale trained models have (deviation 0.02; norm scales near 1,
    deviation 0.1, so a mis-mapped norm weight changes the output), the same on every machine
    and torch version (see seeded_values). Each distinct parameter, in module order, is its
    own stream (tied weights are set once). `device`: where to compute them (the same values)."""
    seen = set()
    with torch.no_grad(), _one_cpu_thread(device):
        for module in model.modules():
            for _, param in module.named_parameters(recurse=False):
                if id(param) in seen:
                    continue
                stream = len(seen)
                seen.add(id(param))
                if isinstance(module, RMSNorm):
                    values = seeded_values(param.numel(), seed, stream, 0.1, 1.0 - module.weight_offset, device)
                else:
                    values = seeded_values(param.numel(), seed, stream, 0.02, device=device)
                param.copy_(values.view(param.shape))  # float32 -> the model's dtype, round to nearest even
    return model


def build_preset(name: str, *, max_seq_len: int, dtype: torch.dtype = torch.float32, batch_size: int = 1,
                 seed: int = 0, device: Optional[Union[str, torch.device]] = None) -> Decoder:
    """The preset's decoder on the CPU with seeded weights (computed on `device`, the same values)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
    model = Decoder.uninitialized(PRESETS[name], max_seq_len=max_seq_len, batch_size=batch_size, dtype=dtype)
    return randomize_weights(model, seed, device).eval()
