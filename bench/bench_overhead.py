"""Host-side overhead of one attention call: cuda_gqa's C++ backend against PyTorch eager SDPA,
same shape, same run, on the GPU machine (no executorch needed).

    python3 bench/bench_overhead.py [--iterations 1000] [--out DIR]

Default shape: one layer's decode step, bf16, B=1, H_q=8, H_kv=2, D=64, L_q=1, L_kv=200 -- the
GPU bundle's decode-bf16-short-device-io case, whose `run_bundle.sh` line is the ExecuTorch
runner's figure for the same SDPA with GPU-resident inputs and outputs.

Each candidate: wall time of a call that returns when the GPU is done (median and p90 over
--iterations after warm-up), the kernels' own device time, and overhead = median wall - median
kernel time.
  cuda_gqa C API   cuda_gqa_delegate_execute on device-resident torch tensors (the delegate's own
                   stream, "synchronize" on), called through ctypes; two rows: the backend's
                   "launch_graphs" option on (the plan's kernels as one CUDA graph) and off (one
                   cuLaunchKernel per kernel), their executes interleaved. Kernel time: the
                   backend's "profile" option (CUDA events around each execute's kernels, enqueued
                   back to back behind a held stream). The cost of a ctypes call is measured on a
                   no-op C function and shown, not subtracted.
  PyTorch eager    scaled_dot_product_attention(enable_gqa=True) then torch.cuda.synchronize().
                   Kernel time: a CUDA graph of 20 calls replayed, per call (no launch gaps).
The host time of an execute that only enqueues (the "synchronize" option off) is shown too, both ways.
Writes DIR/bench_overhead.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.nn.functional import scaled_dot_product_attention

import cuda_gqa.runtime as cr
from cuda_gqa.backends.attention_plan import build_attention_payload
from cuda_gqa.backends.serialization import deserialize_payload
from cuda_gqa.runtime import cpp_delegate

WARMUP = 50
GRAPH_CALLS, GRAPH_REPLAYS = 20, 30


def median_p90(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[max(0, int(round(0.9 * len(ordered))) - 1)]


def wall_us(fn, iterations: int) -> list[float]:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e3)
    return times


def interleaved_wall_us(fns, iterations: int, after=None) -> list[list[float]]:
    """wall_us of each of `fns`, called in turn each iteration (drift affects them alike);
    after(): called outside the timed span after each call."""
    times = [[] for _ in fns]
    for i in range(WARMUP + iterations):
        for fn, into in zip(fns, times):
            start = time.perf_counter_ns()
            fn()
            elapsed = time.perf_counter_ns() - start
            if after is not None:
                after()
            if i >= WARMUP:
                into.append(elapsed / 1e3)
    return times


def graph_kernel_us(fn) -> float:
    """Device time per call of `fn` captured GRAPH_CALLS times in one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_CALLS):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    per_call = []
    for _ in range(GRAPH_REPLAYS):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) * 1e3 / GRAPH_CALLS)
    return statistics.median(per_call)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--heads-q", type=int, default=8)
    parser.add_argument("--heads-kv", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--kv-len", type=int, default=200)
    parser.add_argument("--payload", type=Path, help="a payload file for this shape (bench/make_payloads.py) "
                        "instead of one compiled here")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    torch.cuda.init()  # the backend runs in the primary context torch uses
    dtype, batch, l_q = torch.bfloat16, 1, 1
    major, minor = torch.cuda.get_device_capability()
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, args.heads_q, l_q, args.head_dim, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(batch, args.heads_kv, args.kv_len, args.head_dim, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn_like(k)
    out = torch.empty_like(q)
    expected = scaled_dot_product_attention(q, k, v, enable_gqa=True)

    if args.payload:
        payload = args.payload.read_bytes()
    else:
        payload = build_attention_payload(dtype=dtype, batch=batch, num_heads_q=args.heads_q,
                                          num_heads_kv=args.heads_kv, head_dim=args.head_dim, l_q=l_q,
                                          l_kv=args.kv_len, is_causal=False, archs=[10 * major + minor])
    lib = cr.load_backend_library()
    handles = {}  # (launch_graphs, mode): delegate
    for graphs in (True, False):
        cr.set_backend_option("launch_graphs", graphs)
        for mode in ("plain", "profile", "enqueue"):
            cr.set_backend_option("profile", mode == "profile")
            cr.set_backend_option("synchronize", mode != "enqueue")
            rc, handles[graphs, mode] = cpp_delegate.init(payload)
            if rc != 0:
                raise SystemExit(f"cuda_gqa init failed: executorch error {rc:#x} (see the log above)")
    cr.set_backend_option("profile", False)
    cr.set_backend_option("synchronize", True)
    cr.set_backend_option("launch_graphs", True)
    torch.cuda.synchronize()
    arguments = cpp_delegate.arguments([cpp_delegate.torch_tensor(t) for t in (q, k, v, out)])
    execute, count = lib.cuda_gqa_delegate_execute, len(arguments)
    for graphs in (True, False):
        out.fill_(float("nan"))
        torch.cuda.synchronize()
        if execute(handles[graphs, "plain"], arguments, count) != 0:
            raise SystemExit("cuda_gqa execute failed (see the log above)")
        torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)

    rows = []
    both = (True, False)
    walls = interleaved_wall_us([lambda g=g: execute(handles[g, "plain"], arguments, count) for g in both],
                                args.iterations)
    profiled = {g: [] for g in both}
    for _ in range(args.iterations):
        for g in both:
            before = cr.profiled_kernel_time_ns()
            execute(handles[g, "profile"], arguments, count)
            profiled[g].append((cr.profiled_kernel_time_ns() - before) / 1e3)
    # Host time alone: an execute that only enqueues ("synchronize" off), the GPU drained
    # outside the timed span.
    enqueue = interleaved_wall_us([lambda g=g: execute(handles[g, "enqueue"], arguments, count) for g in both],
                                  args.iterations, after=torch.cuda.synchronize)
    enqueue_us = {g: statistics.median(times) for g, times in zip(both, enqueue)}
    no_op = lib.cuda_gqa_payload_version
    ctypes_us = statistics.median(wall_us(no_op, args.iterations))
    for g, wall in zip(both, walls):
        name = "cuda_gqa C API (ctypes), " + ("launch graphs" if g else "kernel by kernel")
        rows.append((name, wall, statistics.median(profiled[g])))

    def eager():
        scaled_dot_product_attention(q, k, v, enable_gqa=True)
        torch.cuda.synchronize()

    eager_wall = wall_us(eager, args.iterations)
    eager_kernels = graph_kernel_us(lambda: scaled_dot_product_attention(q, k, v, enable_gqa=True))
    rows.append(("PyTorch eager SDPA", eager_wall, eager_kernels))
    for handle in handles.values():
        cpp_delegate.destroy(handle)

    device = torch.cuda.get_device_name()
    launches = sorted({len(plan.kernels) for plan in deserialize_payload(payload).plans})
    lines = [f"Decode step, bf16, B={batch}, H_q={args.heads_q}, H_kv={args.heads_kv}, D={args.head_dim}, "
             f"L_kv={args.kv_len}, {'/'.join(map(str, launches))} kernel launch(es) per execute, on {device}, "
             f"torch {torch.__version__}, {args.iterations} iterations",
             "", "| candidate | call median us | call p90 us | kernels us | overhead us |", "|---|---|---|---|---|"]
    for name, wall, kernels in rows:
        median, p90 = median_p90(wall)
        lines.append(f"| {name} | {median:.1f} | {p90:.1f} | {kernels:.1f} | {median - kernels:.1f} |")
    lines += ["", f"A ctypes call of a no-op C function: {ctypes_us:.2f} us (included in the C API rows).",
              f"Host time of one C API execute that only enqueues (\"synchronize\" off): {enqueue_us[True]:.2f} us "
              f"median with launch graphs, {enqueue_us[False]:.2f} us kernel by kernel; the rest of the overhead "
              f"is launch latency and the wait."]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_overhead.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
