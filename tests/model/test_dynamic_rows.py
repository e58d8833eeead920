"""A whole step with a dynamic token count: one payload, launch plans selected by the call's rows.

The built-in decoder exported with torch.export.Dim on its token dim is
lowered whole; its payload holds a GEMV plan (with decode attention) for up
to GEMV_MAX_M rows and GEMM / forward-attention plans above, each selected
by the token input's size (the dispatch mechanism of attention's dynamic
L_q). Under the payload interpreter a prefill and then decode steps share
the delegate's cache state and give eager's logits.
"""

import pytest
import torch

from cuda_gqa.backends.heuristics import GEMV_MAX_M
from cuda_gqa.runtime.launch_plan import ArgInfo, LaunchError, LaunchPlan
from payload_interpreter import recording_compiles, run_in_subprocess
from whole_programs import delegate_input_names, delegates, lower_whole, named_data

MAX_TOKENS = 32  # the tiny model's cache length


@pytest.fixture(scope="module")
def llama_dynamic(tiny_model):
    model = tiny_model("tiny-llama3")
    kernels = {}
    with recording_compiles(kernels):
        edge, partitioner = lower_whole(model, 4, max_tokens=MAX_TOKENS)
    (delegate,) = delegates(edge)
    return model, edge, partitioner, delegate, kernels


def _args(plan: LaunchPlan, names: list[str], rows: int) -> list[ArgInfo]:
    """Delegate args (inputs, outputs, states) of a call with `rows` tokens, at made-up addresses."""
    specs = {"tokens": (5, (1, rows)), "input_pos": (5, (1,))}
    sizes = [specs[n] for n in names] + [(plan.specs[plan.num_inputs][0], (1, rows, plan.specs[plan.num_inputs][2][2]))]
    sizes += [(dtype, tuple(s)) for _, dtype, s in plan.states]
    return [ArgInfo(dtype=d, sizes=s, strides=tuple(torch.empty(s, device="meta").stride()), address=4096 * (i + 1))
            for i, (d, s) in enumerate(sizes)]


def test_the_step_is_one_delegate_with_a_dynamic_token_count(llama_dynamic):
    _, edge, partitioner, delegate, _ = llama_dynamic
    assert partitioner.model_report.startswith("whole step")
    calls = [n for n in edge.exported_program().graph.nodes if n.op == "call_function"]
    assert "executorch_call_delegate" in [str(n.target) for n in calls]
    assert all("aten" not in str(n.target) or "sym_size" in str(n.target) for n in calls)


def _planner_decodes(config, rows: int) -> bool:
    """Whether attention's own planner runs `rows` queries of this model with its decode kernels."""
    from cuda_gqa.backends.attention_plan import decode_plan

    return decode_plan(dtype=torch.float32, batch=1, num_heads_q=config.num_heads, num_heads_kv=config.num_kv_heads,
                       head_dim=config.head_dim, l_q=rows, l_kv=MAX_TOKENS, arch=90) is not None


def test_each_row_count_selects_the_plan_of_its_range(llama_dynamic):
    model, _, _, delegate, _ = llama_dynamic
    names = delegate_input_names(delegate)
    plan = LaunchPlan(delegate.processed_bytes, named_data=named_data(delegate))
    tokens = names.index("tokens")
    ranges = [[(r.arg, r.dim, r.min, r.max) for r in p.when] for p in plan.plans]
    # Consecutive ranges of the token count cover 1..MAX_TOKENS, cut at GEMV_MAX_M.
    bounds = [r[0][2:] for r in ranges]
    assert all(r[0][:2] == (tokens, 1) for r in ranges)
    assert bounds[0][0] == 1 and bounds[-1][1] == MAX_TOKENS
    assert all(a[1] + 1 == b[0] for a, b in zip(bounds, bounds[1:]))
    assert (1, GEMV_MAX_M) == bounds[0] or any(hi == GEMV_MAX_M for _, hi in bounds)
    for rows in (1, 2, GEMV_MAX_M, GEMV_MAX_M + 1, 12, MAX_TOKENS):
        args = _args(plan, names, rows)
        plan.check_args(args)
        p = plan.select(args)
        lo, hi = bounds[p]
        assert lo <= rows <= hi
        linears = {n for n in plan.names(p) if n.startswith("linear_")}
        assert linears == ({"linear_gemv"} if rows <= GEMV_MAX_M else {"linear_gemm"})
        attention = {n for n in plan.names(p) if n.startswith("gqa_")}
        assert attention and all(n.startswith("gqa_decode") for n in attention) == _planner_decodes(model.config, hi)
        # Row-dependent grids follow the call's count: one embedding program per token.
        launch = plan.evaluate(plan.names(p).index("embedding"), args, workspace=1 << 20, global_scratch=16,
                               profile_scratch=16, constants=[256 * (i + 1) for i in range(len(plan.constants))])
        assert launch.grid[0] == rows
    assert _planner_decodes(model.config, 1) and not _planner_decodes(model.config, MAX_TOKENS)


def test_more_tokens_than_the_bound_are_refused(llama_dynamic):
    _, _, _, delegate, _ = llama_dynamic
    names = delegate_input_names(delegate)
    plan = LaunchPlan(delegate.processed_bytes, named_data=named_data(delegate))
    with pytest.raises(LaunchError, match=f"size {MAX_TOKENS + 1} at dim 1, above its bound {MAX_TOKENS}"):
        plan.check_args(_args(plan, names, MAX_TOKENS + 1))


def test_a_prefill_then_decode_steps_give_eager_logits(llama_dynamic, tmp_path):
    model, _, _, delegate, kernels = llama_dynamic
    names = delegate_input_names(delegate)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (1, 12), generator=generator)
    steps = [(prompt, torch.tensor([0])), (torch.tensor([[7]]), torch.tensor([12])),
             (torch.tensor([[250]]), torch.tensor([13]))]
    calls = [[{"tokens": tokens, "input_pos": pos}[n] for n in names] for tokens, pos in steps]
    program = {"payload": delegate.processed_bytes, "calls": calls, "named_data": named_data(delegate)}
    (result,) = run_in_subprocess({"kernels": kernels, "programs": [program]}, tmp_path)
    model.reset_buffers()
    for (logits,), (tokens, pos) in zip(result["outputs"], steps):
        with torch.no_grad():
            expected = model(tokens, pos)
        assert logits.shape == expected.shape
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_the_cpp_launcher_selects_and_launches_alike(llama_dynamic):
    # runtime/cpp's twin of LaunchPlan (build/libcuda_gqa_backend.so, no GPU needed) picks the same
    # plan per row count and computes the same grids and parameters.
    import ctypes
    from pathlib import Path

    from cuda_gqa.runtime.launch_plan import evaluate_launch_cpp

    library = Path(__file__).resolve().parents[2] / "build" / "libcuda_gqa_backend.so"
    if not library.is_file():
        pytest.fail(f"{library} not found: run `make build` first")
    lib = ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    _, _, _, delegate, _ = llama_dynamic
    names = delegate_input_names(delegate)
    data = delegate.processed_bytes
    plan = LaunchPlan(data, device_cc=90, named_data=named_data(delegate))
    constants = [0x7D00_0000_0000 + 256 * i for i in range(len(plan.constants))]
    for rows in (1, GEMV_MAX_M, GEMV_MAX_M + 1, MAX_TOKENS):
        args = _args(plan, names, rows)
        for k in range(len(plan.kernels(plan.select(args)))):
            launch = plan.evaluate(k, args, workspace=0x7E00_0000_0000, constants=constants, global_scratch=16,
                                   profile_scratch=16)
            assert evaluate_launch_cpp(data, k, args, workspace=0x7E00_0000_0000, constants=constants,
                                       global_scratch=16, profile_scratch=16, device_cc=90, lib=lib) == launch


@pytest.mark.parametrize("dim, reason", [
    (torch.export.Dim("tokens"), "no upper bound: export it with torch.export.Dim(max=...)"),
    (torch.export.Dim("tokens", max=2 * MAX_TOKENS), f"up to {2 * MAX_TOKENS} tokens a step, more than the "
                                                     f"{MAX_TOKENS}-row KV cache holds"),
])
def test_a_token_count_the_caches_cannot_bound_is_refused_with_its_reason(tiny_model, dim, reason):
    from cuda_gqa.backends.model.ops import NotRecognised
    from cuda_gqa.backends.partition.whole_model_partitioner import trial_plan

    model = tiny_model("tiny-llama3")
    with torch.no_grad():
        program = torch.export.export(model, (torch.zeros(1, 4, dtype=torch.long), torch.tensor([0])),
                                      dynamic_shapes=({1: dim}, None))
    with pytest.raises(NotRecognised, match=reason.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        trial_plan(program)
