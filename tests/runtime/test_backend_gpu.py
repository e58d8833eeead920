"""The C++ backend on a real GPU through the C API's delegate functions (CudaGqaBackend's
own init/execute/destroy): payloads compiled by the local Triton for this device, tensors
in device memory (used in place) and in host memory (staged), threads executing different
payloads at once, a caller's stream without synchronisation, and profiling.

Needs libcuda_gqa_backend.so with ExecuTorch's runtime library beside it or on its RUNPATH
(`make gpu-bundle` puts both in .gpu/; or set CUDA_GQA_BACKEND_LIB). Skipped
(tests/conftest.py) where torch sees no CUDA device."""

from __future__ import annotations

import threading

import pytest
import torch

from cuda_gqa.runtime import cpp_delegate

pytestmark = pytest.mark.gpu

CASES = {  # dtype, batch, H_q, H_kv, L_q, L_kv, D, causal
    "prefill": (torch.bfloat16, 1, 8, 2, 128, 128, 64, True),
    "decode_single_split": (torch.float16, 1, 8, 2, 1, 200, 64, False),
    "decode_multi_split": (torch.bfloat16, 1, 32, 8, 1, 4096, 128, False),
    # Batched: 2 splits per KV head, merged by the split kernel itself (one launch, arrival counters).
    "decode_fused_merge": (torch.bfloat16, 8, 32, 8, 1, 2048, 128, False),
}
DEFAULT_OPTIONS = {"device": 0, "stream": "0", "synchronize": True, "profile": False, "launch_graphs": True,
                   "programmatic_launch": True}


def tolerance(dtype):
    return dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=5e-3, rtol=5e-3)


@pytest.fixture(scope="module")
def backend():
    import cuda_gqa.runtime as cr

    torch.cuda.init()  # the backend runs in the primary context torch uses
    return cr.load_backend_library()


@pytest.fixture(autouse=True)
def default_options(backend):
    import cuda_gqa.runtime as cr

    for key, value in DEFAULT_OPTIONS.items():
        cr.set_backend_option(key, value)
    yield
    for key, value in DEFAULT_OPTIONS.items():
        cr.set_backend_option(key, value)


@pytest.fixture(scope="module")
def payloads() -> dict:
    from cuda_gqa.backends.attention_plan import build_attention_payload

    major, minor = torch.cuda.get_device_capability()
    built = {}
    for name, (dtype, b, hq, hkv, lq, lkv, d, causal) in CASES.items():
        built[name] = build_attention_payload(dtype=dtype, batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d,
                                              l_q=lq, l_kv=lkv, is_causal=causal, archs=[10 * major + minor])
    return built


def inputs(name, seed, stream=None):
    """q, k, v, an output full of NaN, and the float32 reference, made on `stream` (default: current)."""
    from cuda_gqa.backends.kernels.reference import reference_attention

    dtype, b, hq, hkv, lq, lkv, d, causal = CASES[name]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    with torch.cuda.stream(stream or torch.cuda.current_stream()):
        q = torch.randn(b, hq, lq, d, device="cuda", dtype=dtype, generator=gen)
        k = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
        v = torch.randn(b, hkv, lkv, d, device="cuda", dtype=dtype, generator=gen)
        out = torch.full((b, hq, lq, d), float("nan"), device="cuda", dtype=dtype)
        expected = reference_attention(q, k, v, is_causal=causal, scale=None)
    return q, k, v, out, expected


def init(payload) -> int:
    rc, handle = cpp_delegate.init(payload)
    assert rc == 0, f"init failed with executorch error {rc:#x} (see the log above)"
    return handle


@pytest.mark.parametrize("name", sorted(CASES))
def test_device_and_host_placements(backend, payloads, name):
    handle = init(payloads[name])
    try:
        q, k, v, out, expected = inputs(name, seed=1)
        torch.cuda.synchronize()  # the delegate's own stream does not wait for torch's
        assert cpp_delegate.execute(handle, [cpp_delegate.torch_tensor(t) for t in (q, k, v, out)]) == 0
        torch.testing.assert_close(out.float(), expected, **tolerance(q.dtype))

        # The same delegate with every tensor in host memory (staged through its buffers).
        host = [t.cpu() for t in (q, k, v)] + [torch.full_like(out, float("nan"), device="cpu")]
        assert cpp_delegate.execute(handle, [cpp_delegate.torch_tensor(t) for t in host]) == 0
        torch.testing.assert_close(host[3].float(), expected.cpu(), **tolerance(q.dtype))
    finally:
        cpp_delegate.destroy(handle)


@pytest.mark.parametrize("launch_graphs", [True, False])
@pytest.mark.parametrize("name", sorted(CASES))
def test_executes_as_tensors_move_with_launch_graphs_on_and_off(backend, payloads, name, launch_graphs):
    """The same tensors again (a graph replayed as is), then other tensors (nodes updated in
    place), then the first ones again, and host tensors in between (the staging buffers)."""
    import cuda_gqa.runtime as cr

    cr.set_backend_option("launch_graphs", launch_graphs)
    handle = init(payloads[name])
    try:
        sets = [inputs(name, seed=20 + i) for i in range(2)]
        torch.cuda.synchronize()
        for i in (0, 0, 1, 0, 1):
            q, k, v, out, expected = sets[i]
            out.fill_(float("nan"))
            torch.cuda.synchronize()
            assert cpp_delegate.execute(handle, [cpp_delegate.torch_tensor(t) for t in (q, k, v, out)]) == 0
            torch.testing.assert_close(out.float(), expected, **tolerance(q.dtype))
            if i == 1:
                host = [t.cpu() for t in (q, k, v)] + [torch.full_like(out, float("nan"), device="cpu")]
                assert cpp_delegate.execute(handle, [cpp_delegate.torch_tensor(t) for t in host]) == 0
                torch.testing.assert_close(host[3].float(), expected.cpu(), **tolerance(q.dtype))
    finally:
        cpp_delegate.destroy(handle)


def test_threads_execute_different_payloads(backend, payloads):
    names = sorted(CASES) * 2
    handles = [init(payloads[name]) for name in names]
    data = [inputs(name, seed=10 + i) for i, name in enumerate(names)]
    torch.cuda.synchronize()
    failures = []

    def worker(i):
        q, k, v, out, expected = data[i]
        for _ in range(20):
            out.fill_(float("nan"))
            torch.cuda.synchronize()
            rc = cpp_delegate.execute(handles[i], [cpp_delegate.torch_tensor(t) for t in (q, k, v, out)])
            if rc != 0:
                failures.append(f"{names[i]}: execute returned {rc:#x}")
                return
            try:
                torch.testing.assert_close(out.float(), expected, **tolerance(q.dtype))
            except AssertionError as error:
                failures.append(f"{names[i]}: {error}")
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for handle in handles:
        cpp_delegate.destroy(handle)
    assert failures == []


def test_delegates_of_one_payload_share_its_modules(backend, payloads):
    before = cpp_delegate.loaded_module_count()
    first = init(payloads["decode_multi_split"])
    loaded = cpp_delegate.loaded_module_count() - before
    second = init(payloads["decode_multi_split"])
    # One module per distinct image of the device's arch (split + combine, aligned and generic;
    # plans whose kernels compile alike share theirs).
    from cuda_gqa.backends.serialization import deserialize_payload

    major, minor = torch.cuda.get_device_capability()
    kernels = [k for plan in deserialize_payload(payloads["decode_multi_split"]).plans for k in plan.kernels]
    images = {bytes(c.image) for k in kernels for c in k.cubins if c.arch == 10 * major + minor}
    assert len(kernels) == 4 and loaded == len(images) >= 2
    assert cpp_delegate.loaded_module_count() - before == loaded
    cpp_delegate.destroy(first)
    cpp_delegate.destroy(second)
    assert cpp_delegate.loaded_module_count() == before


def test_callers_stream_without_synchronisation(backend, payloads):
    import cuda_gqa.runtime as cr

    stream = torch.cuda.Stream()
    cr.set_backend_option("stream", str(stream.cuda_stream))
    cr.set_backend_option("synchronize", False)
    handle = init(payloads["decode_multi_split"])
    try:
        q, k, v, out, expected = inputs("decode_multi_split", seed=3, stream=stream)
        with torch.cuda.stream(stream):
            # Enqueued behind the inputs on the caller's stream; the copy is ordered after the kernels.
            assert cpp_delegate.execute(handle, [cpp_delegate.torch_tensor(t) for t in (q, k, v, out)]) == 0
            result = out.clone()
        stream.synchronize()
        torch.testing.assert_close(result.float(), expected, **tolerance(q.dtype))
    finally:
        cpp_delegate.destroy(handle)


def test_profile_reports_the_kernels_device_time(backend, payloads):
    import time

    import cuda_gqa.runtime as cr

    cr.set_backend_option("profile", True)
    handle = init(payloads["decode_multi_split"])
    try:
        q, k, v, out, expected = inputs("decode_multi_split", seed=4)
        torch.cuda.synchronize()
        tensors = [cpp_delegate.torch_tensor(t) for t in (q, k, v, out)]
        before, start = cr.profiled_kernel_time_ns(), time.perf_counter_ns()
        for _ in range(10):
            assert cpp_delegate.execute(handle, tensors) == 0
        wall, kernels = time.perf_counter_ns() - start, cr.profiled_kernel_time_ns() - before
        torch.testing.assert_close(out.float(), expected, **tolerance(q.dtype))
        assert 0 < kernels < wall, (kernels, wall)
    finally:
        cpp_delegate.destroy(handle)


def test_one_dynamic_payload_runs_every_length_in_its_range(backend):
    """L_q in [1, 40], L_kv in [1, 3000]: the backend picks the plan per call, stages host
    tensors in buffers sized for the bounds, and refuses a length above its bound."""
    from cuda_gqa.backends.attention_plan import build_attention_payload

    major, minor = torch.cuda.get_device_capability()
    b, hq, hkv, d, dtype = 1, 16, 4, 128, torch.bfloat16
    handle = init(build_attention_payload(dtype=dtype, batch=b, num_heads_q=hq, num_heads_kv=hkv, head_dim=d,
                                          l_q=(1, 40), l_kv=(1, 3000), is_causal=False,
                                          archs=[10 * major + minor]))
    gen = torch.Generator(device="cuda").manual_seed(5)
    try:
        for l_q, l_kv in [(1, 1), (1, 2999), (2, 600), (16, 3000), (17, 64), (40, 1000)]:
            q = torch.randn(b, hq, l_q, d, device="cuda", dtype=dtype, generator=gen)
            k = torch.randn(b, hkv, l_kv, d, device="cuda", dtype=dtype, generator=gen)
            v = torch.randn(b, hkv, l_kv, d, device="cuda", dtype=dtype, generator=gen)
            expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                                        enable_gqa=True)
            out = torch.full_like(q, float("nan"))
            torch.cuda.synchronize()
            assert cpp_delegate.execute(handle, [cpp_delegate.torch_tensor(t) for t in (q, k, v, out)]) == 0
            torch.testing.assert_close(out.float(), expected, **tolerance(dtype))
            host = [t.cpu() for t in (q, k, v)] + [torch.full_like(out, float("nan"), device="cpu")]
            assert cpp_delegate.execute(handle, [cpp_delegate.torch_tensor(t) for t in host]) == 0
            torch.testing.assert_close(host[3].float(), expected.cpu(), **tolerance(dtype))
        too_long = [torch.zeros(b, hq, 41, d, device="cuda", dtype=dtype), k, v,
                    torch.zeros(b, hq, 41, d, device="cuda", dtype=dtype)]
        assert cpp_delegate.execute(handle, [cpp_delegate.torch_tensor(t) for t in too_long]) != 0
    finally:
        cpp_delegate.destroy(handle)
