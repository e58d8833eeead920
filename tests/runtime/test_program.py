"""cuda_gqa.runtime.program.load_method: a .pte's method, callable with torch tensors."""

import pytest
import torch

from cuda_gqa.runtime.program import load_method


class AddOne(torch.nn.Module):
    def forward(self, x):
        return x + 1


@pytest.fixture(scope="module")
def cpu_program(tmp_path_factory):
    from executorch.exir import to_edge  # here: the GPU machine collects this folder and has no executorch

    path = tmp_path_factory.mktemp("program") / "add_one.pte"
    program = to_edge(torch.export.export(AddOne(), (torch.zeros(2, 3),))).to_executorch()
    path.write_bytes(program.buffer)
    return path


def test_a_method_runs_on_torch_tensors(cpu_program):
    x = torch.randn(2, 3)
    (out,) = load_method(cpu_program).execute([x])
    torch.testing.assert_close(out, x + 1)


def test_a_missing_method_is_named(cpu_program):
    with pytest.raises(ValueError, match=r"has no method 'decode' \(it has forward\)"):
        load_method(cpu_program, "decode")


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such program"):
        load_method(tmp_path / "absent.pte")


def test_a_delegate_that_cannot_start_names_the_gpu_status(tmp_path):
    """Without a usable GPU the CudaGqaBackend delegate refuses init; the error says why."""
    from cuda_gqa.export.attention_demo import make_attention_only
    from cuda_gqa.export.lower import lower_to_executorch
    from cuda_gqa.runtime import device_status

    usable, _ = device_status()
    model, inputs = make_attention_only(torch.float16, 1, 64)
    program, report = lower_to_executorch(model, inputs, archs=["sm_80"])
    assert [d.delegated for d in report] == [True]
    path = tmp_path / "attention.pte"
    path.write_bytes(program.buffer)
    if usable:
        (out,) = load_method(path).execute(list(inputs))
        assert out.shape == inputs[0].shape
    else:
        with pytest.raises(RuntimeError, match=r"method 'forward' failed to load \(no usable GPU: "):
            load_method(path)
