"""LLM export: the built-in decoder family, its presets and checkpoints, and export_llm.

`decoder`, `presets`, `reference` and `ptd_manifest` need torch only (the GPU
machine, which has no executorch, imports them); `export_llm` (executorch) and
`load_checkpoint` (safetensors) are imported when first used.
"""

from .decoder import Decoder, DecoderConfig
from .presets import PRESETS, TINY_PRESETS, build_preset

_LAZY = {"export_llm": "pipeline", "LlmExport": "pipeline", "load_checkpoint": "checkpoint",
         "CheckpointError": "checkpoint"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CheckpointError", "Decoder", "DecoderConfig", "LlmExport", "PRESETS", "TINY_PRESETS", "build_preset",
           "export_llm", "load_checkpoint"]
