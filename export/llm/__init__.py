"""LLM export: the built-in decoder family, its presets and checkpoints, and export_llm."""

from .decoder import Decoder, DecoderConfig
from .checkpoint import CheckpointError, load_checkpoint
from .pipeline import LlmExport, export_llm
from .presets import PRESETS, TINY_PRESETS, build_preset

__all__ = ["CheckpointError", "Decoder", "DecoderConfig", "LlmExport", "PRESETS", "TINY_PRESETS", "build_preset",
           "export_llm", "load_checkpoint"]
