"""python -m cuda_gqa.export.llm: export an LLM to one .pte with `prefill` and `decode` methods.

The model is a named preset (seeded random weights) or a Hugging Face-format
checkpoint directory. The whole step (embedding, norms, projections, RoPE,
KV caches, attention, MLP, LM head) goes to CudaGqaBackend (cubins for
--archs) when its kernels hold every node; otherwise, and with
--attention-only, the attention calls do and the rest goes to the CPU
partitioner. Prints each stage, compile progress, and a summary: what each
method delegated, .pte size, time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

# torchao (imported with ExecuTorch) warns that its GPU-only extensions do not load on a CPU
# machine, and torch's pytree about a deprecation, both at import: neither is ours to fix.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

import torch  # noqa: E402

from cuda_gqa.backends.compile_specs import DEFAULT_ARCHS, SUPPORTED_ARCHS

from ..cli_checks import OneLineParser, archs_list, check_all, int_in, writable_target
from .checkpoint import CheckpointError, load_checkpoint
from .pipeline import CPU_PARTITIONERS, DEFAULT_PREFILL_LEN, export_llm
from .presets import PRESETS, build_preset
from .reference import write_reference

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MAX_SEQ_LEN = 1 << 20


def parse_args(argv):
    parser = OneLineParser(prog="python -m cuda_gqa.export.llm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--preset", choices=PRESETS, help="a built-in shape with seeded random weights")
    model.add_argument("--checkpoint", type=Path, help="a Hugging Face-format directory (config.json + *.safetensors)")
    parser.add_argument("--max-seq-len", type=int_in(1, MAX_SEQ_LEN), default=2048, help="KV cache length (default %(default)s)")
    parser.add_argument("--prefill-len", type=int_in(1, MAX_SEQ_LEN),
                        help=f"tokens per prefill call (default min({DEFAULT_PREFILL_LEN}, max-seq-len))")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--archs", type=lambda text: archs_list(text, allow_none=True), default=",".join(f"sm_{a}" for a in DEFAULT_ARCHS),
                        help="GPU archs for the attention cubins, comma separated (default %(default)s; from "
                             + ", ".join(f"sm_{a}" for a in SUPPORTED_ARCHS)
                             + "), or 'none' to leave attention on the CPU")
    parser.add_argument("--attention-only", action="store_true",
                        help="delegate only the attention calls to the GPU (the rest to --cpu-partitioner); "
                             "default: the whole step, embedding to LM head, when the kernels hold every node")
    parser.add_argument("--decode-token-method", action="store_true",
                        help="also export decode_token: one token in, its greedy next token id out (the argmax "
                             "on the GPU), sharing the caches; needs the whole step on the GPU")
    parser.add_argument("--cpu-partitioner", choices=[*CPU_PARTITIONERS, "none"], default="xnnpack",
                        help="who takes the rest of the graph (default %(default)s; none: portable kernels)")
    parser.add_argument("--external-weights", action="store_true",
                        help="write the parameters to a .ptd beside the .pte (same stem), which the program then "
                             "needs at load (cuda_gqa_llm_runner --data); the .pte keeps the graph, cubins and "
                             "RoPE tables, so exports of one model at any --max-seq-len share the .ptd")
    parser.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0, help="weights seed of a preset")
    parser.add_argument("--out", type=Path, help="the .pte to write (default out/<preset or checkpoint name>.pte)")
    parser.add_argument("--reference-tokens", type=int_in(1, MAX_SEQ_LEN), metavar="N",
                        help="also write, beside the .pte, a seeded prompt (prompt.bin) and eager PyTorch's greedy "
                             "generation of N tokens from it (expected_tokens.bin, expected_logits.bin), the "
                             "files build/cuda_gqa_llm_runner checks a GPU run against")
    parser.add_argument("--reference-prompt-len", type=int_in(1, MAX_SEQ_LEN), default=11, metavar="P",
                        help="prompt length for --reference-tokens (default %(default)s)")
    args = parser.parse_args(argv)
    out_problem = None if args.out is None else writable_target(args.out, is_dir=False)
    checkpoint = args.checkpoint
    prompt_and_tokens = args.reference_prompt_len + (args.reference_tokens or 0)
    check_all(parser, [
        (out_problem is not None, "--out", f"{out_problem}"),
        (checkpoint is not None and not checkpoint.is_dir(), "--checkpoint",
         f"{checkpoint} is not a folder (accepted: a folder with config.json and *.safetensors)"),
        (args.prefill_len is not None and args.prefill_len > args.max_seq_len, "--prefill-len",
         f"{args.prefill_len} is above --max-seq-len {args.max_seq_len} (accepted: 1 to it)"),
        (args.reference_tokens is not None and args.reference_prompt_len > args.max_seq_len, "--reference-prompt-len",
         f"{args.reference_prompt_len} is above --max-seq-len {args.max_seq_len} (accepted: 1 to it)"),
        # The last token generated is never fed back: positions reach prompt + tokens - 2.
        (args.reference_tokens is not None and prompt_and_tokens > args.max_seq_len + 1, "--reference-tokens",
         f"{args.reference_tokens} new tokens after a {args.reference_prompt_len}-token prompt exceed --max-seq-len "
         f"{args.max_seq_len} (accepted: 1 to {args.max_seq_len + 1 - args.reference_prompt_len})"),
    ])
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="      %(message)s")
    logging.getLogger("cuda_gqa.backends.attention_plan").setLevel(logging.INFO)  # compile progress
    # Expected here, and noise on the console: the caches are mutated buffers
    # meant to start empty, and torch's pytree deprecations are not ours to fix.
    warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")
    warnings.filterwarnings("ignore", category=FutureWarning)
    dtype = DTYPES[args.dtype]
    log = lambda message: print(f"[export] {message}", flush=True)
    if args.checkpoint is not None:
        log(f"loading {args.checkpoint}")
        try:
            model = load_checkpoint(args.checkpoint, max_seq_len=args.max_seq_len, dtype=dtype)
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        name = args.checkpoint.resolve().name
    else:
        log(f"building {args.preset} with seeded random weights (seed {args.seed})")
        model = build_preset(args.preset, max_seq_len=args.max_seq_len, dtype=dtype, seed=args.seed)
        name = args.preset
    archs = None if args.archs == "none" else args.archs.split(",")
    try:
        result = export_llm(model, prefill_len=args.prefill_len, archs=archs, log=log,
                            cpu_partitioner=None if args.cpu_partitioner == "none" else args.cpu_partitioner,
                            external_weights=args.external_weights, whole_model=not args.attention_only,
                            greedy_token_method=args.decode_token_method,
                            out=args.out or Path("out") / f"{name}.pte")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    if args.reference_tokens is not None:
        command = write_reference(model, result.pte, args.reference_tokens, args.reference_prompt_len,
                                  data=result.ptd)
        log(f"wrote eager PyTorch's greedy generation of {args.reference_tokens} tokens beside it; check a run with:")
        print(f"  {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
