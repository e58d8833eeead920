"""Eager PyTorch's greedy generation: the reference a .pte's run is checked against.

Torch only (no executorch), so the GPU machine can compute it too, on CUDA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..tensor_files import write_tensor


@torch.no_grad()
def eager_greedy(model: torch.nn.Module, prompt: Sequence[int], new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """Greedy generation with the eager model (its cache reset first): the reference a .pte's
    generation must reproduce. Returns the tokens and their logits [new_tokens, vocab] (float32,
    on the CPU: the prefill's last row, then each decode step's). Runs where the model is."""
    device = next(model.parameters()).device
    model.reset_buffers()
    logits = model(torch.tensor([list(prompt)], device=device), torch.tensor([0], device=device))[0, -1]
    tokens, rows = [], []
    while True:
        rows.append(logits.float())
        tokens.append(int(logits.argmax()))
        if len(tokens) == new_tokens:
            return tokens, torch.stack(rows).cpu()
        position = torch.tensor([len(prompt) + len(tokens) - 1], device=device)
        logits = model(torch.tensor([[tokens[-1]]], device=device), position)[0, -1]


def reference_prompt(vocab_size: int, prompt_len: int, seed: int = 0) -> torch.Tensor:
    """The seeded prompt (int64 token ids) --reference-tokens uses."""
    return torch.randint(0, vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(seed))


def write_reference(model, pte: Path, new_tokens: int, prompt_len: int, folder: Optional[Path] = None,
                    data: Optional[Path] = None) -> str:
    """Writes a seeded prompt (prompt.bin) and eager PyTorch's greedy generation of new_tokens
    tokens from it (expected_tokens.bin, expected_logits.bin) into `folder` (default: beside the
    .pte); returns the runner command that checks them (with --data `data`, the .pte's .ptd)."""
    prompt = reference_prompt(model.config.vocab_size, prompt_len)
    tokens, logits = eager_greedy(model, prompt.tolist(), new_tokens)
    folder = Path(pte).parent if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, tensor in (("prompt", prompt), ("expected_tokens", torch.tensor(tokens)),
                         ("expected_logits", logits)):
        write_tensor(folder / f"{name}.bin", tensor)
    return (f"build/cuda_gqa_llm_runner {pte}{f' --data {data}' if data else ''} --prompt {folder / 'prompt.bin'} "
            f"--new-tokens {new_tokens} "
            f"--expected-tokens {folder / 'expected_tokens.bin'} --expected-logits {folder / 'expected_logits.bin'}")
