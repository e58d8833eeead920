"""One configurable decoder-only transformer for the model families cuda_gqa exports.

Llama 3, Mistral, Qwen2/2.5, Qwen3, Gemma 2 and Gemma 3 differ only in the switches of
`DecoderConfig`; module and parameter names follow Hugging Face's (minus the
`model.` prefix), so a checkpoint's state dict loads by name.

The KV cache is static: per layer, buffers [B, H_kv, max_seq_len, D] that each
call writes at `input_pos` with index_copy_, then attends over in full with a
bool mask hiding the positions a query may not see (later ones, the ones not
filled yet, and with a sliding window the ones too far back). torch.export
lifts the buffers as mutated buffers, which ExecuTorch plans as mutable state.
Calling with input_pos = 0 starts a new sequence: stale rows stay masked until
overwritten.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's frequency-dependent RoPE scaling ("rope_type": "llama3")."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class LinearRopeScaling:
    """Position interpolation ("rope_type": "linear"): every frequency divided by `factor`
    (Gemma 3's global layers in its 4B and larger models)."""

    factor: float


AnyRopeScaling = Union[RopeScaling, LinearRopeScaling]


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: Optional[AnyRopeScaling] = None
    # Gemma 3: sliding layers rotate with their own base and no scaling (None: as full layers).
    rope_local_theta: Optional[float] = None
    rms_norm_eps: float = 1e-5
    qkv_bias: bool = False  # Qwen2
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over D on each q and k head before RoPE
    # Per layer FULL_ATTENTION or SLIDING_ATTENTION (default: all full).
    layer_types: Optional[tuple[str, ...]] = None
    sliding_window: Optional[int] = None  # keys a sliding layer's query sees, itself included
    attn_logit_softcap: Optional[float] = None  # Gemma 2: scores = cap * tanh(scores / cap)
    final_logit_softcap: Optional[float] = None  # Gemma 2, on the logits
    query_pre_attn_scalar: Optional[float] = None  # Gemma 2 and 3: softmax scale = this ** -0.5
    hidden_act: str = "silu"
    # Gemma: norms scale by (1 + weight), embeddings by sqrt(hidden_size), and
    # each sublayer's output is normed too before the residual add.
    norm_weight_offset: float = 0.0
    scale_embeddings: bool = False
    sandwich_norms: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: Optional[int] = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers:
                raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
            unknown = set(self.layer_types) - {FULL_ATTENTION, SLIDING_ATTENTION}
            if unknown:
                raise ValueError(f"unknown layer types {sorted(unknown)}")
            if SLIDING_ATTENTION in self.layer_types and not self.sliding_window:
                raise ValueError("sliding_attention layers need sliding_window")

    def window(self, layer: int) -> Optional[int]:
        """The sliding window of `layer`, or None for full attention."""
        types = self.layer_types or (FULL_ATTENTION,) * self.num_layers
        return self.sliding_window if types[layer] == SLIDING_ATTENTION else None

    def local_rope(self, layer: int) -> bool:
        """Whether `layer` rotates with rope_local_theta (a sliding layer of Gemma 3)."""
        return self.rope_local_theta is not None and self.window(layer) is not None

    @property
    def softmax_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5


class RMSNorm(nn.Module):
    """Normalises in float32; scales by (weight_offset + weight) (Gemma: offset 1, weights stored around 0)."""

    def __init__(self, dim: int, eps: float, weight_offset: float = 0.0):
        super().__init__()
        self.eps, self.weight_offset = eps, weight_offset
        self.weight = nn.Parameter(torch.ones(dim) - weight_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (self.weight_offset + self.weight.float())).to(x.dtype)


def rope_inverse_frequencies(head_dim: int, theta: float,
                             scaling: Optional[AnyRopeScaling] = None) -> torch.Tensor:
    """Float64 [head_dim / 2]: the rotary frequencies of base `theta`, then scaled."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if scaling is None:
        return inv_freq
    if isinstance(scaling, LinearRopeScaling):
        return inv_freq / scaling.factor
    # Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between.
    low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = ((scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    ramped = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    return torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor,
                       torch.where(wavelen < high_freq_wavelen, inv_freq, ramped))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Hugging Face's RoPE layout: the two halves of D are the pair's two coordinates."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: DecoderConfig, layer: int, batch_size: int, max_seq_len: int,
                 dtype: torch.dtype):
        super().__init__()
        self.config, self.window = config, config.window(layer)
        h, h_kv, d = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, h_kv * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, h_kv * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps, config.norm_weight_offset)
            self.k_norm = RMSNorm(d, config.rms_norm_eps, config.norm_weight_offset)
        # Not persistent: state dicts (and checkpoints) hold weights only.
        cache_shape = (batch_size, h_kv, max_seq_len, d)
        self.register_buffer("k_cache", torch.zeros(cache_shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache_shape, dtype=dtype), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """x [B, L, hidden]; positions [L] (where the rows go in the cache); cos/sin [L, D];
        mask [1, 1, L, max_seq_len], True where a query sees a key."""
        c = self.config
        b, l, _ = x.shape
        q = self.q_proj(x).view(b, l, c.num_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, l, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, l, c.num_kv_heads, c.head_dim).transpose(1, 2)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        self.k_cache.index_copy_(2, positions, k)
        self.v_cache.index_copy_(2, positions, v)
        if c.attn_logit_softcap is None:
            y = F.scaled_dot_product_attention(q, self.k_cache, self.v_cache, attn_mask=mask,
                                               scale=c.softmax_scale, enable_gqa=True)
        else:
            y = softcapped_attention(q, self.k_cache, self.v_cache, mask, c.softmax_scale, c.attn_logit_softcap)
        return self.o_proj(y.transpose(1, 2).reshape(b, l, -1))


def softcapped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                         softcap: float) -> torch.Tensor:
    """Gemma 2's attention: logits squashed by cap * tanh(logits / cap) before the mask and softmax.

    SDPA has no soft-cap, so this is written out; the partitioner recognises
    the pattern (backends/partition/softcapped_attention.py). q [B, H, L, D];
    k/v [B, H_kv, S, D].
    """
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-2, -1)).float() * scale
    scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v


class MLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig, layer: int, batch_size: int, max_seq_len: int,
                 dtype: torch.dtype):
        super().__init__()
        norm = lambda: RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_weight_offset)
        self.self_attn = Attention(config, layer, batch_size, max_seq_len, dtype)
        self.mlp = MLP(config)
        self.input_layernorm = norm()
        # Hugging Face's names: without sandwich norms post_attention_layernorm is the MLP's input norm.
        self.post_attention_layernorm = norm()
        self.sandwich_norms = config.sandwich_norms
        if config.sandwich_norms:
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()

    def forward(self, x, positions, cos, sin, mask):
        attn = self.self_attn(self.input_layernorm(x), positions, cos, sin, mask)
        if not self.sandwich_norms:
            x = x + attn
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Decoder(nn.Module):
    """forward(tokens [B, L] int64, input_pos [1] int64) -> logits [B, L, vocab] (float32).

    Writes the L new positions input_pos .. input_pos + L - 1 into the cache
    and attends over everything up to each one. B == batch_size (the cache's)
    and input_pos + L <= max_seq_len. Inside `last_row_logits()`, only the
    last row's logits [B, 1, vocab]: a prefill needs no others, and the final
    norm and LM head then run on one row.
    """

    def __init__(self, config: DecoderConfig, *, max_seq_len: int, batch_size: int = 1,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config, self.max_seq_len, self.batch_size = config, max_seq_len, batch_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, batch_size, max_seq_len, dtype)
                                    for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_weight_offset)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._last_row_logits = False
        self._tie_weights()
        # RoPE tables [max_seq_len, D]: rope_* for full layers, rope_local_* for Gemma 3's sliding ones.
        for table in self._rope_tables():
            self.register_buffer(f"{table}_cos", torch.empty(max_seq_len, config.head_dim), persistent=False)
            self.register_buffer(f"{table}_sin", torch.empty(max_seq_len, config.head_dim), persistent=False)
        self.to(dtype)
        if not self.rope_cos.is_meta:
            self.reset_buffers()

    @classmethod
    def uninitialized(cls, config: DecoderConfig, device: Union[str, torch.device] = "cpu",
                      **options) -> "Decoder":
        """A decoder on `device` whose weights are allocated but not set (the caller fills them):
        no time spent on initialisations about to be overwritten."""
        with torch.device("meta"):
            model = cls(config, **options)
        model.to_empty(device=device)  # allocates tied weights apart: tie them again
        model._tie_weights()
        model.reset_buffers()
        return model

    def _rope_tables(self) -> dict[str, tuple[float, Optional[AnyRopeScaling]]]:
        """Buffer-name prefix -> (base, scaling) of that RoPE table."""
        c = self.config
        tables = {"rope": (c.rope_theta, c.rope_scaling)}
        if c.rope_local_theta is not None:
            tables["rope_local"] = (c.rope_local_theta, None)
        return tables

    def _tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def reset_buffers(self) -> None:
        """RoPE tables computed, caches zeroed."""
        for table, (theta, scaling) in self._rope_tables().items():
            angles = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float64),
                                 rope_inverse_frequencies(self.config.head_dim, theta, scaling))
            angles = torch.cat((angles, angles), dim=-1)
            getattr(self, f"{table}_cos").copy_(angles.cos())
            getattr(self, f"{table}_sin").copy_(angles.sin())
        for layer in self.layers:
            layer.self_attn.k_cache.zero_()
            layer.self_attn.v_cache.zero_()

    def attention_mask(self, positions: torch.Tensor, window: Optional[int]) -> torch.Tensor:
        """[1, 1, L, max_seq_len] bool: query at positions[i] sees key j when j <= positions[i]
        (and positions[i] - j < window)."""
        keys = torch.arange(self.max_seq_len, device=positions.device)[None, :]
        queries = positions[:, None]
        visible = keys <= queries
        if window is not None:
            visible = visible & (keys > queries - window)
        return visible[None, None]

    @contextlib.contextmanager
    def last_row_logits(self):
        """Within it, forward returns the last row's logits only (traced so by torch.export)."""
        self._last_row_logits = True
        try:
            yield self
        finally:
            self._last_row_logits = False

    @contextlib.contextmanager
    def greedy_token(self):
        """Within it, forward returns the greedy next token: the argmax of the last row's logits
        (int64 [B, 1]), which a whole-step delegate computes on the device."""
        self._greedy_token = True
        try:
            yield self
        finally:
            self._greedy_token = False

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        logits = self._logits(tokens, input_pos)
        if getattr(self, "_greedy_token", False):
            return logits[:, -1].argmax(-1, keepdim=True)
        return logits

    def _logits(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        c = self.config
        positions = input_pos + torch.arange(tokens.shape[1], device=tokens.device)
        rotations = {table: (getattr(self, f"{table}_cos")[positions], getattr(self, f"{table}_sin")[positions])
                     for table in self._rope_tables()}
        masks = {w: self.attention_mask(positions, w) for w in {c.window(i) for i in range(c.num_layers)}}
        x = self.embed_tokens(tokens)
        if c.scale_embeddings:
            x = x * torch.tensor(c.hidden_size**0.5, dtype=x.dtype)
        for i, layer in enumerate(self.layers):
            cos, sin = rotations["rope_local" if c.local_rope(i) else "rope"]
            x = layer(x, positions, cos, sin, masks[layer.self_attn.window])
        if self._last_row_logits:
            x = x[:, -1:, :]
        logits = self.lm_head(self.norm(x)).float()
        if c.final_logit_softcap is not None:
            logits = c.final_logit_softcap * torch.tanh(logits / c.final_logit_softcap)
        return logits
