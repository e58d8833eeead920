"""An exported bf16 (or fp16) program's logits against float32 eager PyTorch, measured directly on the GPU
machine (issue 17: "llama3.2-1b in bf16: logits against float32 eager within a stated tolerance").

    python3 bench/llm_logits_check.py --model llama3.2-1b --pte .gpu-1b-whole/llama3.2-1b.pte --out $OUT

The reference is the preset's decoder with the program's weights (seeded, rounded to --dtype as the
export rounded them) computed in float32 on the GPU: a --prompt-len random prompt, then
--new-tokens greedy steps. The C++ runner runs the program with teacher forcing (fed eager's
tokens, so every row of logits is compared) and writes its logits; this reports the largest
absolute difference, the relative L2 difference per row (median and largest), and how many rows'
greedy tokens agree, then whether every element is within --atol + --rtol * |eager| (the stated
tolerance; exit 1 when not). The weights: a .ptd beside the .pte, or rebuilt from its manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_runner_cli import RUNNER, error_line, run_logged, runner_env  # noqa: E402
from llm_step import program_data  # noqa: E402

from cuda_gqa.export.llm.presets import PRESETS, build_preset  # noqa: E402
from cuda_gqa.export.llm.reference import eager_greedy, reference_prompt  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=PRESETS, required=True, help="the preset the program was exported from")
    parser.add_argument("--pte", type=Path, required=True)
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="the program's dtype")
    parser.add_argument("--max-seq-len", type=int, default=4096, help="the program's cache length")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--atol", type=float, default=0.25, help="stated tolerance: absolute part")
    parser.add_argument("--rtol", type=float, default=0.05, help="stated tolerance: relative part")
    parser.add_argument("--out", type=Path, required=True, help="writes llm_logits_check.md there")
    args = parser.parse_args(argv)
    for name in ("prompt_len", "new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.prompt_len + args.new_tokens > args.max_seq_len:
        parser.error("--prompt-len + --new-tokens exceed --max-seq-len")
    if not args.pte.is_file():
        parser.error(f"--pte {args.pte}: no such file")
    return args


def eager_reference(args) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """(prompt, greedy tokens, their float32 logits [new_tokens, vocab]) of the float32 decoder holding
    the program's rounded weights."""
    model = build_preset(args.model, max_seq_len=args.max_seq_len, dtype=DTYPES[args.dtype], device="cuda")
    model = model.float().cuda()
    prompt = reference_prompt(model.config.vocab_size, args.prompt_len)
    tokens, logits = eager_greedy(model, prompt.tolist(), args.new_tokens)
    return prompt, tokens, logits


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    prompt, tokens, expected = eager_reference(args)
    runner = args.pte.parent / RUNNER
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        prompt.numpy().astype(np.int64).tofile(folder / "prompt.bin")
        np.array(tokens, np.int64).tofile(folder / "tokens.bin")
        data = stack.enter_context(program_data(args.pte, torch.device("cuda")))
        command = [runner, args.pte, *(["--data", data] if data else []), "--prompt", folder / "prompt.bin",
                   "--new-tokens", args.new_tokens, "--teacher-forcing", "--expected-tokens", folder / "tokens.bin",
                   "--logits-out", folder / "logits.bin"]
        code, output = run_logged(command, args.out / "llm_logits_check.log", runner_env(runner.parent))
        if not (folder / "logits.bin").exists():
            print(f"error: the runner wrote no logits: {error_line(output, code)}", file=sys.stderr)
            return 2
        got = torch.from_numpy(np.fromfile(folder / "logits.bin", np.float32)).view(args.new_tokens, -1)
    report = compare(got, expected, args)
    (args.out / "llm_logits_check.md").write_text(report)
    print(report)
    return 0 if "within the stated tolerance: yes" in report else 1


def compare(got: torch.Tensor, expected: torch.Tensor, args) -> str:
    diff = (got - expected).abs()
    rel_rows = (got - expected).norm(dim=1) / expected.norm(dim=1)
    outside = int((diff > args.atol + args.rtol * expected.abs()).sum())
    same_tokens = int((got.argmax(1) == expected.argmax(1)).sum())
    return "\n".join([
        f"# {args.model} {args.dtype} program vs float32 eager (same rounded weights), teacher-forced",
        "",
        f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}; torch {torch.__version__}. "
        f"Program: `{args.pte}`; prompt "
        f"{args.prompt_len} random tokens, then {args.new_tokens} rows (prefill's last row, then decode steps).",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| largest absolute difference | {diff.max().item():.4f} |",
        f"| largest eager logit (absolute) | {expected.abs().max().item():.3f} |",
        f"| relative L2 difference per row: median | {rel_rows.median().item():.2e} |",
        f"| relative L2 difference per row: largest | {rel_rows.max().item():.2e} |",
        f"| rows whose greedy token agrees | {same_tokens} of {args.new_tokens} |",
        f"| elements outside atol {args.atol} + rtol {args.rtol} x abs(eager) | {outside} of {diff.numel()} |",
        "",
        f"within the stated tolerance: {'yes' if outside == 0 else 'no'}",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
