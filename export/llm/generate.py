"""python -m cuda_gqa.export.llm.generate: run a .pte from export_llm through ExecuTorch's runtime.

Prefill the prompt, then decode one token at a time: greedy, or temperature
and top-p sampling. Token ids in and out; with --tokenizer (a tokenizer.json
or tokenizer.model, read by ExecuTorch's pytorch_tokenizers) text too. Prints
a progress line with tokens/s, then prefill and decode times.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from cuda_gqa.runtime.backend_library import BackendLibraryError, load_backend_library

from .reference import eager_greedy  # noqa: F401  (re-exported: its home before reference.py)


class PteDecoder:
    """The prefill and decode methods of an export_llm .pte, with the cache they share."""

    def __init__(self, pte: Path):
        from executorch.runtime import Runtime

        try:
            load_backend_library()  # registers CudaGqaBackend, for the delegated attention
            backend_problem = None
        except BackendLibraryError as e:  # a .pte with attention on the CPU runs without it
            backend_problem = str(e)
        self.program = Runtime.get().load_program(Path(pte))
        methods = set(self.program.method_names)
        if not {"prefill", "decode", "get_max_seq_len", "get_prefill_len"} <= methods:
            raise ValueError(f"{pte}: not an export_llm program (methods: {', '.join(sorted(methods))})")
        constant = lambda name: self.program.load_method(name).execute([]) if name in methods else None
        (self.max_seq_len,), (self.prefill_len,) = constant("get_max_seq_len"), constant("get_prefill_len")
        self.eos_ids = set(constant("get_eos_ids") or ())
        try:
            self._prefill, self._decode = self.program.load_method("prefill"), self.program.load_method("decode")
        except RuntimeError as e:
            hint = f" (CudaGqaBackend not registered: {backend_problem})" if backend_problem else ""
            raise RuntimeError(f"{pte}: loading its methods failed{hint}: {e}") from e

    def prefill(self, prompt: Sequence[int]) -> torch.Tensor:
        """Write the prompt into the cache from position 0; returns the last token's logits [vocab].

        Chunks of prefill_len tokens; the last, when short, overlaps the one
        before (rewriting identical cache rows) or, for a prompt shorter than
        one chunk, is padded (the padding's rows are overwritten by decode
        before any query can see them). A prefill returning only its last
        row's logits (export_llm's) has none for a padded prompt's last token:
        a decode step at its position gives them (rewriting its cache row).
        """
        n, chunk = len(prompt), self.prefill_len
        if not 0 < n < self.max_seq_len:
            raise ValueError(f"prompt of {n} tokens: the program holds 1..{self.max_seq_len - 1}")
        starts = list(range(0, n - chunk + 1, chunk)) or [0]
        if starts[-1] + chunk < n:
            starts.append(n - chunk)
        for start in starts:
            tokens = list(prompt[start:start + chunk])
            last = len(tokens) - 1
            tokens += [0] * (chunk - len(tokens))
            (logits,) = self._prefill.execute([torch.tensor([tokens]), torch.tensor([start])])
        if logits.shape[1] == chunk:  # every row's logits
            return logits[0, last]
        if last == chunk - 1:
            return logits[0, -1]
        return self.decode(prompt[-1], n - 1)

    def decode(self, token: int, position: int) -> torch.Tensor:
        """Append one token at `position`; returns its logits [vocab]. A position outside the cache is
        refused here: the delegate's cache-write kernel cannot raise, and would drop the row and attend
        on (at or past the end) or attend no keys (negative)."""
        if not 0 <= position < self.max_seq_len:
            raise ValueError(f"position {position} is outside the program's cache (positions 0..{self.max_seq_len - 1})")
        (logits,) = self._decode.execute([torch.tensor([[token]]), torch.tensor([position])])
        return logits[0, -1]


def sample(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
           generator: Optional[torch.Generator] = None) -> int:
    """Greedy when temperature is 0; else from softmax(logits / temperature) cut to the
    smallest set of tokens whose probability reaches top_p."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    outside = sorted_probs.cumsum(0) - sorted_probs >= top_p  # the top token always stays
    sorted_probs[outside] = 0
    return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])


@dataclass
class Generation:
    tokens: list[int]
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float


def generate(model: PteDecoder, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, stop_ids: Optional[set[int]] = None,
             on_token: Callable[[int, int, float], None] = lambda token, count, seconds: None) -> Generation:
    """New tokens after `prompt`, until max_new_tokens or a stop id (kept in the output).
    on_token(token, tokens so far, decode seconds so far) after each."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: at least 1")
    stop_ids = model.eos_ids if stop_ids is None else stop_ids
    max_new_tokens = min(max_new_tokens, model.max_seq_len - len(prompt))
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    logits = model.prefill(prompt)
    prefill_seconds = time.perf_counter() - start
    tokens: list[int] = []
    start = time.perf_counter()
    while True:
        tokens.append(sample(logits, temperature, top_p, generator))
        on_token(tokens[-1], len(tokens), time.perf_counter() - start)
        if len(tokens) == max_new_tokens or tokens[-1] in stop_ids:
            break
        logits = model.decode(tokens[-1], len(prompt) + len(tokens) - 1)
    return Generation(tokens, len(prompt), prefill_seconds, time.perf_counter() - start)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m cuda_gqa.export.llm.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pte", type=Path, required=True, help="a .pte written by python -m cuda_gqa.export.llm")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt-ids", help="prompt token ids, comma separated")
    prompt.add_argument("--prompt", help="prompt text (needs --tokenizer)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json or tokenizer.model")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tokenizer = None
    if args.tokenizer is not None:
        from pytorch_tokenizers import get_tokenizer

        tokenizer = get_tokenizer(str(args.tokenizer))
    if args.prompt is not None:
        if tokenizer is None:
            print("error: --prompt needs --tokenizer (or pass --prompt-ids)", file=sys.stderr)
            return 2
        prompt = tokenizer.encode(args.prompt, bos=True, eos=False)
    else:
        prompt = [int(t) for t in args.prompt_ids.split(",")]
    model = PteDecoder(args.pte)

    def progress(token, count, seconds):
        rate = count / seconds if seconds > 0 else float("inf")
        print(f"\r[generate] {count} tokens, {rate:.1f} tokens/s", end="", file=sys.stderr, flush=True)

    result = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                      seed=args.seed, on_token=progress)
    print(file=sys.stderr)
    print("tokens:", ",".join(map(str, result.tokens)))
    if tokenizer is not None:
        print("text:", tokenizer.decode(result.tokens))
    decoded = len(result.tokens) - 1  # the first new token comes from prefill's logits
    print(f"prefill: {result.prompt_tokens} tokens in {result.prefill_seconds * 1e3:.1f} ms "
          f"({result.prompt_tokens / result.prefill_seconds:.1f} tokens/s); "
          f"decode: {decoded} steps in {result.decode_seconds * 1e3:.1f} ms"
          + (f" ({decoded / result.decode_seconds:.1f} tokens/s)" if decoded else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
