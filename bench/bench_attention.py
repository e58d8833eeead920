"""GQA attention on the GPU: cuda_gqa's kernels side by side with what users would pick instead.

    python3 bench/make_payloads.py DIR          # on the export machine: AOT cubins for every shape
    python3 bench/bench_attention.py [--payloads DIR] [--out DIR] [--upstream-sdpa PATH/TO/executorch/.../sdpa.py]

Candidates: cuda_gqa (AOT cubins through the Python shim when --payloads is
given, and the same cubins without programmatic dependent launches where a
plan has one; Triton JIT of the same kernel source), PyTorch SDPA's
default dispatch with enable_gqa=True and each of its backends forced
(cuDNN, flash, efficient; native GQA and with K/V pre-expanded),
FlexAttention through torch.compile with enable_gqa=True (where it compiles;
--no-flex leaves it out: it compiles once per shape), and upstream
ExecuTorch's Triton SDPA when its file is given: `sdpa` as before (no
kv_len: its general kernel), and on decode and verify rows upstream's
current decode routes, `sdpa` with `kv_len` (the filled length as a device
scalar, here the whole cache: it dispatches L_q == 1 to its split-K decode,
2..4 query rows to its small-query split-K) and, on decode rows,
`sdpa_decode_splitk` itself (where the file has it). Every candidate is
checked against a float32 reference before it is timed; a wrong candidate
is reported as such, not timed, and one that refuses the shape (upstream's
split-K refuses head dims that are not powers of 2) gets a '-' cell and a
footnote with its reason.

Timing: each candidate is captured CALLS_PER_GRAPH times in one CUDA graph,
so launch overhead is excluded; the median over replays is reported in
microseconds per call. Bounds come from the same run: decode moves its K/V
bytes at the measured device-to-device copy bandwidth, prefill does its
causal FLOPs at the measured bf16 matmul rate.

Writes DIR/bench_attention.md (the table) and DIR/bench_attention.png
(time against L_kv per model).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from cuda_gqa.backends.kernels.jit_launch import MAX_DECODE_L_Q, attention, decode_workspace

CALLS_PER_GRAPH = 20
REPLAYS = 15
TOLERANCE = 3e-2  # bf16


@dataclass(frozen=True)
class Shape:
    kind: str
    model: str
    batch: int
    heads_q: int
    heads_kv: int
    head_dim: int
    l_q: int
    l_kv: int

    @property
    def causal(self) -> bool:
        # Prefill is causal (L_q == L_kv, so both alignments agree). Decode and
        # verify rows see the whole cache: PyTorch's is_causal is top-left
        # aligned and would hide almost all of it.
        return self.kind == "prefill"

    @property
    def key(self) -> str:
        """File name stem of this shape's payload."""
        return (f"{self.kind}-{self.model}-b{self.batch}-{self.heads_q}x{self.heads_kv}-d{self.head_dim}"
                f"-q{self.l_q}-kv{self.l_kv}")

    @property
    def label(self) -> str:
        return f"{self.kind} {self.model} B={self.batch} {self.heads_q}/{self.heads_kv} D={self.head_dim} " \
               f"Lq={self.l_q} Lkv={self.l_kv}"


SHAPES = [
    Shape("decode", "llama3-8b", 1, 32, 8, 128, 1, 512),
    Shape("decode", "llama3-8b", 1, 32, 8, 128, 1, 1024),
    Shape("decode", "llama3-8b", 1, 32, 8, 128, 1, 2048),
    Shape("decode", "llama3-8b", 1, 32, 8, 128, 1, 4096),
    Shape("decode", "llama3-8b", 1, 32, 8, 128, 1, 8192),
    Shape("decode", "llama3-8b", 1, 32, 8, 128, 1, 32768),
    Shape("decode", "qwen2.5-7b", 1, 28, 4, 128, 1, 2048),
    Shape("decode", "qwen2.5-7b", 1, 28, 4, 128, 1, 32768),
    Shape("decode", "qwen3.5-moe", 1, 16, 2, 256, 1, 8192),
    Shape("decode", "qwen3.5-moe", 1, 16, 2, 256, 1, 32768),
    Shape("decode", "mqa", 1, 32, 1, 128, 1, 2048),
    Shape("decode", "mqa", 1, 32, 1, 128, 1, 32768),
    Shape("decode", "llama3-8b", 8, 32, 8, 128, 1, 8192),
    Shape("decode", "phi3", 1, 32, 8, 96, 1, 32768),
    # A few query rows against a KV cache (speculative verification), unmasked like decode.
    Shape("verify", "llama3-8b", 1, 32, 8, 128, 4, 8192),
    Shape("verify", "llama3-8b", 1, 32, 8, 128, 16, 8192),
    Shape("verify", "qwen2.5-7b", 1, 28, 4, 128, 8, 32768),
    Shape("prefill", "llama3-8b", 1, 32, 8, 128, 4096, 4096),
    Shape("prefill", "llama3-8b", 1, 32, 8, 128, 8192, 8192),
    Shape("prefill", "llama3-8b", 4, 32, 8, 128, 4096, 4096),  # K/V of all heads (64 MiB) overflow L2
    Shape("prefill", "qwen3.5-moe", 1, 16, 2, 256, 4096, 4096),
    Shape("prefill", "phi3", 1, 32, 8, 96, 4096, 4096),
]


def time_us(fn: Callable[[], object]) -> float:
    """Median microseconds per call, CUDA-graph replayed."""
    fn()  # compile / warm caches outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS_PER_GRAPH):
            fn()
    graph.replay()
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / CALLS_PER_GRAPH)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (time_us(lambda: dst.copy_(src)) * 1e-6)


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    return 2 * 8192**3 / (time_us(lambda: a @ b) * 1e-6)


def bound_us(shape: Shape, bandwidth: float, flops: float) -> float:
    if shape.kind in ("decode", "verify"):
        kv = 2 * shape.batch * shape.heads_kv * shape.l_kv * shape.head_dim * 2
        q_o = 2 * shape.batch * shape.heads_q * shape.l_q * shape.head_dim * 2
        return (kv + q_o) / bandwidth * 1e6
    causal_flops = 4 * shape.batch * shape.heads_q * shape.l_q * shape.l_kv * shape.head_dim / 2
    return causal_flops / flops * 1e6


class NotRun(str):
    """Why a candidate has no time for a shape (it raised when called): a '-' cell and a footnote."""


def load_upstream(path: Optional[Path]):
    """Upstream ExecuTorch's sdpa.py as a module (its `sdpa`, and `sdpa_decode_splitk` where the
    file is recent enough to have it)."""
    if path is None:
        return None
    if not path.is_file():
        raise SystemExit(f"--upstream-sdpa {path}: no such file")
    spec = importlib.util.spec_from_file_location("upstream_et_sdpa", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "sdpa", None)):
        raise SystemExit(f"--upstream-sdpa {path}: the file defines no sdpa()")
    return module


def accepts_kv_len(op) -> bool:
    """Whether an upstream entry point (a torch.library.triton_op or a plain function) takes kv_len
    (older upstream files do not)."""
    import inspect

    try:
        return "kv_len" in inspect.signature(getattr(op, "_init_fn", op)).parameters
    except (TypeError, ValueError):
        return False


def upstream_calls(shape: Shape, q, k, v, upstream) -> dict[str, Callable[[], torch.Tensor]]:
    """Upstream's routes for this shape. Arguments as its signature orders them: (q, k, v,
    attn_mask, dropout_p, is_causal, scale (0: 1/sqrt(D)), enable_gqa, ..., kv_len)."""
    found = {"upstream ET Triton": lambda: upstream.sdpa(q, k, v, None, 0.0, shape.causal, 0.0, True)}
    if shape.kind not in ("decode", "verify"):
        return found
    # Every key of the cache is filled: kv_len = L_kv, a device scalar as upstream's decode passes it.
    kv_len = torch.tensor([shape.l_kv], dtype=torch.int64, device=q.device)
    if accepts_kv_len(upstream.sdpa):
        found["upstream ET Triton (kv_len)"] = lambda: upstream.sdpa(q, k, v, None, 0.0, False, 0.0, True,
                                                                     kv_len=kv_len)
    splitk = getattr(upstream, "sdpa_decode_splitk", None)
    if shape.l_q == 1 and splitk is not None:
        if accepts_kv_len(splitk):
            found["upstream ET split-K decode"] = lambda: splitk(q, k, v, None, 0.0, False, 0.0, True, kv_len=kv_len)
        else:
            found["upstream ET split-K decode"] = lambda: splitk(q, k, v, None, 0.0, False, 0.0, True)
    return found


def flex_attention_call(shape: Shape, q, k, v) -> Callable[[], torch.Tensor]:
    """FlexAttention compiled for this shape; its block mask (bottom-right causal) is built once, untimed."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # One compilation per shape: allow as many as the table has.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(SHAPES))
    compiled = _compiled_flex.setdefault("fn", torch.compile(flex_attention, dynamic=False))
    block_mask = None
    if shape.causal:
        diagonal = shape.l_kv - shape.l_q
        block_mask = create_block_mask(lambda b, h, q_idx, kv_idx: kv_idx <= q_idx + diagonal, None, None,
                                       shape.l_q, shape.l_kv, device="cuda")
    return lambda: compiled(q, k, v, block_mask=block_mask, enable_gqa=True)


_compiled_flex: dict = {}


def candidates(shape: Shape, q, k, v, upstream, payloads: Optional[Path],
               baseline_payloads: Optional[list[Path]] = None,
               flex: bool = True) -> dict[str, Callable[[], torch.Tensor]]:
    group = shape.heads_q // shape.heads_kv
    causal = shape.causal
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    out = torch.empty_like(q)

    def torch_sdpa(backend: Optional[SDPBackend], expanded: bool):
        kk, vv = (k_rep, v_rep) if expanded else (k, v)

        def run():
            if backend is None:
                return scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=not expanded)
            with sdpa_kernel([backend]):
                return scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=not expanded)

        return run

    found = {}
    if payloads is not None:
        from cuda_gqa.runtime.cubin_launcher import CubinLauncher

        payload = (payloads / f"{shape.key}.cgqa").read_bytes()
        launcher = CubinLauncher(payload)
        found["cuda_gqa (AOT cubin)"] = lambda: launcher(q, k, v, out=out)
        if any(any(plan) for plan in launcher.programmatic):
            # What programmatic dependent launch (the combine's) saves: the same cubins launched plainly.
            plain = CubinLauncher(payload, programmatic_launch=False)
            found["cuda_gqa (AOT cubin, plain launches)"] = lambda: plain(q, k, v, out=out)
    for folder in baseline_payloads or []:
        if (folder / f"{shape.key}.cgqa").exists():
            from cuda_gqa.runtime.cubin_launcher import CubinLauncher

            other = CubinLauncher((folder / f"{shape.key}.cgqa").read_bytes())
            found[f"cuda_gqa (AOT cubin, {folder.name})"] = lambda other=other: other(q, k, v, out=out)
    # The decode workspace is allocated once, outside the timed calls, as the runtime does.
    workspace = decode_workspace(q, num_splits=128) if shape.l_q <= MAX_DECODE_L_Q else None
    found["cuda_gqa (Triton JIT)"] = lambda: attention(q, k, v, is_causal=causal, out=out, workspace=workspace)
    found["torch default"] = torch_sdpa(None, False)
    for name, backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        found[f"torch {name}"] = torch_sdpa(backend, False)
        found[f"torch {name} (K/V expanded)"] = torch_sdpa(backend, True)
    if flex:
        found["torch FlexAttention"] = flex_attention_call(shape, q, k, v)
    if upstream is not None:
        found.update(upstream_calls(shape, q, k, v, upstream))
    return found


def run_shape(shape: Shape, upstream, payloads: Optional[Path],
              baseline_payloads: Optional[list[Path]] = None, flex: bool = True) -> dict[str, str | float]:
    torch.manual_seed(0)
    make = lambda h, l: torch.randn(shape.batch, h, l, shape.head_dim, device="cuda", dtype=torch.bfloat16)
    q, k, v = make(shape.heads_q, shape.l_q), make(shape.heads_kv, shape.l_kv), make(shape.heads_kv, shape.l_kv)
    # The reference materialises the scores: chunk long prefills by query rows.
    expected = torch.cat([_reference_rows(q, k, v, i, min(i + 1024, shape.l_q), shape.causal)
                          for i in range(0, shape.l_q, 1024)], dim=2)
    results: dict[str, str | float] = {}
    for name, fn in candidates(shape, q, k, v, upstream, payloads, baseline_payloads, flex).items():
        try:
            err = (fn().float() - expected).abs().max().item()
        except Exception as e:  # a backend that does not support this shape
            with contextlib.suppress(Exception):  # a refusal launches nothing; a failed launch may have
                torch.cuda.synchronize()
            results[name] = NotRun(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            print(f"  {name}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}", flush=True)
            continue
        if not err <= TOLERANCE:
            results[name] = f"wrong (err {err:.1e})"
            continue
        try:
            results[name] = time_us(fn)
        except Exception as e:  # e.g. a compiled candidate that a CUDA graph cannot capture
            torch.cuda.synchronize()
            results[name] = f"n/a (timing: {type(e).__name__})"
            print(f"  {name}: timing failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}",
                  flush=True)
    return results


def _reference_rows(q, k, v, start: int, stop: int, causal: bool = True) -> torch.Tensor:
    """Rows start..stop of attention in float32, bottom-right causal unless causal=False."""
    l_q, l_kv = q.shape[2], k.shape[2]
    group = q.shape[1] // k.shape[1]
    qq = q[:, :, start:stop].float()
    kk, vv = k.float().repeat_interleave(group, 1), v.float().repeat_interleave(group, 1)
    scores = qq @ kk.transpose(-1, -2) * q.shape[-1] ** -0.5
    rows = torch.arange(start, stop, device=q.device)[:, None]
    cols = torch.arange(l_kv, device=q.device)[None, :]
    if causal:
        scores = scores.masked_fill(cols > rows + (l_kv - l_q), float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0) @ vv


def markdown(rows, names, bandwidth, flops) -> str:
    with_upstream = any(n.startswith("upstream") for n in names)
    lines = [
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; bf16; prefill causal, decode and verify unmasked; "
        f"CUDA-graph timing, "
        f"median of {REPLAYS} replays of {CALLS_PER_GRAPH} calls.",
        f"Measured in this run: copy bandwidth {bandwidth / 1e12:.2f} TB/s (read+write), "
        f"bf16 matmul {flops / 1e12:.0f} TFLOP/s.",
        "",
        "| shape | bound µs | " + " | ".join(names) + " | cuda_gqa / best torch |"
        + (" cuda_gqa / best upstream |" if with_upstream else ""),
        "|---|---|" + "---|" * len(names) + "---|" + ("---|" if with_upstream else ""),
    ]
    footnotes: dict[str, int] = {}

    def cell(name: str, value) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, NotRun):
            number = footnotes.setdefault(f"{name}: {value}", len(footnotes) + 1)
            return f"- [{number}]"
        return str(value if value is not None else "-")

    def ratio(ours, times) -> str:
        return f"{ours / min(times):.2f}" if isinstance(ours, float) and times else "-"

    for shape, bound, results in rows:
        cells = [cell(n, results.get(n)) for n in names]
        ours = results.get("cuda_gqa (AOT cubin)", results.get("cuda_gqa (Triton JIT)"))
        torch_times = [t for n, t in results.items() if n.startswith("torch") and isinstance(t, float)]
        upstream_times = [t for n, t in results.items() if n.startswith("upstream") and isinstance(t, float)]
        lines.append(f"| {shape.label} | {bound:.1f} | " + " | ".join(cells) + f" | {ratio(ours, torch_times)} |"
                     + (f" {ratio(ours, upstream_times)} |" if with_upstream else ""))
    if footnotes:
        lines += ["", "Not run (the candidate raised for that shape):", ""]
        lines += [f"- [{number}] {text}" for text, number in footnotes.items()]
    return "\n".join(lines) + "\n"


def plot(rows, names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decode = [(s, r) for s, _, r in rows if s.kind == "decode" and s.batch == 1]
    models = sorted({s.model for s, _ in decode})
    if not models:  # e.g. --only prefill: the plot is of decode times only
        print(f"no B=1 decode shape timed: no plot at {path}")
        return
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        points = sorted((s.l_kv, r) for s, r in decode if s.model == model)
        for name in names:
            xs = [l for l, r in points if isinstance(r.get(name), float)]
            ys = [r[name] for l, r in points if isinstance(r.get(name), float)]
            if xs:
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"decode {model}")
        ax.set_xlabel("L_kv")
        ax.set_ylabel("µs")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--upstream-sdpa", type=Path, help="upstream ExecuTorch backends/cuda/triton/kernels/sdpa.py")
    parser.add_argument("--payloads", type=Path, help="folder written by bench/make_payloads.py")
    parser.add_argument("--baseline-payloads", type=Path, action="append",
                        help="another such folder (say, of an earlier commit), timed in the same run and named "
                             "by the folder's name; may be repeated")
    parser.add_argument("--only", help="run shapes whose label contains this text")
    parser.add_argument("--no-flex", action="store_true", help="leave FlexAttention out (it compiles per shape)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attention needs a CUDA GPU", file=sys.stderr)
        return 2
    upstream = load_upstream(args.upstream_sdpa)
    bandwidth, flops = copy_bandwidth(), matmul_rate()
    rows = []
    for shape in SHAPES:
        if args.only and args.only not in shape.label:
            continue
        rows.append((shape, bound_us(shape, bandwidth, flops), run_shape(shape, upstream, args.payloads,
                                                                         args.baseline_payloads, not args.no_flex)))
        print(shape.label, {n: (round(t, 2) if isinstance(t, float) else t) for n, t in rows[-1][2].items()},
              flush=True)
        # Written after every shape: a run cut short keeps what it measured.
        names = list(dict.fromkeys(n for _, _, r in rows for n in r))
        table = markdown(rows, names, bandwidth, flops)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_attention.md").write_text(table)
    plot(rows, names, args.out / "bench_attention.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
