"""The whole decoder step in one CudaGqaBackend delegate: lowered, and run as the runtimes run it.

The delegate's payload runs on the CPU through the product's own launch
evaluation with every kernel under Triton's interpreter
(tests/partition/payload_interpreter.py): its logits must be eager PyTorch's.
"""

import pytest
import torch

from cuda_gqa.backends.serialization import payload_generated as fb
from payload_interpreter import recording_compiles, run_in_subprocess
from whole_programs import delegate_input_names, delegates, lower_whole, named_data


@pytest.fixture(scope="module")
def llama_decode(tiny_model):
    model = tiny_model("tiny-llama3")
    kernels = {}
    with recording_compiles(kernels):
        edge, partitioner = lower_whole(model, 1)
    return model, edge, partitioner, kernels


def test_one_delegate_holds_the_whole_step(llama_decode):
    model, edge, partitioner, _ = llama_decode
    assert partitioner.model_report.startswith("whole step")
    calls = [n for n in edge.exported_program().graph.nodes if n.op == "call_function"]
    assert [str(n.target) for n in calls] == ["executorch_call_delegate", "<built-in function getitem>"]
    assert all(d.delegated for d in partitioner.report) and len(partitioner.report) == model.config.num_layers


def test_decode_steps_give_eager_logits(llama_decode, tmp_path):
    model, edge, _, kernels = llama_decode
    (delegate,) = delegates(edge)
    names = delegate_input_names(delegate)
    steps = [(torch.tensor([[t]]), torch.tensor([i])) for i, t in enumerate([3, 17, 250])]
    calls = [[{"tokens": tokens, "input_pos": pos}[n] for n in names] for tokens, pos in steps]
    program = {"payload": delegate.processed_bytes, "calls": calls, "named_data": named_data(delegate)}
    (result,) = run_in_subprocess({"kernels": kernels, "programs": [program]}, tmp_path)
    model.reset_buffers()
    for (logits,), (tokens, pos) in zip(result["outputs"], steps):
        with torch.no_grad():
            torch.testing.assert_close(logits, model(tokens, pos), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def llama_prefill(tiny_model):
    model = tiny_model("tiny-llama3")
    kernels = {}
    with recording_compiles(kernels), model.last_row_logits():  # as export_llm exports its prefill
        edge, _ = lower_whole(model, 12)
    return model, edge, kernels


def test_prefill_chunks_give_eager_logits_of_their_last_row(llama_prefill, tmp_path):
    # Two 12-token chunks (more rows than a GEMV takes) through the GEMM, forward-attention and
    # cache-write kernels; the second attends over the first's cache rows as well as its own.
    # The final norm and LM head run on the last row only (last_row, then GEMV).
    model, edge, kernels = llama_prefill
    assert {"linear_gemm", "rope_cache_write", "last_row"} <= {kernel["name"] for kernel in kernels.values()}
    (delegate,) = delegates(edge)
    names = delegate_input_names(delegate)
    generator = torch.Generator().manual_seed(0)
    chunks = [(torch.randint(0, model.config.vocab_size, (1, 12), generator=generator), torch.tensor([start]))
              for start in (0, 12)]
    calls = [[{"tokens": tokens, "input_pos": pos}[n] for n in names] for tokens, pos in chunks]
    program = {"payload": delegate.processed_bytes, "calls": calls, "named_data": named_data(delegate)}
    (result,) = run_in_subprocess({"kernels": kernels, "programs": [program]}, tmp_path)
    model.reset_buffers()
    for (logits,), (tokens, pos) in zip(result["outputs"], chunks):
        with torch.no_grad():
            expected = model(tokens, pos)[:, -1:]
        assert logits.shape == expected.shape
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_the_step_bounds_input_pos_by_the_cache_length_and_tokens_by_the_vocabulary(llama_decode):
    # input_pos starts the tokens' rows (dim 1); execute refuses a step writing past the 32-row caches,
    # and token ids outside the 256-row embedding table.
    from cuda_gqa.runtime.launch_plan import LaunchPlan

    _, edge, _, _ = llama_decode
    (delegate,) = delegates(edge)
    names = delegate_input_names(delegate)
    plan = LaunchPlan(delegate.processed_bytes, named_data=named_data(delegate))
    tokens, input_pos = names.index("tokens"), names.index("input_pos")
    assert [(b.index, b.arg, b.startOnly, b.bound) for b in plan.position_bounds] == [
        (fb.BoundedIndex.TokenId, tokens, False, 256), (fb.BoundedIndex.CachePosition, input_pos, True, 32)]
    assert (plan.position_bounds[1].rowsArg, plan.position_bounds[1].rowsDim) == (tokens, 1)


def test_a_model_the_plan_cannot_hold_keeps_attention_only(tiny_model):
    model = tiny_model("tiny-gemma2")  # soft-capped attention written out
    edge, partitioner = lower_whole(model, 1)
    assert partitioner.model_report.startswith("attention only: ")
    assert len(delegates(edge)) == model.config.num_layers  # one attention delegate per layer


def test_sliding_and_full_layers_keep_their_own_attention(tiny_model, tmp_path):
    # tiny-gemma3: a sliding layer (window 8) then a full one. Their attention kernels differ only
    # in the window; a 12-token prefill sees past the window, so each layer needs its own.
    model = tiny_model("tiny-gemma3")
    kernels = {}
    with recording_compiles(kernels):
        edge, _ = lower_whole(model, 12)
    windows = {k["constexprs"]["WINDOW_LEFT"] for k in kernels.values() if "WINDOW_LEFT" in k["constexprs"]}
    assert windows == {7, -1}
    (delegate,) = delegates(edge)
    names = delegate_input_names(delegate)
    tokens = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    calls = [[{"tokens": tokens, "input_pos": torch.tensor([0])}[n] for n in names]]
    program = {"payload": delegate.processed_bytes, "calls": calls, "named_data": named_data(delegate)}
    (result,) = run_in_subprocess({"kernels": kernels, "programs": [program]}, tmp_path)
    model.reset_buffers()
    with torch.no_grad():
        torch.testing.assert_close(result["outputs"][0][0], model(tokens, torch.tensor([0])), rtol=1e-4, atol=1e-4)


def test_a_long_cache_decodes_through_split_and_combine_kernels(tiny_model, tmp_path):
    # At 4096 keys the decode attention splits the keys and merges the splits in a second kernel,
    # which writes the step's attention output into the workspace, not over a cache.
    model = tiny_model("tiny-llama3", max_seq_len=4096)
    kernels = {}
    with recording_compiles(kernels):
        edge, _ = lower_whole(model, 1)
    assert "gqa_decode_combine" in {kernel["name"] for kernel in kernels.values()}
    (delegate,) = delegates(edge)
    names = delegate_input_names(delegate)
    steps = [(torch.tensor([[t]]), torch.tensor([p])) for p, t in [(4000, 5), (4001, 9)]]
    calls = [[{"tokens": tokens, "input_pos": pos}[n] for n in names] for tokens, pos in steps]
    program = {"payload": delegate.processed_bytes, "calls": calls, "named_data": named_data(delegate)}
    (result,) = run_in_subprocess({"kernels": kernels, "programs": [program]}, tmp_path)
    model.reset_buffers()
    for (logits,), (tokens, pos) in zip(result["outputs"], steps):
        with torch.no_grad():
            torch.testing.assert_close(logits, model(tokens, pos), rtol=1e-5, atol=1e-5)
