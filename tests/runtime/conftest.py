"""Session-wide fixtures of tests/runtime: exported .pte files with fake payloads, a fake driver."""

import pytest

from fake_programs import build_fake_driver, build_old_driver, make_programs


@pytest.fixture(scope="session")
def programs(tmp_path_factory):
    return make_programs(tmp_path_factory.mktemp("programs"))


@pytest.fixture(scope="session")
def fake_driver_dir(tmp_path_factory):
    folder = build_fake_driver(tmp_path_factory.mktemp("fake_cuda"))
    if folder is None:
        pytest.skip("no C compiler to build the fake driver")
    return folder


@pytest.fixture(scope="session")
def no_graph_driver_dir(tmp_path_factory):
    """The fake driver without the graph API: kernels are launched one by one."""
    folder = build_fake_driver(tmp_path_factory.mktemp("fake_cuda_no_graphs"), graphs=False)
    if folder is None:
        pytest.skip("no C compiler to build the fake driver")
    return folder


@pytest.fixture(scope="session")
def old_driver_dir(tmp_path_factory):
    """A libcuda.so.1 too old for the backend: the missing-driver paths on any machine."""
    folder = build_old_driver(tmp_path_factory.mktemp("old_cuda"))
    if folder is None:
        pytest.skip("no C compiler to build the old driver")
    return folder
