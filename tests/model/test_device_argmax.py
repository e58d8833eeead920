"""On-device greedy argmax: a step returning logits[:, -1].argmax(-1) reads as an `argmax` plan op, and its
delegate's payload (argmax_rows, + argmax_merge over several splits) gives eager's token ids under the
payload interpreter."""

import dataclasses

import pytest
import torch

from cuda_gqa.backends.model.recognize import recognise
from cuda_gqa.backends.model.reference import evaluate
from cuda_gqa.backends.model.ops import NotRecognised
from cuda_gqa.export.llm.decoder import Decoder
from cuda_gqa.export.llm.presets import PRESETS, randomize_weights
from model_steps import edge_step
from payload_interpreter import recording_compiles, run_in_subprocess
from whole_programs import delegate_input_names, delegates, lower_whole, named_data


class LastRowArgmax(torch.nn.Module):
    """`decoder`'s step returning its last row's greedy token id ([1, 1] with keepdim, else [1])."""

    def __init__(self, decoder, keepdim: bool = True):
        super().__init__()
        self.decoder, self.keepdim = decoder, keepdim

    def forward(self, tokens, input_pos):
        return self.decoder(tokens, input_pos)[:, -1].argmax(-1, keepdim=self.keepdim)


def _tiny_llama(vocab_size: int = 256) -> Decoder:
    config = dataclasses.replace(PRESETS["tiny-llama3"], vocab_size=vocab_size)
    return randomize_weights(Decoder.uninitialized(config, max_seq_len=32), seed=0).eval()


@pytest.mark.parametrize("keepdim", [True, False])
def test_the_plan_reads_argmax_and_computes_eager_token_ids(keepdim):
    model = _tiny_llama()
    plan = recognise(edge_step(LastRowArgmax(model, keepdim), 1))
    assert plan.kinds()[-2:] == ["last_row", "argmax"]
    assert plan.outputs[0].dtype == torch.int64 and plan.outputs[0].shape == ((1, 1) if keepdim else (1,))
    states = {name: torch.zeros(v.shape, dtype=v.dtype) for name, v in plan.states.items()}
    constants = {name: plan.constant_data[name] for name in plan.constants}
    tokens, pos = torch.tensor([[7]]), torch.tensor([0])
    (ids,) = evaluate(plan, {"tokens": tokens, "input_pos": pos}, states, constants)
    with torch.no_grad():
        assert torch.equal(ids, model(tokens, pos)[:, -1].argmax(-1, keepdim=keepdim))


def test_argmax_over_another_dim_is_named():
    class FirstDim(torch.nn.Module):
        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder

        def forward(self, tokens, input_pos):
            return self.decoder(tokens, input_pos)[:, -1].argmax(0)

    with pytest.raises(NotRecognised, match="argmax that is not over the last dim"):
        recognise(edge_step(FirstDim(_tiny_llama()), 1))


def _decode_ids(model, vocab_size, tmp_path):
    """(interpreted token ids, eager logits) of three decode steps of LastRowArgmax(model)."""
    kernels = {}
    with recording_compiles(kernels):
        edge, partitioner = lower_whole(LastRowArgmax(model), 1)
    assert partitioner.model_report.startswith("whole step")
    (delegate,) = delegates(edge)
    names = delegate_input_names(delegate)
    steps = [(torch.tensor([[t]]), torch.tensor([i])) for i, t in enumerate([3, 17, vocab_size - 1])]
    calls = [[{"tokens": tokens, "input_pos": pos}[n] for n in names] for tokens, pos in steps]
    program = {"payload": delegate.processed_bytes, "calls": calls, "named_data": named_data(delegate)}
    (result,) = run_in_subprocess({"kernels": kernels, "programs": [program]}, tmp_path)
    model.reset_buffers()
    with torch.no_grad():
        eager = [model(tokens, pos)[:, -1] for tokens, pos in steps]
    argmax = {k["name"]: k["constexprs"] for k in kernels.values() if k["name"].startswith("argmax")}
    return [ids for (ids,) in result["outputs"]], eager, argmax


# 256 columns: one program per row; 5008: two splits of 4096 merged by argmax_merge (a vocabulary of a
# multiple of 16: the LM head GEMV's output stride is compiled as one).
@pytest.mark.parametrize("vocab_size, merged", [(256, False), (5008, True)])
def test_decode_steps_give_eager_greedy_tokens(vocab_size, merged, tmp_path):
    ids, eager, argmax = _decode_ids(_tiny_llama(vocab_size), vocab_size, tmp_path)
    assert "argmax_rows" in argmax and ("argmax_merge" in argmax) == merged
    assert all(constexprs["WAIT_FOR_PREVIOUS"] for constexprs in argmax.values())  # sm_90: programmatic launch
    for got, logits in zip(ids, eager):
        top2 = logits.topk(2).values[0]
        assert top2[0] - top2[1] > 1e-4, "a near tie would make the check depend on rounding"
        assert got.dtype == torch.int64 and got.shape == (1, 1)
        assert torch.equal(got, logits.argmax(-1, keepdim=True))


def test_sm90_argmax_images_wait_for_the_kernel_before_them():
    from cuda_gqa.backends.aot.argmax_rows import compile_argmax_merge, compile_argmax_rows

    for compile_one in (lambda **w: compile_argmax_rows(dtype=torch.float32, vocab=5008, num_splits=2, arch=90, **w),
                        lambda **w: compile_argmax_merge(num_splits=2, arch=90, **w)):
        assert "griddepcontrol.wait" in compile_one(wait_for_previous=True).ptx
        assert "griddepcontrol" not in compile_one().ptx
