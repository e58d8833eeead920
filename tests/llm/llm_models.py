"""Small decoders the LLM tests share."""

import dataclasses

from cuda_gqa.export.llm.decoder import Decoder
from cuda_gqa.export.llm.presets import PRESETS, randomize_weights

MAX_SEQ_LEN, PREFILL_LEN = 24, 8


def one_layer(preset: str) -> Decoder:
    """A preset cut to its first layer: same attention variant, export in seconds."""
    config = PRESETS[preset]
    config = dataclasses.replace(config, num_layers=1,
                                 layer_types=config.layer_types[:1] if config.layer_types else None)
    return randomize_weights(Decoder(config, max_seq_len=MAX_SEQ_LEN)).eval()


