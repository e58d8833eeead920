"""The linear kernels on the GPU: linear_gemv (decode) and linear_gemm (prefill) beside cuBLAS.

    python3 bench/bench_linear.py [--out DIR] [--tune] [--only TEXT] [--cubins DIR]
    python3 bench/bench_linear.py --compile DIR [--arch 90]   # no GPU needed: the AOT cubins for --cubins

Shapes: llama3.2-1b's linears in bf16 (hidden 2048, intermediate 8192,
vocab 128256): qkv, o, gate_up (gate and up stacked, SiLU-gated), down and
lm_head (float32 logits), at M = 1 (a decode step, linear_gemv) and M = 512
(a prefill chunk, linear_gemm).

Candidates, each checked against torch before it is timed:
  cuda_gqa           the kernel alone: epilogue(x @ W^T) with no fusion (the
                     stacked [gate; up] product for gate_up), Triton JIT with
                     the heuristics' tiles (or the tuning table's, where it
                     has an entry for this GPU's arch);
  cuda_gqa fused     with the fusions the model uses there: RMSNorm prologue
                     (qkv, gate_up, lm_head), SiLU gate (gate_up), residual
                     add (o, down);
  torch linear       torch.nn.functional.linear (cuBLAS), the unfused product;
  torch unfused      the fused variant's work as eager torch ops (rms_norm,
                     linear, silu * up, add);
  cuda_gqa AOT, cuda_gqa fused AOT (with --cubins DIR): the same two
                     variants as the cubins compile_linear builds (Triton 3.9
                     on the export machine, --compile DIR), launched through
                     cuda.core on torch's stream with the heuristics' grid.
Timing: triton.testing.do_bench, median milliseconds (its L2 flush runs
between calls, so weights come from DRAM as in a real decode step). GB/s
counts the bytes the call must move: W, X, Out (and a residual read). The
bound is those bytes at the device-to-device copy bandwidth measured in the
same run (bytes read + written per second), or at M = 512 the FLOPs at the
measured bf16 matmul rate where that is longer.

--tune sweeps tiles per shape (linear_gemv: BLOCK_N, BLOCK_K, warps, stages;
linear_gemm: tiles, warps, stages), and writes DIR/linear_tuning_sm_<arch>.json:
"linear_gemv" / "linear_gemm" sections keyed as heuristics.linear_table_key,
ready to merge into backends/tuning/sm_<arch>.json.

Needs torch with CUDA and Triton (3.6 or later); no ExecuTorch.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
import triton
import triton.testing

from cuda_gqa.backends.heuristics import (
    GEMV_ACC_ELEMENTS, LinearConfig, linear_config, linear_gemm_shared_bytes, linear_grid, linear_kind,
    linear_table_key)
from cuda_gqa.backends.kernels.linear_launch import linear

EPS = 1e-5
DTYPE = torch.bfloat16
HIDDEN, INTERMEDIATE, VOCAB = 2048, 8192, 128256


@dataclass(frozen=True)
class Shape:
    name: str
    n: int  # output width (of gate and of up each, when gated)
    k: int
    m: int
    fusions: dict = field(default_factory=dict, hash=False, compare=False)  # the model's, for "cuda_gqa fused"

    @property
    def gated(self) -> bool:
        return bool(self.fusions.get("gated"))

    @property
    def label(self) -> str:
        return f"{self.name} M={self.m} N={self.n * (2 if self.gated else 1)} K={self.k}"


def llama_1b_shapes(m: int) -> list[Shape]:
    return [
        Shape("qkv", 3072, HIDDEN, m, {"norm": True}),
        Shape("o", HIDDEN, HIDDEN, m, {"residual": True}),
        Shape("gate_up", INTERMEDIATE, HIDDEN, m, {"norm": True, "gated": "silu"}),
        Shape("down", HIDDEN, INTERMEDIATE, m, {"residual": True}),
        Shape("lm_head", VOCAB, HIDDEN, m, {"norm": True, "out_dtype": torch.float32}),
    ]


SHAPES = llama_1b_shapes(1) + llama_1b_shapes(512)


def time_ms(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (time_ms(lambda: dst.copy_(src)) * 1e-3)


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=DTYPE)
    b = torch.randn_like(a)
    return 2 * 8192**3 / (time_ms(lambda: a @ b) * 1e-3)


@dataclass
class Tensors:
    x: torch.Tensor
    w: torch.Tensor  # [2N, K] stacked when gated
    residual: torch.Tensor
    out: torch.Tensor  # the fused variant's output
    out_plain: torch.Tensor  # [M, N_w] in the input dtype
    norm_weight: torch.Tensor


def make_tensors(shape: Shape) -> Tensors:
    torch.manual_seed(0)
    n_w = 2 * shape.n if shape.gated else shape.n
    x = torch.randn(shape.m, shape.k, device="cuda", dtype=DTYPE)
    w = (torch.randn(n_w, shape.k, device="cuda") / shape.k**0.5).to(DTYPE)
    out_dtype = shape.fusions.get("out_dtype", DTYPE)
    return Tensors(x, w, torch.randn(shape.m, shape.n, device="cuda", dtype=DTYPE),
                   torch.empty(shape.m, shape.n, device="cuda", dtype=out_dtype),
                   torch.empty(shape.m, n_w, device="cuda", dtype=DTYPE), torch.ones(shape.k, device="cuda"))


def fused_call(shape: Shape, t: Tensors, config: Optional[LinearConfig] = None) -> Callable[[], torch.Tensor]:
    f = shape.fusions
    residual = t.residual if f.get("residual") else None
    return lambda: linear(t.x, t.w, residual=residual, out=t.out, norm_eps=EPS if f.get("norm") else None,
                          gated=f.get("gated", ""), config=config)


def unfused_torch(shape: Shape, t: Tensors) -> Callable[[], torch.Tensor]:
    f = shape.fusions

    def run():
        x = F.rms_norm(t.x, (shape.k,), t.norm_weight.to(DTYPE), eps=EPS) if f.get("norm") else t.x
        y = F.linear(x, t.w)
        if f.get("gated"):
            gate, up = y.chunk(2, dim=1)
            y = F.silu(gate) * up
        if f.get("residual"):
            y = t.residual + y
        return y.to(f.get("out_dtype", DTYPE))
    return run


def moved_bytes(shape: Shape, fused: bool) -> int:
    n_w = 2 * shape.n if shape.gated else shape.n
    item = DTYPE.itemsize
    if not fused:
        return (n_w * shape.k + shape.m * shape.k + shape.m * n_w) * item
    out_item = shape.fusions.get("out_dtype", DTYPE).itemsize
    residual = shape.m * shape.n * item if shape.fusions.get("residual") else 0
    return (n_w * shape.k + shape.m * shape.k) * item + shape.m * shape.n * out_item + residual


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def bench_shape(shape: Shape, cubins: Optional[dict] = None) -> dict[str, object]:
    """{candidate: ms, or a string saying why it was not timed}."""
    t = make_tensors(shape)
    plain = lambda: linear(t.x, t.w, out=t.out_plain)  # noqa: E731
    fused = fused_call(shape, t)
    torch_linear = lambda: F.linear(t.x, t.w)  # noqa: E731
    torch_unfused = unfused_torch(shape, t)
    results: dict[str, object] = {}
    checks = {"cuda_gqa": (plain, torch_linear), "cuda_gqa fused": (fused, torch_unfused)}
    for fused, name in ((False, "cuda_gqa AOT"), (True, "cuda_gqa fused AOT")):
        if cubins is not None and (shape.label, fused) in cubins:
            try:
                checks[name] = (aot_call(shape, t, fused, *cubins[shape.label, fused]),
                                torch_unfused if fused else torch_linear)
            except Exception as e:  # reported in the table, the other candidates still run
                results[name] = f"failed: {type(e).__name__}: {e}"[:120]
    for name, (ours, theirs) in checks.items():
        try:
            err = relative_error(ours(), theirs())
        except Exception as e:
            results[name] = f"failed: {type(e).__name__}: {e}"[:120]
            continue
        results[name] = time_ms(ours) if err <= 2e-2 else f"wrong (rel err {err:.1e})"
    results["torch linear"] = time_ms(torch_linear)
    results["torch unfused"] = time_ms(torch_unfused)
    return results


# -- AOT cubins ---------------------------------------------------------------------------------------------


def variant_args(shape: Shape, fused: bool) -> dict:
    """compile_linear's arguments (and the launch's n) for one variant of a shape."""
    f = shape.fusions if fused else {}
    n = shape.n if fused or not shape.gated else 2 * shape.n
    return dict(n=n, out_dtype=f.get("out_dtype", DTYPE), has_residual=bool(f.get("residual")),
                norm_prologue=bool(f.get("norm")), gated=f.get("gated", ""))


def cubin_file(folder: Path, arch: int) -> Path:
    return folder / f"linear_cubins_sm_{arch}.pkl"


def compile_cubins(shapes: list[Shape], arch: int, folder: Path) -> None:
    """{(label, fused): (CompiledKernel, LinearConfig)} for every shape, pickled into folder."""
    from cuda_gqa.backends.aot.linear import compile_linear

    kernels = {}
    for shape in shapes:
        kind = linear_kind(shape.m)
        for fused in (False, True):
            args = variant_args(shape, fused)
            config = linear_config(kind, shape.m, args["n"], shape.k, DTYPE, arch, gated=bool(args["gated"]))
            kernels[shape.label, fused] = (compile_linear(kind=kind, dtype=DTYPE, k=shape.k, arch=arch,
                                                          config=config, **args), config)
            print(f"{shape.label} {'fused' if fused else 'plain'}: {config}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    cubin_file(folder, arch).write_bytes(pickle.dumps(kernels))


class CubinKernel:
    """One CompiledKernel loaded through cuda.core, launched on torch's current stream."""

    def __init__(self, compiled):
        from cuda_gqa.runtime import cubin_launcher as cl

        self.compiled = compiled
        self._cc, self._driver = cl._import_cuda_core(), cl._import_driver()
        self._device = self._cc.Device(torch.cuda.current_device())
        self._device.set_current()
        object_code = self._cc.ObjectCode
        code = (object_code.from_cubin(compiled.cubin) if hasattr(object_code, "from_cubin")
                else object_code(compiled.cubin, "cubin"))
        self.kernel = code.get_kernel(compiled.name)
        if compiled.shared_mem_bytes > 48 * 1024:
            self._opt_in_shared_memory(cl)
        stream = int(torch.cuda.current_stream().cuda_stream)
        self._stream = self._device.create_stream(cl._ForeignStream(stream))
        try:
            params = list(inspect.signature(self._cc.launch).parameters)
            self._stream_first = not params or params[0] != "kernel"
        except (TypeError, ValueError):
            self._stream_first = not (self._cc.launch.__doc__ or "").lstrip().startswith("launch(kernel")

    def _opt_in_shared_memory(self, cl) -> None:
        drv, handle = self._driver, cl._driver_handle(self.kernel)
        attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        nbytes = self.compiled.shared_mem_bytes
        if type(handle).__name__ == "CUkernel":
            result = drv.cuKernelSetAttribute(attr, nbytes, handle, drv.CUdevice(torch.cuda.current_device()))
        else:
            result = drv.cuFuncSetAttribute(drv.CUfunction(cl._handle_int(handle)), attr, nbytes)
        cl._check_driver(result, "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")

    def __call__(self, grid: tuple[int, int, int], args: dict) -> None:
        pack = {"ptr": np.uint64, "i32": np.int32, "i64": np.int64, "fp32": np.float32}
        values = [pack[p.type](args.get(p.name, 0)) for p in self.compiled.params]  # scratch: 0 (none)
        block = (32 * self.compiled.num_warps, 1, 1)
        if self._stream_first:
            config = self._cc.LaunchConfig(grid=grid, block=block, shmem_size=self.compiled.shared_mem_bytes)
            self._cc.launch(self._stream, config, self.kernel, *values)
        else:
            config = self._cc.LaunchConfig(grid=grid, block=block, stream=self._stream,
                                           shmem_size=self.compiled.shared_mem_bytes)
            self._cc.launch(self.kernel, config, *values)


def aot_call(shape: Shape, t: Tensors, fused: bool, compiled, config: LinearConfig) -> Callable[[], torch.Tensor]:
    """The cubin's launch on shape's tensors, with the parameters bound as the runtime would bind them."""
    if compiled.global_scratch_bytes or compiled.profile_scratch_bytes:
        raise RuntimeError(f"{compiled.name} needs scratch memory; this bench passes none")
    kernel = CubinKernel(compiled)
    args = variant_args(shape, fused)
    out = t.out if fused else t.out_plain
    residual = t.residual if args["has_residual"] else None
    bound = {"X": t.x.data_ptr(), "W": t.w.data_ptr(), "Bias": out.data_ptr(),
             "Residual": 0 if residual is None else residual.data_ptr(), "Out": out.data_ptr(), "M": shape.m,
             "eps": EPS, "stride_xm": t.x.stride(0), "stride_rm": 0 if residual is None else residual.stride(0),
             "stride_om": out.stride(0)}
    grid = linear_grid(linear_kind(shape.m), shape.m, args["n"], config)

    def run():
        kernel(grid, bound)
        return out
    return run


def bound_ms(shape: Shape, bandwidth: float, flops: float) -> float:
    n_w = 2 * shape.n if shape.gated else shape.n
    return max(moved_bytes(shape, False) / bandwidth, 2 * shape.m * n_w * shape.k / flops) * 1e3


def gbps(shape: Shape, fused: bool, ms) -> str:
    return f"{moved_bytes(shape, fused) / (ms * 1e-3) / 1e9:.0f}" if isinstance(ms, float) else "-"


CANDIDATES = ("cuda_gqa", "cuda_gqa AOT", "torch linear", "cuda_gqa fused", "cuda_gqa fused AOT", "torch unfused")


def markdown(rows, bandwidth: float, flops: float) -> str:
    names = [n for n in CANDIDATES if any(n in r for *_, r in rows)]
    lines = [
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; Triton {triton.__version__} (JIT); "
        f"bf16; triton.testing.do_bench median. µs, then GB/s of the bytes the call must move.",
        f"Measured in this run: copy bandwidth {bandwidth / 1e9:.0f} GB/s (read+write), "
        f"bf16 matmul {flops / 1e12:.0f} TFLOP/s. Fused: the model's fusions (module docstring).",
        "",
        "| shape | fused tiles | bound µs | " + " | ".join(f"{n} µs | GB/s" for n in names)
        + " | cuda_gqa (AOT where timed) / torch linear |",
        "|---|---|---|" + "---|---|" * len(names) + "---|",
    ]
    for shape, config, bound, r in rows:
        cells = []
        for name in names:
            value = r.get(name, "-")
            cells.append(f"{value * 1e3:.1f}" if isinstance(value, float) else str(value))
            cells.append(gbps(shape, "fused" in name, value))
        ours = next((r[n] for n in ("cuda_gqa AOT", "cuda_gqa") if isinstance(r.get(n), float)), None)
        theirs = r.get("torch linear")
        ratio = f"{ours / theirs:.2f}" if isinstance(ours, float) and isinstance(theirs, float) else "-"
        tiles = f"{config.block_m}x{config.block_n}x{config.block_k} w{config.num_warps} s{config.num_stages}"
        lines.append(f"| {shape.label} | {tiles} | {bound * 1e3:.1f} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def device_arch() -> int:
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def candidate_configs(shape: Shape) -> list[LinearConfig]:
    accumulators = 2 if shape.gated else 1
    if linear_kind(shape.m) == "gemv":
        block_m = triton.next_power_of_2(shape.m)
        configs = []
        for block_n, block_k, warps, stages in itertools.product((1, 2, 4, 8, 16), (256, 512, 1024, 2048), (2, 4, 8),
                                                                (1, 3)):
            fits = accumulators * block_m * block_n * block_k <= 2 * GEMV_ACC_ELEMENTS * warps // 4
            if fits and block_k <= triton.next_power_of_2(shape.k) and block_n * block_k >= 32 * warps * 8:
                configs.append(LinearConfig(block_m, block_n, block_k, warps, stages))
        return configs
    configs = []
    for (bm, bn, bk), warps, stages in itertools.product(
            ((128, 128, 64), (128, 256, 64), (128, 64, 64), (64, 128, 64), (64, 64, 64), (128, 128, 32)), (4, 8),
            (2, 3, 4)):
        config = LinearConfig(bm, bn // accumulators, bk, warps, stages)
        if linear_gemm_shared_bytes(config, DTYPE, shape.gated) <= 200 * 1024:
            configs.append(config)
    return configs


def tune_shape(shape: Shape) -> tuple[LinearConfig, float]:
    """The fastest tiles for the fused variant, and their time in ms."""
    t = make_tensors(shape)
    expected = unfused_torch(shape, t)()
    best = None
    for config in candidate_configs(shape):
        try:
            call = fused_call(shape, t, config)
            if relative_error(call(), expected) > 2e-2:
                continue
            ms = time_ms(call)
        except Exception as e:  # a tile this GPU cannot run (shared memory, registers): skip it
            print(f"  {config}: {type(e).__name__}", file=sys.stderr)
            continue
        if best is None or ms < best[1]:
            best = (config, ms)
    return best


def tune(shapes: list[Shape], out: Path) -> None:
    arch = device_arch()
    table: dict[str, dict] = {}
    for shape in shapes:
        kind = linear_kind(shape.m)
        default = linear_config(kind, shape.m, shape.n, shape.k, DTYPE, arch, gated=shape.gated)
        default_ms = time_ms(fused_call(shape, make_tensors(shape), default))
        config, ms = tune_shape(shape)
        print(f"{shape.label}: default {default} {default_ms * 1e3:.1f} us, best {config} {ms * 1e3:.1f} us",
              flush=True)
        key = linear_table_key(shape.m, shape.n, shape.k, DTYPE, shape.gated)
        table.setdefault(f"linear_{kind}", {})[key] = {
            "block_m": config.block_m, "block_n": config.block_n, "block_k": config.block_k,
            "num_warps": config.num_warps, "num_stages": config.num_stages, "us": round(ms * 1e3, 2),
            "default_us": round(default_ms * 1e3, 2),
            "source": f"bench/bench_linear.py --tune on {torch.cuda.get_device_name()}, "
                      f"Triton {triton.__version__} JIT"}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"linear_tuning_sm_{arch}.json").write_text(json.dumps(table, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write DIR/bench_linear.md (and the tuning JSON with --tune)")
    parser.add_argument("--only", help="run shapes whose label contains this text")
    parser.add_argument("--tune", action="store_true", help="sweep tiles per shape instead of the comparison")
    parser.add_argument("--compile", type=Path, metavar="DIR", help="compile the AOT cubins into DIR (no GPU)")
    parser.add_argument("--arch", type=int, default=90, help="with --compile: the compute capability (default 90)")
    parser.add_argument("--cubins", type=Path, metavar="DIR", help="also time the cubins --compile wrote in DIR")
    args = parser.parse_args(argv)
    if args.compile:
        compile_cubins([s for s in SHAPES if not args.only or args.only in s.label], args.arch, args.compile)
        return 0
    if not torch.cuda.is_available():
        print("bench_linear needs a CUDA GPU", file=sys.stderr)
        return 2
    shapes = [s for s in SHAPES if not args.only or args.only in s.label]
    if args.tune:
        tune(shapes, args.out or Path("."))
        return 0
    bandwidth, flops = copy_bandwidth(), matmul_rate()
    arch = device_arch()
    cubins = None
    if args.cubins:
        path = cubin_file(args.cubins, arch)
        if not path.exists():
            print(f"no cubins for sm_{arch}: run bench_linear.py --compile DIR --arch {arch} first ({path})",
                  file=sys.stderr)
            return 2
        cubins = pickle.loads(path.read_bytes())
    rows = []
    for shape in shapes:
        config = linear_config(linear_kind(shape.m), shape.m, shape.n, shape.k, DTYPE, arch, gated=shape.gated)
        rows.append((shape, config, bound_ms(shape, bandwidth, flops), bench_shape(shape, cubins)))
        print(shape.label, {n: (round(v * 1e3, 1) if isinstance(v, float) else v) for n, v in rows[-1][3].items()},
              flush=True)
        table = markdown(rows, bandwidth, flops)
        if args.out:  # written after every shape: a run cut short keeps what it measured
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "bench_linear.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
