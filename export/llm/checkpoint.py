"""Hugging Face-format checkpoints (config.json + *.safetensors) onto the built-in decoder.

config.json's `model_type` (checked against `architectures`) picks how its
fields map onto DecoderConfig; tensors load by name, since the decoder's
parameter names are Hugging Face's minus the `model.` prefix. Anything the
decoder cannot represent, and any missing, unexpected or mis-shaped tensor,
fails with a CheckpointError naming it. No `transformers` needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import SafetensorError, safe_open

from .decoder import (FULL_ATTENTION, SLIDING_ATTENTION, AnyRopeScaling, Decoder, DecoderConfig, LinearRopeScaling,
                      RopeScaling)

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
# Buffers some checkpoints carry that the decoder recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    pass


# config.json fields that must be integers >= 1, and numbers >= 0.
_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "sliding_window", "sliding_window_pattern",
                  "_sliding_window_pattern", "query_pre_attn_scalar")
_POSITIVE_NUMBERS = ("rope_theta", "rope_local_base_freq", "rms_norm_eps", "attn_logit_softcapping",
                     "final_logit_softcapping")


def _number(key: str, value, *, integer: bool, minimum, where: str = "config.json"):
    """value as a JSON number (an integer when `integer`) of at least `minimum`, else CheckpointError."""
    types = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, types):
        raise CheckpointError(f"{where}: {key!r} is {value!r} ({type(value).__name__}), expected "
                              f"{'an integer' if integer else 'a number'}")
    if value < minimum:
        raise CheckpointError(f"{where}: {key!r} is {value}, expected at least {minimum}")
    return value if integer else float(value)


def _rope_param(params: dict, key: str, kind: str, *, integer: bool = False):
    if key not in params:
        raise CheckpointError(f"config.json: rope scaling of type {kind!r} needs {key!r}, which is missing")
    return _number(f"rope {key}", params[key], integer=integer, minimum=1 if integer else 0.0)


def _rope_from(params: dict, layers: str = "") -> tuple[float, Optional[AnyRopeScaling]]:
    """(base, scaling) of one dict of RoPE parameters."""
    if not isinstance(params, dict):
        raise CheckpointError(f"config.json: rope parameters{layers} are {params!r}, expected an object")
    theta = _number("rope_theta", params["rope_theta"], integer=False, minimum=0.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, LinearRopeScaling(factor=_rope_param(params, "factor", kind))
    if kind == "llama3":
        return theta, RopeScaling(
            factor=_rope_param(params, "factor", kind), low_freq_factor=_rope_param(params, "low_freq_factor", kind),
            high_freq_factor=_rope_param(params, "high_freq_factor", kind),
            original_max_position_embeddings=_rope_param(params, "original_max_position_embeddings", kind,
                                                         integer=True))
    raise CheckpointError(f"config.json: rope type {kind!r}{layers} is not supported (supported: default, linear, "
                          f"llama3)")


def _rope(hf: dict, local_theta_default: Optional[float]) -> dict:
    """DecoderConfig's rope options. transformers 5 writes rope_parameters, per layer type
    for Gemma 3; earlier configs have rope_theta and rope_scaling (and Gemma 3's
    rope_local_base_freq for its sliding layers). A base missing from a per-type dict is
    the top-level field's, else the family's default (`local_theta_default` for sliding
    layers: None for families whose sliding layers rotate as the full ones)."""
    params = hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise CheckpointError(f"config.json: 'rope_parameters' is {params!r}, expected an object")
    full_theta = {"rope_theta": hf.get("rope_theta", 10000.0)}
    local_theta = hf.get("rope_local_base_freq", local_theta_default)
    if FULL_ATTENTION in params or SLIDING_ATTENTION in params:
        theta, scaling = _rope_from({**full_theta, **params.get(FULL_ATTENTION, {})}, " for full_attention layers")
        if SLIDING_ATTENTION in params:
            local = {"rope_theta": local_theta if local_theta is not None else theta, **params[SLIDING_ATTENTION]}
            local_theta, local_scaling = _rope_from(local, " for sliding_attention layers")
            if local_scaling is not None:
                raise CheckpointError("config.json: a scaled rope for sliding_attention layers is not supported")
    else:
        scaling_params = params or hf.get("rope_scaling") or {}
        if not isinstance(scaling_params, dict):
            raise CheckpointError(f"config.json: rope parameters are {scaling_params!r}, expected an object")
        theta, scaling = _rope_from({**full_theta, **scaling_params})
    return dict(rope_theta=theta, rope_scaling=scaling,
                rope_local_theta=None if local_theta is None else float(local_theta))


def config_from_hf(hf: dict) -> DecoderConfig:
    """DecoderConfig of a Hugging Face config.json (as a dict)."""
    model_type, architectures = hf.get("model_type"), hf.get("architectures") or []
    if model_type == "gemma3":
        raise CheckpointError("config.json: model_type 'gemma3' is Gemma 3's image-and-text model "
                              "(Gemma3ForConditionalGeneration), which is not supported; its text-only checkpoints "
                              "(270M, 1B) are model_type gemma3_text")
    if model_type not in ARCHITECTURES:
        raise CheckpointError(f"config.json: model_type {model_type!r} (architectures {architectures}) is not "
                              f"supported; supported: {', '.join(ARCHITECTURES)}")
    if architectures and architectures != [ARCHITECTURES[model_type]]:
        raise CheckpointError(f"config.json: architectures {architectures} is not supported for model_type "
                              f"{model_type!r} (expected [{ARCHITECTURES[model_type]!r}])")

    def field(key, default=KeyError):
        if key not in hf or hf[key] is None:
            if default is KeyError:
                raise CheckpointError(f"config.json: {key!r} is missing")
            return default
        value = hf[key]
        if key in _POSITIVE_INTS:
            return _number(key, value, integer=True, minimum=1)
        if key in _POSITIVE_NUMBERS:
            return _number(key, value, integer=False, minimum=0.0)
        return value

    activation = field("hidden_activation", None) or field("hidden_act", "silu")
    if activation not in _ACTIVATIONS:
        raise CheckpointError(f"config.json: activation {activation!r} is not supported ({', '.join(_ACTIVATIONS)})")
    if field("attention_bias", False) and model_type != "qwen2":
        raise CheckpointError("config.json: attention_bias=True is not supported")
    if field("use_sliding_window", False):
        raise CheckpointError("config.json: use_sliding_window=True (Qwen's per-layer windows) is not supported")
    num_layers, num_heads = field("num_hidden_layers"), field("num_attention_heads")
    rope = _rope(hf, local_theta_default=10000.0 if model_type == "gemma3_text" else None)  # transformers' default
    eos = field("eos_token_id", ())
    options = dict(
        vocab_size=field("vocab_size"), hidden_size=field("hidden_size"),
        intermediate_size=field("intermediate_size"), num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=field("num_key_value_heads", num_heads),
        head_dim=field("head_dim", field("hidden_size") // num_heads), **rope,
        rms_norm_eps=field("rms_norm_eps", 1e-6), hidden_act=_ACTIVATIONS[activation],
        tie_word_embeddings=field("tie_word_embeddings", model_type.startswith("gemma")),
        bos_token_id=field("bos_token_id", None), eos_token_ids=tuple(eos) if isinstance(eos, list) else (eos,),
    )
    window = field("sliding_window", None)
    if model_type == "qwen2":
        options["qkv_bias"] = True
    elif model_type == "qwen3":
        options["qk_norm"] = True
    elif model_type == "mistral" and window is not None:
        options.update(sliding_window=window, layer_types=(SLIDING_ATTENTION,) * num_layers)
    elif model_type in ("gemma2", "gemma3_text"):
        if model_type == "gemma2":
            # Gemma 2 alternates: even layers local (sliding), odd layers global.
            is_global = lambda i: i % 2 == 1
            options["attn_logit_softcap"] = field("attn_logit_softcapping", None)
        else:
            if field("attn_logit_softcapping", None) is not None:
                raise CheckpointError("config.json: attn_logit_softcapping is set; Gemma 3 has none "
                                      "(a Gemma 2 checkpoint is model_type gemma2)")
            if field("use_bidirectional_attention", False):
                raise CheckpointError("config.json: use_bidirectional_attention=True (an embedding model) is not "
                                      "supported: the decoder is causal")
            # Older configs give the pattern instead of layer_types: every pattern-th layer is global.
            pattern = field("sliding_window_pattern", None) or field("_sliding_window_pattern", 6)
            is_global = lambda i: (i + 1) % pattern == 0
            options["qk_norm"] = True
        default_types = [FULL_ATTENTION if is_global(i) else SLIDING_ATTENTION for i in range(num_layers)]
        options.update(
            sliding_window=field("sliding_window"), layer_types=tuple(field("layer_types", default_types)),
            final_logit_softcap=field("final_logit_softcapping", None),
            query_pre_attn_scalar=field("query_pre_attn_scalar"), norm_weight_offset=1.0, scale_embeddings=True,
            sandwich_norms=True)
    try:
        return DecoderConfig(**options)
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise CheckpointError(f"config.json: {e}") from e


def load_checkpoint(directory: Union[str, Path], *, max_seq_len: int, dtype: torch.dtype = torch.float32,
                    batch_size: int = 1) -> Decoder:
    """The decoder of a Hugging Face-format directory, with its weights, in `dtype`."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a Hugging Face-format directory)")
    try:
        hf = json.loads(config_path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no config.json (expected a Hugging Face-format directory)") from None
    except OSError as e:
        raise CheckpointError(f"{config_path}: cannot be read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{config_path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_path}: a JSON {type(hf).__name__}, expected an object of config fields")
    config = config_from_hf(hf)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors files")
    model = Decoder.uninitialized(config, max_seq_len=max_seq_len, batch_size=batch_size, dtype=dtype)

    expected = model.state_dict()
    loaded = {}  # decoder name -> the file it came from
    with torch.no_grad():
        for path in files:
            try:
                with safe_open(path, framework="pt") as tensors:
                    for key in tensors.keys():
                        if key.endswith(_IGNORED_SUFFIXES):
                            continue
                        name = key.removeprefix("model.")
                        if name not in expected:
                            raise CheckpointError(f"{path.name}: tensor {key!r} has no place in the "
                                                  f"{hf['model_type']} decoder")
                        if name in loaded:
                            raise CheckpointError(f"{path.name}: tensor {key!r} is also in {loaded[name]}: "
                                                  f"which one holds the weights is ambiguous")
                        tensor = tensors.get_tensor(key)
                        if tensor.shape != expected[name].shape:
                            raise CheckpointError(f"{path.name}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                                                  f"the decoder expects {tuple(expected[name].shape)}")
                        if not tensor.dtype.is_floating_point:
                            raise CheckpointError(f"{path.name}: tensor {key!r} has dtype "
                                                  f"{str(tensor.dtype).removeprefix('torch.')}, expected floating "
                                                  f"point weights (a quantized checkpoint is not supported)")
                        expected[name].copy_(tensor)
                        loaded[name] = path.name
            except SafetensorError as e:
                raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if model.config.tie_word_embeddings and "embed_tokens.weight" in loaded:
        loaded["lm_head.weight"] = loaded["embed_tokens.weight"]  # the same tensor
    missing = [("model." + name if name != "lm_head.weight" else name) for name in expected if name not in loaded]
    if missing:
        raise CheckpointError(f"{directory}: {len(missing)} tensor(s) missing, e.g. {', '.join(missing[:3])}")
    return model.eval()
