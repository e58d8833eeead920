import pytest
import torch


def pytest_collection_modifyitems(config, items):
    # GPU tests skip only when this machine has no CUDA device.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
