import pytest
import torch

from cuda_gqa.export.llm.presets import build_preset


@pytest.fixture(scope="module")
def tiny_model():
    def build(name: str, dtype=torch.float32, max_seq_len: int = 32):
        return build_preset(name, max_seq_len=max_seq_len, dtype=dtype).eval()
    return build


def pytest_configure(config):
    import sys
    from pathlib import Path

    # payload_interpreter lives with the partition tests
    sys.path.insert(0, str(Path(__file__).parents[1] / "partition"))
