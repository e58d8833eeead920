"""linear_gemv and linear_gemm (Triton JIT, the heuristics' tiles) match a float64 reference on the GPU
at the shapes of real models."""

import pytest
import torch
import torch.nn.functional as F

from cuda_gqa.backends.kernels.linear_launch import linear

# Max abs error over the reference's largest magnitude, by output dtype.
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}
EPS = 1e-6


def reference(x, w, *, bias=None, residual=None, norm=False, gated="", softcap=0.0, eps=EPS):
    x, w = x.double(), w.double()
    if norm:
        x = F.rms_norm(x, (x.shape[1],), eps=eps)
    y = x @ w.T
    if bias is not None:
        y = y + bias.double()
    if gated:
        gate, up = y.chunk(2, dim=1)
        y = (F.silu(gate) if gated == "silu" else F.gelu(gate, approximate="tanh")) * up
    if softcap:
        y = softcap * torch.tanh(y / softcap)
    if residual is not None:
        y = y + residual.double()
    return y


def check(m, n, k, dtype, *, out_dtype=None, bias=False, residual="", norm=False, gated="", softcap=0.0):
    torch.manual_seed(0)
    n_w = 2 * n if gated else n
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = (torch.randn(n_w, k, device="cuda") / k**0.5).to(dtype)
    b = torch.randn(n_w, device="cuda", dtype=dtype) if bias else None
    r = torch.randn(m, n, device="cuda", dtype=dtype) if residual else None
    expected = reference(x, w, bias=b, residual=r, norm=norm, gated=gated, softcap=softcap)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=out_dtype or dtype)
    if residual == "inplace":
        out.copy_(r)
    linear(x, w, bias=b, residual=out if residual == "inplace" else r, out=out, norm_eps=EPS if norm else None,
           gated=gated, softcap=softcap)
    assert not out.isnan().any()
    err = (out.double() - expected).abs().max().item() / expected.abs().max().item()
    assert err <= TOLERANCE[out.dtype], f"relative error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("m", [1, 4, 8])
def test_gemv_decode_projection(dtype, m):
    check(m, 2048, 2048, dtype, bias=True)


@pytest.mark.gpu
@pytest.mark.parametrize("gated", ["silu", "gelu_tanh"])
def test_gemv_gate_up_with_norm(gated):
    check(1, 8192, 2048, torch.bfloat16, norm=True, gated=gated)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3])
def test_gemv_down_projection_adds_the_residual_in_place(m):
    check(m, 2048, 8192, torch.bfloat16, residual="inplace")


@pytest.mark.gpu
def test_gemv_lm_head_writes_float32_logits():
    check(1, 128256, 2048, torch.bfloat16, out_dtype=torch.float32, norm=True)
    check(1, 32000, 2048, torch.bfloat16, out_dtype=torch.float32, norm=True, softcap=30.0)  # Gemma 2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("m", [512, 300])
def test_gemm_prefill_projection(dtype, m):
    check(m, 2048, 2048, dtype, bias=True, residual="separate")


@pytest.mark.gpu
@pytest.mark.parametrize("gated", ["silu", "gelu_tanh"])
def test_gemm_gate_up_with_norm(gated):
    check(512, 8192, 2048, torch.bfloat16, norm=True, gated=gated)


@pytest.mark.gpu
def test_gemm_in_place_residual_and_ragged_sizes():
    check(77, 1000, 1000, torch.bfloat16, residual="inplace", bias=True)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 512])
@pytest.mark.parametrize("fusions", [{}, {"norm": True, "gated": "silu"}, {"residual": True},
                                     {"norm": True, "out_dtype": torch.float32}],
                         ids=["plain", "norm-gated", "residual", "norm-fp32-logits"])
def test_aot_cubin_matches_torch(m, fusions):
    """compile_linear's cubin for this GPU, launched through cuda.core with the parameters bound by name
    (as bench_linear.py --cubins does), against the float64 reference (eager bf16 torch is itself
    a few percent off for the gated product)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import bench_linear

    from cuda_gqa.backends.aot.linear import compile_linear
    from cuda_gqa.backends.heuristics import linear_config, linear_kind

    major, minor = torch.cuda.get_device_capability()
    shape = bench_linear.Shape("test", 1024, 2048, m, fusions)
    kind, args = linear_kind(m), bench_linear.variant_args(shape, fused=True)
    config = linear_config(kind, m, args["n"], shape.k, torch.bfloat16, 10 * major + minor, gated=shape.gated)
    compiled = compile_linear(kind=kind, dtype=torch.bfloat16, k=shape.k, arch=10 * major + minor, config=config,
                              **args)
    tensors = bench_linear.make_tensors(shape)
    got = bench_linear.aot_call(shape, tensors, True, compiled, config)()
    torch.cuda.synchronize()
    expected = reference(tensors.x, tensors.w, residual=tensors.residual if fusions.get("residual") else None,
                         norm=fusions.get("norm", False), gated=fusions.get("gated", ""), eps=bench_linear.EPS)
    assert got.dtype == fusions.get("out_dtype", torch.bfloat16)
    assert bench_linear.relative_error(got, expected) <= 1e-2
