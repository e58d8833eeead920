"""Compile specs: every supported arch by default, and bad specs refused with a message naming the problem."""

import pytest
from executorch.exir.backend.compile_spec_schema import CompileSpec

from cuda_gqa.backends.compile_specs import CudaGqaOptions, make_compile_specs, parse_compile_specs
from cuda_gqa.backends.partition import CudaGqaPartitioner


def test_default_targets_are_sm80_to_sm90_with_ptx():
    options = parse_compile_specs(make_compile_specs())
    assert options == CudaGqaOptions(archs=(80, 86, 87, 89, 90), ptx=True)
    assert parse_compile_specs(CudaGqaPartitioner().delegation_spec.compile_specs) == options


def test_archs_round_trip_sorted_and_deduplicated():
    specs = make_compile_specs(archs=["sm_90", 80, "SM_89", "90"], ptx=False)
    assert parse_compile_specs(specs) == CudaGqaOptions(archs=(80, 89, 90), ptx=False)
    assert parse_compile_specs([]) == CudaGqaOptions()


@pytest.mark.parametrize("archs, message", [
    (["sm_75"], "unsupported target arch 'sm_75': choose from sm_80, sm_86, sm_87, sm_89, sm_90"),
    (["sm_90a"], "unsupported target arch 'sm_90a'"),
    ([100], "unsupported target arch 100"),
    ([True], "unsupported target arch True"),
    ([], "at least one target arch"),
    ("sm_90", "archs must be a list"),
])
def test_bad_archs_are_refused(archs, message):
    with pytest.raises(ValueError, match=message):
        make_compile_specs(archs=archs)


def test_bad_ptx_flag_is_refused():
    with pytest.raises(ValueError, match="ptx must be True or False, got 'no'"):
        make_compile_specs(ptx="no")


@pytest.mark.parametrize("specs, message", [
    ([CompileSpec("max_batch", b"4")], "unknown CudaGqaBackend compile spec 'max_batch' \\(known: archs, ptx, target_device, dtypes, max_seq_len, generic_plans\\)"),
    ([CompileSpec("archs", b"80"), CompileSpec("archs", b"90")], "'archs' given twice"),
    ([CompileSpec("archs", b"80,75")], "unsupported target arch '75'"),
    ([CompileSpec("archs", b"")], "at least one target arch"),
    ([CompileSpec("archs", b"\xff\xfe")], "'archs' is not ASCII text"),
    ([CompileSpec("ptx", b"yes")], "ptx must be 0 or 1, got 'yes'"),
    ([CompileSpec("generic_plans", b"no")], "generic_plans must be 0 or 1, got 'no'"),
    ([CompileSpec("dtypes", b"float16,int8")], "unsupported dtype 'int8'"),
    ([CompileSpec("max_seq_len", b"0")], "max_seq_len must be a positive integer, got '0'"),
])
def test_bad_specs_reaching_preprocess_are_refused(specs, message):
    with pytest.raises(ValueError, match=message):
        parse_compile_specs(specs)


def test_dtypes_and_max_seq_len_round_trip():
    import torch

    specs = make_compile_specs(archs=[90], dtypes=["bfloat16", torch.float16], max_seq_len=4096)
    options = parse_compile_specs(specs)
    assert options.dtypes == (torch.float16, torch.bfloat16) and options.max_seq_len == 4096
    assert parse_compile_specs(make_compile_specs(archs=[90])).max_seq_len is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtypes=["float64"]), "unsupported dtype 'float64': choose from float16, bfloat16, float32"),
    (dict(dtypes=[]), "at least one dtype"),
    (dict(dtypes="bfloat16"), "dtypes must be a list"),
    (dict(max_seq_len=-5), "max_seq_len must be a positive integer, got -5"),
    (dict(max_seq_len=True), "max_seq_len must be a positive integer, got True"),
])
def test_bad_dtypes_and_max_seq_len_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_compile_specs(**kwargs)


def test_generic_plans_default_on_and_round_trip_off():
    assert parse_compile_specs(make_compile_specs()).generic_plans
    assert not parse_compile_specs(make_compile_specs(generic_plans=False)).generic_plans
    with pytest.raises(ValueError, match="generic_plans must be True or False, got 1"):
        make_compile_specs(generic_plans=1)
