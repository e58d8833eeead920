import os

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


@pytest.fixture(scope="session", autouse=True)
def caches_outside_home(tmp_path_factory):
    """The suite never writes to the user's home: cuda_gqa's compile cache and
    Triton's own cache live in a temporary folder, for this process and the
    processes it starts (export subprocesses, compile workers)."""
    root = tmp_path_factory.mktemp("caches")
    saved = {name: os.environ.get(name) for name in ("CUDA_GQA_CACHE_DIR", "TRITON_HOME")}
    os.environ["CUDA_GQA_CACHE_DIR"] = str(root / "cuda_gqa")
    os.environ["TRITON_HOME"] = str(root / "triton")
    yield root
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
