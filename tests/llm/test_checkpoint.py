"""Hugging Face-format checkpoints: written here from seeded decoders, read back by load_checkpoint."""

import json

import pytest
import torch
from safetensors.torch import save_file

from cuda_gqa.export.llm.checkpoint import CheckpointError, config_from_hf, load_checkpoint
from cuda_gqa.export.llm.decoder import Decoder
from cuda_gqa.export.llm.presets import randomize_weights

_TINY = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 8, "num_key_value_heads": 2, "torch_dtype": "float32"}
# config.json as Hugging Face writes them, at tiny sizes.
HF_CONFIGS = {
    "llama": {**_TINY, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True, "attention_bias": False,
              "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"},
              "bos_token_id": 1, "eos_token_id": [2, 3]},
    "qwen2": {**_TINY, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
              "num_attention_heads": 14, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
              "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 32768},
    "qwen3": {**_TINY, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
              "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True},
    "mistral": {**_TINY, "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
                "sliding_window": 6, "rope_theta": 10000.0},
    "gemma2": {**_TINY, "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "head_dim": 16,
               "num_attention_heads": 4, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 32,
               "sliding_window": 6, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
               "rms_norm_eps": 1e-6},
    # As transformers 4.5x wrote Gemma 3 1B's: the layer pattern and local base as fields.
    "gemma3_text": {**_TINY, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "head_dim": 16,
                    "num_attention_heads": 4, "num_key_value_heads": 1, "hidden_activation": "gelu_pytorch_tanh",
                    "query_pre_attn_scalar": 16, "sliding_window": 6, "sliding_window_pattern": 2,
                    "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None,
                    "attn_logit_softcapping": None, "final_logit_softcapping": None, "rms_norm_eps": 1e-6,
                    "bos_token_id": 2, "eos_token_id": [1, 106]},
}
# Layer 0's tensors under their Hugging Face names, per family.
_LLAMA_LAYER = ["input_layernorm.weight", "mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                "post_attention_layernorm.weight", "self_attn.k_proj.weight", "self_attn.o_proj.weight",
                "self_attn.q_proj.weight", "self_attn.v_proj.weight"]
HF_LAYER_TENSORS = {
    "llama": _LLAMA_LAYER,
    "mistral": _LLAMA_LAYER,
    "qwen2": _LLAMA_LAYER + ["self_attn.k_proj.bias", "self_attn.q_proj.bias", "self_attn.v_proj.bias"],
    "qwen3": _LLAMA_LAYER + ["self_attn.k_norm.weight", "self_attn.q_norm.weight"],
    "gemma2": _LLAMA_LAYER + ["post_feedforward_layernorm.weight", "pre_feedforward_layernorm.weight"],
    "gemma3_text": _LLAMA_LAYER + ["post_feedforward_layernorm.weight", "pre_feedforward_layernorm.weight",
                                   "self_attn.k_norm.weight", "self_attn.q_norm.weight"],
}


def write_checkpoint(directory, hf_config: dict, seed: int = 0) -> Decoder:
    """A Hugging Face-format checkpoint of a seeded decoder; returns the decoder."""
    model = randomize_weights(Decoder(config_from_hf(hf_config), max_seq_len=16), seed).eval()
    tensors = {(name if name == "lm_head.weight" else "model." + name): t.contiguous()
               for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del tensors["lm_head.weight"]  # Hugging Face stores tied weights once
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config))
    names = sorted(tensors)
    # Two shards, as larger checkpoints come.
    save_file({n: tensors[n] for n in names[::2]}, directory / "model-00001-of-00002.safetensors")
    save_file({n: tensors[n] for n in names[1::2]}, directory / "model-00002-of-00002.safetensors")
    return model


@pytest.mark.parametrize("family", HF_CONFIGS)
def test_checkpoint_round_trip_gives_the_same_logits(tmp_path, family):
    original = write_checkpoint(tmp_path, HF_CONFIGS[family])
    layer_0 = sorted(n.removeprefix("layers.0.") for n in original.state_dict() if n.startswith("layers.0."))
    assert layer_0 == sorted(HF_LAYER_TENSORS[family])
    loaded = load_checkpoint(tmp_path, max_seq_len=16)
    assert loaded.config == original.config
    tokens = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, torch.tensor([0])), original(tokens, torch.tensor([0])),
                                   atol=0, rtol=0)


def test_hf_fields_reach_the_config():
    llama = config_from_hf(HF_CONFIGS["llama"])
    assert (llama.rope_scaling.factor, llama.tie_word_embeddings, llama.eos_token_ids) == (32.0, True, (2, 3))
    assert llama.head_dim == 64 // 8
    gemma = config_from_hf(HF_CONFIGS["gemma2"])
    assert gemma.layer_types == ("sliding_attention", "full_attention")
    assert (gemma.attn_logit_softcap, gemma.final_logit_softcap, gemma.softmax_scale) == (50.0, 30.0, 32**-0.5)
    assert gemma.tie_word_embeddings and gemma.sandwich_norms and gemma.hidden_act == "gelu_tanh"
    assert config_from_hf(HF_CONFIGS["qwen2"]).qkv_bias
    assert config_from_hf(HF_CONFIGS["mistral"]).window(1) == 6


def test_gemma3_fields_reach_the_config():
    gemma = config_from_hf(HF_CONFIGS["gemma3_text"])
    assert gemma.layer_types == ("sliding_attention", "full_attention")
    assert (gemma.rope_theta, gemma.rope_local_theta, gemma.rope_scaling) == (1e6, 1e4, None)
    assert [gemma.local_rope(i) for i in range(2)] == [True, False]
    assert (gemma.softmax_scale, gemma.attn_logit_softcap, gemma.final_logit_softcap) == (16**-0.5, None, None)
    assert gemma.qk_norm and gemma.sandwich_norms and gemma.scale_embeddings and gemma.norm_weight_offset == 1.0
    assert (gemma.tie_word_embeddings, gemma.eos_token_ids, gemma.hidden_act) == (True, (1, 106), "gelu_tanh")
    # Without a pattern, every sixth layer is global, as in transformers.
    six = config_from_hf({**HF_CONFIGS["gemma3_text"], "num_hidden_layers": 12, "sliding_window_pattern": None})
    assert [i for i, t in enumerate(six.layer_types) if t == "full_attention"] == [5, 11]


def test_gemma3_rope_in_the_transformers_5_form_gives_the_same_config():
    old = HF_CONFIGS["gemma3_text"]
    new = {k: v for k, v in old.items() if k not in ("rope_theta", "rope_local_base_freq", "rope_scaling",
                                                      "sliding_window_pattern")}
    new.update(layer_types=["sliding_attention", "full_attention"], rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    assert config_from_hf(new) == config_from_hf(old)
    # The larger models' global layers: linear scaling, the base left at the top level.
    scaled = config_from_hf({**new, "rope_theta": 1000000.0, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0}, "sliding_attention": {"rope_type": "default"}}})
    assert (scaled.rope_theta, scaled.rope_scaling.factor, scaled.rope_local_theta) == (1e6, 8.0, 1e4)


def test_gemma3_variants_the_decoder_cannot_run_are_refused():
    gemma = HF_CONFIGS["gemma3_text"]
    with pytest.raises(CheckpointError, match="attn_logit_softcapping is set; Gemma 3 has none"):
        config_from_hf({**gemma, "attn_logit_softcapping": 50.0})
    with pytest.raises(CheckpointError, match="'gemma3' is Gemma 3's image-and-text model"):
        config_from_hf({**gemma, "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]})
    with pytest.raises(CheckpointError, match="use_bidirectional_attention=True"):
        config_from_hf({**gemma, "use_bidirectional_attention": True})
    with pytest.raises(CheckpointError, match="scaled rope for sliding_attention layers"):
        config_from_hf({**gemma, "rope_parameters": {"full_attention": {"rope_theta": 1e6},
                                                     "sliding_attention": {"rope_type": "linear", "factor": 2.0}}})
    with pytest.raises(CheckpointError, match="rope type 'yarn' for full_attention layers is not supported"):
        config_from_hf({**gemma, "rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 4.0}}})


def test_loads_in_the_requested_dtype(tmp_path):
    write_checkpoint(tmp_path, HF_CONFIGS["qwen3"])
    model = load_checkpoint(tmp_path, max_seq_len=16, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.layers[0].self_attn.k_cache.dtype == torch.bfloat16


def test_unknown_architecture_is_named(tmp_path):
    write_checkpoint(tmp_path, HF_CONFIGS["llama"])
    (tmp_path / "config.json").write_text(json.dumps({**HF_CONFIGS["llama"], "model_type": "falcon",
                                                      "architectures": ["FalconForCausalLM"]}))
    with pytest.raises(CheckpointError, match=r"model_type 'falcon' \(architectures \['FalconForCausalLM'\]\) "
                                              r"is not supported"):
        load_checkpoint(tmp_path, max_seq_len=16)
    with pytest.raises(CheckpointError, match="architectures \\['LlamaForSequenceClassification'\\]"):
        config_from_hf({**HF_CONFIGS["llama"], "architectures": ["LlamaForSequenceClassification"]})


def test_corrupt_safetensors_file_is_named(tmp_path):
    write_checkpoint(tmp_path, HF_CONFIGS["llama"])
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: not a readable safetensors file"):
        load_checkpoint(tmp_path, max_seq_len=16)


def test_missing_unexpected_and_mis_shaped_tensors_are_named(tmp_path):
    write_checkpoint(tmp_path, HF_CONFIGS["qwen2"])
    config = HF_CONFIGS["qwen2"]
    # Missing: the config says tied embeddings are not tied, so lm_head.weight is expected too.
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match=r"tensor\(s\) missing, e.g. model\.layers\.2\."):
        load_checkpoint(tmp_path, max_seq_len=16)
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(CheckpointError, match="tensor 'model.layers.1.[a-z_.]+' has no place in the qwen2 decoder"):
        load_checkpoint(tmp_path, max_seq_len=16)
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.0.mlp.[a-z_]+.weight' has shape \("):
        load_checkpoint(tmp_path, max_seq_len=16)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path, max_seq_len=16)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_checkpoint(tmp_path, max_seq_len=16)
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIGS["llama"]))
    with pytest.raises(CheckpointError, match="no \\*.safetensors files"):
        load_checkpoint(tmp_path, max_seq_len=16)
    with pytest.raises(CheckpointError, match="rope type 'yarn' is not supported"):
        config_from_hf({**HF_CONFIGS["llama"], "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


BAD_CONFIG_FILES = {
    "a list": (lambda path: path.write_text("[1, 2]"), "config.json: a JSON list, expected an object"),
    "binary": (lambda path: path.write_bytes(b"\xff\xfe\x00garbage"), "config.json: not UTF-8 text"),
    "a directory": (lambda path: path.mkdir(), "config.json: cannot be read"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIG_FILES))
def test_a_config_file_that_is_no_json_object_is_named(tmp_path, case):
    make, message = BAD_CONFIG_FILES[case]
    make(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path, max_seq_len=16)


BAD_FIELDS = {
    "no KV heads": ({"num_key_value_heads": 0}, "config.json: 'num_key_value_heads' is 0, expected at least 1"),
    "negative layers": ({"num_hidden_layers": -1}, "config.json: 'num_hidden_layers' is -1, expected at least 1"),
    "string size": ({"hidden_size": "64"}, "config.json: 'hidden_size' is '64' \\(str\\), expected an integer"),
    "string theta": ({"rope_theta": "5e5"}, "config.json: 'rope_theta' is '5e5' \\(str\\), expected a number"),
    "bool heads": ({"num_attention_heads": True}, "config.json: 'num_attention_heads' is True \\(bool\\)"),
    "incomplete rope_scaling": ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
                                "config.json: rope scaling of type 'llama3' needs 'low_freq_factor', which is missing"),
    "rope_scaling a list": ({"rope_scaling": [1]}, "config.json: rope parameters are \\[1\\], expected an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_bad_config_fields_are_named(case):
    change, message = BAD_FIELDS[case]
    with pytest.raises(CheckpointError, match=message):
        config_from_hf({**HF_CONFIGS["llama"], **change})


def test_a_tensor_in_two_shards_and_integer_weights_are_refused(tmp_path):
    write_checkpoint(tmp_path, HF_CONFIGS["llama"])
    first = tmp_path / "model-00001-of-00002.safetensors"
    from safetensors.torch import load_file

    tensors = load_file(first)
    name = sorted(tensors)[0]
    save_file({name: tensors[name]}, tmp_path / "model-00003-of-00003.safetensors")
    with pytest.raises(CheckpointError, match=f"model-00003-of-00003.safetensors: tensor '{name}' is also in "
                                              "model-00001-of-00002.safetensors"):
        load_checkpoint(tmp_path, max_seq_len=16)
    (tmp_path / "model-00003-of-00003.safetensors").unlink()
    save_file({**tensors, name: tensors[name].to(torch.int32)}, first)
    with pytest.raises(CheckpointError, match=f"model-00001-of-00002.safetensors: tensor '{name}' has dtype int32, "
                                              "expected floating point weights"):
        load_checkpoint(tmp_path, max_seq_len=16)
