"""python -m cuda_gqa.export: export the GQA attention demo to a .pte and run it.

Writes <out>/model.pte, <out>/input_0.bin and <out>/expected_0.bin (eager
PyTorch output), loads the program in ExecuTorch's runtime with
CudaGqaBackend registered, and runs it when a CUDA GPU is present. Without
one it says so after the load check and exits 0; the files it wrote run on a
GPU machine with the C++ runner (the command is printed).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from cuda_gqa.backends.compile_specs import DEFAULT_ARCHS, SUPPORTED_ARCHS
from cuda_gqa.backends.limits import MAX_HEAD_DIM, head_dim_problem

from .cli_checks import OneLineParser, archs_list, check_all, int_in, writable_target
from .attention_demo import KV_EXPANSIONS, MASKS, dynamic_lengths, make_attention_only, make_demo
from .zoo import ZOO, make_zoo_model
from .lower import lower_to_executorch
from .tensor_files import write_tensor

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MAX_LEN = 1 << 17  # sequence lengths
MAX_BATCH = 1024
MAX_HEADS = 256


def parse_args(argv):
    parser = OneLineParser(prog="python -m cuda_gqa.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: out/demo)")
    parser.add_argument("--dtype", choices=DTYPES, default="float16")
    parser.add_argument("--seq-len", type=int_in(1, MAX_LEN), default=128)
    parser.add_argument("--batch", type=int_in(1, MAX_BATCH), default=1)
    parser.add_argument("--heads-q", type=int_in(1, MAX_HEADS), default=8, help="query heads (default 8)")
    parser.add_argument("--heads-kv", type=int_in(1, MAX_HEADS), default=2,
                        help="key/value heads, a divisor of --heads-q (default 2)")
    parser.add_argument("--head-dim", type=int_in(1, MAX_HEAD_DIM), default=64)
    parser.add_argument("--kv-len", type=int_in(1, MAX_LEN),
                        help="export SDPA alone with q of --seq-len rows over this many keys (a decode step "
                             "when --seq-len is small) instead of the attention block")
    parser.add_argument("--kv-expansion", choices=sorted(KV_EXPANSIONS),
                        help="the block repeats K/V by hand this way instead of enable_gqa=True "
                             "(the partitioner folds it back)")
    parser.add_argument("--causal", action="store_true",
                        help="with --kv-len: is_causal=True (PyTorch aligns it top-left: query i sees keys 0..i)")
    parser.add_argument("--mask", choices=MASKS,
                        help="with --kv-len: pass a sliding-window attn_mask of this kind as a fourth input")
    parser.add_argument("--zoo", choices=sorted(ZOO),
                        help="export this model-zoo attention block (export/zoo.py: GQA as a model family "
                             "writes it) instead of the demo block; --dtype and --batch apply")
    parser.add_argument("--dynamic", action="store_true",
                        help="export the sequence lengths as dynamic dims bounded by --seq-len (and --kv-len): one "
                             "delegate payload serves every shorter length; the files hold the longest inputs")
    parser.add_argument("--export-only", action="store_true", help="write the files, skip loading and running")
    parser.add_argument("--archs", type=archs_list, default=",".join(f"sm_{a}" for a in DEFAULT_ARCHS),
                        help="target archs, comma separated (default %(default)s; from "
                             + ", ".join(f"sm_{a}" for a in SUPPORTED_ARCHS) + ")")
    parser.add_argument("--target-device", metavar="cuda:N",
                        help="plan the delegate's inputs and outputs in this GPU's memory (ExecuTorch's "
                             "device-aware memory planning; the program copies to and from it)")
    parser.add_argument("--device-io", action="store_true",
                        help="with --target-device: the method's inputs and outputs that are the delegate's stay "
                             "in device memory too (no copies at the program's edges; run with the runner's "
                             "--inputs-on-device, written to runner_args beside model.pte)")
    args = parser.parse_args(argv)
    device, out_problem = args.target_device, writable_target(args.out, is_dir=True)
    check_all(parser, [
        (out_problem is not None, "--out", f"{out_problem}"),
        (args.heads_q % args.heads_kv != 0, "--heads-kv",
         f"{args.heads_kv} does not divide --heads-q {args.heads_q} (accepted: a divisor of it)"),
        (head_dim_problem(args.head_dim) is not None, "--head-dim",
         f"{args.head_dim}: accepted a multiple of 16 from 16 to {MAX_HEAD_DIM}"),
        (device is not None and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())),
         "--target-device", f"{device!r}: accepted 'cuda' or 'cuda:N'"),
    ])
    if args.zoo is not None and (args.kv_len is not None or args.kv_expansion is not None or args.dynamic):
        parser.error("--zoo exports a zoo block as written: no --kv-len, --kv-expansion or --dynamic")
    if args.device_io and args.target_device is None:
        parser.error("--device-io needs --target-device")
    if args.dynamic and args.mask:
        parser.error("--dynamic cannot be combined with --mask (masks over dynamic lengths are not delegated yet)")
    return args


def export_demo(args) -> Path:
    options = {}
    if args.zoo is not None:
        model, inputs = make_zoo_model(args.zoo, DTYPES[args.dtype], args.batch)
        options = ZOO[args.zoo].partitioner_options
    elif args.kv_len is None:
        model, inputs = make_demo(DTYPES[args.dtype], args.seq_len, args.heads_q, args.heads_kv, args.head_dim,
                                  args.batch, kv_expansion=args.kv_expansion)
    else:
        model, inputs = make_attention_only(DTYPES[args.dtype], args.seq_len, args.kv_len, args.heads_q,
                                            args.heads_kv, args.head_dim, args.batch, is_causal=args.causal,
                                            mask=args.mask)
    with torch.no_grad():
        expected = model(*inputs)
    if args.zoo is not None:
        what = f"zoo block {args.zoo}: {ZOO[args.zoo].description}, {args.dtype}, batch {args.batch}"
    else:
        what = ("a GQA attention block" if args.kv_len is None
                else f"{'causal ' if args.causal else ''}GQA SDPA over {args.kv_len} keys"
                     + (f" with a {args.mask} mask" if args.mask else ""))
        what += (f" ({args.heads_q}/{args.heads_kv} heads, D={args.head_dim}, {args.dtype}, batch {args.batch}, "
                 f"seq {args.seq_len})")
    print(f"[1/3] exporting {what} for {args.archs} ...", flush=True)
    start = time.perf_counter()
    placement = {} if args.target_device is None else {"target_device": args.target_device}
    dynamic = dynamic_lengths(inputs, block=args.kv_len is None) if args.dynamic else None
    program, report = lower_to_executorch(model, inputs, device_io=args.device_io, archs=args.archs.split(","),
                                          dynamic_shapes=dynamic, **placement, **options)
    for d in report:
        where = f"{d.module}.{d.node}" if d.module else d.node
        print(f"      {where}: {'delegated to CudaGqaBackend' if d.delegated else 'left on CPU'} ({d.reason})")
    args.out.mkdir(parents=True, exist_ok=True)
    pte = args.out / "model.pte"
    pte.write_bytes(program.buffer)
    if args.device_io:  # read by runtime/runner/run_bundle.sh
        (args.out / "runner_args").write_text(f"--inputs-on-device --device {torch.device(args.target_device).index or 0}\n")
    for i, x in enumerate(inputs):
        write_tensor(args.out / f"input_{i}.bin", x)
    write_tensor(args.out / "expected_0.bin", expected)
    print(f"      wrote {len(inputs)} input file(s) and eager PyTorch's output beside it")
    torch.save({"inputs": inputs, "expected": expected}, args.out / "reference.pt")
    print(f"      wrote {pte} ({pte.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - start:.1f} s")
    return pte


def load_and_run(args, pte: Path) -> int:
    from executorch.runtime import Runtime

    from cuda_gqa.runtime import device_status, load_backend_library

    print("[2/3] loading the program in ExecuTorch's runtime ...", flush=True)
    load_backend_library()
    runtime = Runtime.get()
    if "CudaGqaBackend" not in runtime.backend_registry.registered_backend_names:
        print("error: CudaGqaBackend is not registered with ExecuTorch", file=sys.stderr)
        return 1
    program = runtime.load_program(pte)
    print(f"      program loaded; methods: {', '.join(sorted(program.method_names))}")
    gpu_ok, device = device_status()
    reference = torch.load(args.out / "reference.pt")
    runner_cmd = (f"build/cuda_gqa_runner {pte} "
                  + "".join(f"--input {args.out / f'input_{i}.bin'} " for i in range(len(reference["inputs"])))
                  + f"--expected {args.out / 'expected_0.bin'}")
    if not gpu_ok:
        print(f"[3/3] no usable CUDA GPU here: {device}")
        try:
            program.load_method("forward")
        except Exception as e:  # the backend refuses init with a logged cause
            print(f"      loading 'forward' fails cleanly, as it should without a GPU ({type(e).__name__})")
        else:
            print("error: 'forward' loaded without a GPU", file=sys.stderr)
            return 1
        print(f"      on a GPU machine run: {runner_cmd}")
        return 0
    if args.device_io:
        # The method wants device tensors as inputs, which executorch's Python runtime cannot make.
        print(f"[3/3] --device-io: run it with the C++ runner on {device}: {runner_cmd} --inputs-on-device")
        return 0
    print(f"[3/3] running on {device} ...", flush=True)
    method = program.load_method("forward")
    (actual,) = method.execute(list(reference["inputs"]))
    expected = reference["expected"].float()
    err = (actual.float() - expected).abs().max().item()
    # The runner's tolerance: two bf16 ulps relative, 2e-2 absolute.
    ok = torch.allclose(actual.float(), expected, atol=2e-2, rtol=1.6e-2)
    print(f"      max abs error vs eager PyTorch: {err:.3e} ({'PASS' if ok else 'FAIL'})")
    if ok and args.dynamic:
        ok = run_shorter(args, method, reference["inputs"])
    return 0 if ok else 1


def run_shorter(args, method, inputs) -> bool:
    """The dynamic program again at about half of every dynamic length, against eager PyTorch."""
    model, _ = (make_demo(DTYPES[args.dtype], args.seq_len, args.heads_q, args.heads_kv, args.head_dim, args.batch,
                          kv_expansion=args.kv_expansion) if args.kv_len is None else
                make_attention_only(DTYPES[args.dtype], args.seq_len, args.kv_len, args.heads_q, args.heads_kv,
                                    args.head_dim, args.batch, is_causal=args.causal, mask=args.mask))
    shapes = dynamic_lengths(inputs, block=args.kv_len is None)
    shorter = tuple(x if not dims else x.narrow(next(iter(dims)), 0, max(1, x.shape[next(iter(dims))] // 2))
                    .contiguous() for x, dims in zip(inputs, shapes))
    (actual,) = method.execute(list(shorter))
    with torch.no_grad():
        expected = model(*shorter).float()
    ok = actual.shape == expected.shape and torch.allclose(actual.float(), expected, atol=2e-2, rtol=1.6e-2)
    print(f"      shorter inputs {[tuple(x.shape) for x in shorter]}: {'PASS' if ok else 'FAIL'}")
    return ok


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="      %(message)s")
    # Compile progress; the partition report is printed below.
    logging.getLogger("cuda_gqa.backends.attention_plan").setLevel(logging.INFO)
    pte = export_demo(args)
    return 0 if args.export_only else load_and_run(args, pte)


if __name__ == "__main__":
    sys.exit(main())
