"""runtime/launch_plan.py: the Python evaluator of payload launches, on
hand-built payloads, and its parity with the C++ launcher's evaluation
(cuda_gqa_evaluate_launch in build/libcuda_gqa_backend.so). No GPU needed."""

from __future__ import annotations

import ctypes
import itertools
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cuda_gqa.backends.serialization import serialize_payload
from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.runtime.launch_plan import (
    ArgInfo,
    KernelLaunch,
    LaunchError,
    LaunchPlan,
    evaluate_launch_cpp,
    select_image,
)

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "build" / "libcuda_gqa_backend.so"

K = fb.ParamKind
T = fb.ParamType
F16, BF16, F32 = fb.DType.Float16, fb.DType.BFloat16, fb.DType.Float32
BLOCK_M = 64
GLOBAL_SCRATCH = 0x7F00_0000_1000
PROFILE_SCRATCH = 0x7F00_0000_2000


# --------------------------------------------------------------------------
# payloads shaped like the attention kernel's


def param(kind, type_, arg=0, dim=0, div=0, f32=0.0):
    return fb.KernelParamT(kind=kind, type=type_, arg=arg, dim=dim, divisibility=div, f32Value=f32)


def attention_params(scale=0.125, stride_type=T.Int32, stride_div=16):
    params = [param(K.TensorPointer, T.Pointer, arg, div=16) for arg in range(4)]  # Q K V Out
    params.append(param(K.Float32Constant, T.Float32, f32=scale))
    for arg in range(4):
        for dim in range(3):  # b, h, m/n strides
            params.append(param(K.TensorStride, stride_type, arg, dim, div=stride_div))
    params.append(param(K.TensorSize, T.Int32, 0, 2))  # L_q
    params.append(param(K.TensorSize, T.Int32, 1, 2))  # L_kv
    params.append(param(K.GlobalScratch, T.Pointer))
    params.append(param(K.ProfileScratch, T.Pointer))
    return params


def attention_payload(b=2, hq=8, hkv=2, lq=128, lkv=128, d=64, dtype=F16, *, scratch=(0, 0),
                      archs=(80, 90), ptx_arch=80, scale=0.125, dynamic=False, stride_type=T.Int32,
                      num_warps=4, shared=32768, max_batch=100_000, max_length=4096) -> fb.PayloadT:
    """dynamic: B and both lengths dynamic (up to max_batch, max_length); k's B and v's
    B and L_kv, and all of out's dynamic sizes, come from q and k (size_from)."""
    def spec(h, length, size_from=()):
        if not dynamic:
            return fb.TensorSpecT(dtype=dtype, sizes=[b, h, length, d])
        return fb.TensorSpecT(dtype=dtype, sizes=[-1, h, -1, d], maxSizes=[max_batch, h, max_length, d],
                              sizeFrom=[fb.DimSourceT(dim=dim, arg=arg, argDim=arg_dim)
                                        for dim, arg, arg_dim in size_from] or None)

    grid = [fb.GridDimT(factors=[fb.GridFactorT(arg=0, dim=2, divisor=BLOCK_M)]),
            fb.GridDimT(factors=[fb.GridFactorT(arg=0, dim=0, divisor=1), fb.GridFactorT(arg=0, dim=1, divisor=1)]),
            fb.GridDimT(factors=[])]
    kernel = fb.KernelT(
        name="gqa_attention_fwd", numWarps=num_warps, sharedMemBytes=shared,
        cubins=[fb.CubinT(arch=a, image=np.frombuffer(b"\x7fELF" + bytes([a]), dtype=np.uint8)) for a in archs],
        ptx=np.frombuffer(b"// ptx\n", dtype=np.uint8) if ptx_arch else None, ptxArch=ptx_arch or 0,
        globalScratchBytes=scratch[0], globalScratchAlign=128 if scratch[0] else 0,
        profileScratchBytes=scratch[1], profileScratchAlign=8 if scratch[1] else 0,
        params=attention_params(scale, stride_type), grid=grid)
    return fb.PayloadT(inputs=[spec(hq, lq), spec(hkv, lkv, [(0, 0, 0)]), spec(hkv, lkv, [(0, 0, 0), (2, 1, 2)])],
                       outputs=[spec(hq, lq, [(0, 0, 0), (2, 0, 2)])], plans=[fb.LaunchPlanT(kernels=[kernel])])


def contiguous_strides(sizes):
    strides, acc = [], 1
    for s in reversed(sizes):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def blhd_view_strides(b, h, l, d):
    """Strides of a [B, L, H, D] buffer viewed as [B, H, L, D] (transpose(1, 2))."""
    return (l * h * d, d, h * d, 1)


def tensor(sizes, dtype=F16, address=0x10000, strides=None, label=None):
    return ArgInfo(dtype=dtype, sizes=tuple(sizes), strides=strides or contiguous_strides(sizes), address=address,
                   dtype_label=label)


def attention_args(b=2, hq=8, hkv=2, lq=128, lkv=128, d=64, dtype=F16, layout="bhld", base=0x7000_0000_0000):
    args = []
    for i, (h, length) in enumerate(((hq, lq), (hkv, lkv), (hkv, lkv), (hq, lq))):
        sizes = (b, h, length, d)
        strides = contiguous_strides(sizes) if layout == "bhld" else blhd_view_strides(b, h, length, d)
        args.append(tensor(sizes, dtype, base + i * (1 << 32), strides))
    return args


def replace(args, i, **changes):
    a = args[i]
    fields = dict(dtype=a.dtype, sizes=a.sizes, strides=a.strides, address=a.address, dtype_label=a.dtype_label)
    fields.update(changes)
    out = list(args)
    out[i] = ArgInfo(**fields)
    return out


# --------------------------------------------------------------------------
# the Python evaluator


def test_contiguous_launch():
    plan = LaunchPlan(serialize_payload(attention_payload()))
    args = attention_args()
    launch = plan.evaluate(0, args)
    assert launch.grid == (2, 16, 1)
    assert launch.block == 128 and launch.shared_mem_bytes == 32768
    assert launch.name == "gqa_attention_fwd" and launch.ctas == 32
    types = [t for t, _ in launch.params]
    values = [v for _, v in launch.params]
    assert values[:4] == [a.address for a in args]
    assert types[:4] == [T.Pointer] * 4 and types[4] == T.Float32
    assert values[4] == 0.125
    assert values[5:8] == [8 * 128 * 64, 128 * 64, 64]  # q strides b, h, m
    assert values[8:11] == [2 * 128 * 64, 128 * 64, 64]  # k strides
    assert values[17:19] == [128, 128]
    assert values[19:] == [0, 0]  # no scratch
    slots = launch.slots()
    assert slots[4] == struct.unpack("<I", struct.pack("<f", 0.125))[0]
    assert slots[17] == 128


def test_grid_rounds_up_and_strided_views():
    plan = LaunchPlan(attention_payload(b=3, hq=4, hkv=1, lq=65, lkv=200, d=128))
    args = attention_args(b=3, hq=4, hkv=1, lq=65, lkv=200, d=128, layout="blhd")
    launch = plan.evaluate(0, args)
    assert launch.grid == (2, 12, 1)
    values = [v for _, v in launch.params]
    assert values[5:8] == [65 * 4 * 128, 128, 4 * 128]
    assert values[17:19] == [65, 200]


def test_scratch_addresses_and_sizing():
    payload = attention_payload(scratch=(256, 64))
    plan = LaunchPlan(payload)
    assert plan.scratch_ctas(0, 0) == 32
    launch = plan.evaluate(0, attention_args(), global_scratch=GLOBAL_SCRATCH, profile_scratch=PROFILE_SCRATCH)
    assert [v for _, v in launch.params][-2:] == [GLOBAL_SCRATCH, PROFILE_SCRATCH]
    with pytest.raises(LaunchError, match="scratch buffer missing"):
        plan.evaluate(0, attention_args(), global_scratch=GLOBAL_SCRATCH)
    # Dynamic sizes: room for the grid at the max sizes, the largest any call launches.
    dyn = LaunchPlan(attention_payload(scratch=(256, 0), dynamic=True, max_batch=3, max_length=1000))
    assert dyn.scratch_ctas(0, 0) == -(-1000 // BLOCK_M) * 3 * 8
    with pytest.raises(LaunchError, match="grid dim 1 exceeds the hardware limit"):
        LaunchPlan(attention_payload(scratch=(256, 0), dynamic=True)).scratch_ctas(0, 0)


def test_dynamic_sizes_accept_any_extent_up_to_their_bound():
    plan = LaunchPlan(attention_payload(dynamic=True))
    launch = plan.evaluate(0, attention_args(b=5, lq=300, lkv=17))
    assert launch.grid == (5, 40, 1)
    assert [v for _, v in launch.params][17:19] == [300, 17]


def test_empty_grid_is_nothing_to_launch():
    plan = LaunchPlan(attention_payload(dynamic=True, scratch=(0, 0)))
    assert plan.evaluate(0, attention_args(lq=0)).ctas == 0


def test_int64_strides_and_float_rounding():
    plan = LaunchPlan(attention_payload(stride_type=T.Int64, scale=0.1))
    launch = plan.evaluate(0, attention_args())
    assert launch.params[5][0] == T.Int64
    assert launch.params[4][1] == float(np.float32(0.1))


REFUSALS = [
    ("wrong dtype", lambda a: replace(a, 1, dtype=BF16), "input 1 has dtype bfloat16, the kernels were compiled for float16"),
    ("foreign dtype", lambda a: replace(a, 0, dtype=-1, dtype_label="float64"), "input 0 has dtype float64, the kernels"),
    ("rank", lambda a: replace(a, 2, sizes=(2, 2, 128), strides=(1, 1, 1)), "input 2 has rank 3, expected 4"),
    ("size", lambda a: replace(a, 3, sizes=(2, 8, 127, 64), strides=contiguous_strides((2, 8, 127, 64))),
     "output 0 has size 127 at dim 2, expected 128"),
    ("last-dim stride", lambda a: replace(a, 0, strides=(8 * 128 * 128, 128 * 128, 128, 2)),
     "input 0: last dimension has stride 2, expected 1"),
    ("misaligned pointer", lambda a: replace(a, 1, address=a[1].address + 2),
     "kernel gqa_attention_fwd param 1: address of arg 1 is not a multiple of 16 bytes, which the cubin assumes"),
    ("stride divisibility", lambda a: replace(a, 2, strides=(2 * 128 * 64, 8, 64 + 8, 1)),
     "param 12: stride 8 of arg 2 dim 1 is not a multiple of 16"),
    ("int32 overflow", lambda a: replace(a, 0, strides=(1 << 33, 128 * 64, 64, 1)), "does not fit in int32"),
    ("arg count", lambda a: a[:3], "3 delegate args, the payload expects 4"),
]


@pytest.mark.parametrize("name,mutate,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(name, mutate, message):
    plan = LaunchPlan(attention_payload())
    with pytest.raises(LaunchError) as e:
        plan.evaluate(0, mutate(attention_args()))
    assert message in str(e.value)


def test_grid_limit():
    plan = LaunchPlan(attention_payload(dynamic=True))
    with pytest.raises(LaunchError, match="kernel gqa_attention_fwd: grid dim 1 exceeds the hardware limit"):
        plan.evaluate(0, attention_args(b=70000, hq=8))


@pytest.mark.parametrize("mutate,message", [
    (lambda p: setattr(p.plans[0].kernels[0], "numWarps", 0), "plan 0 kernel 0 (gqa_attention_fwd): num_warps 0 outside 1..32"),
    (lambda p: setattr(p.plans[0].kernels[0].params[0], "type", T.Int32), "param 0: TensorPointer must be passed as Pointer"),
    (lambda p: setattr(p.plans[0].kernels[0].params[5], "dim", 4), "param 5: dim 4 out of range for arg 0 of rank 4"),
    (lambda p: setattr(p.plans[0].kernels[0].params[0], "arg", 4), "param 0: arg 4 out of range (4 delegate args)"),
    (lambda p: setattr(p.plans[0].kernels[0].params[4], "f32Value", float("inf")), "Float32Constant is not finite"),
    (lambda p: setattr(p.plans[0].kernels[0].grid[0].factors[0], "divisor", 0), "grid dim 0: factor divisor is 0"),
    (lambda p: setattr(p.inputs[1], "sizes", [2, 2, -3, 64]), "input 1: size -3 at dim 2"),
    (lambda p: setattr(p, "outputs", []), "payload has no outputs"),
    (lambda p: setattr(p.plans[0].kernels[0], "cubins", [p.plans[0].kernels[0].cubins[0]] * 2), "duplicate arch sm_80"),
    (lambda p: setattr(p.plans[0].kernels[0], "globalScratchAlign", 24), "scratch alignment is not a power of two"),
])
def test_payload_refusals_match_cpp(mutate, message):
    payload = attention_payload()
    mutate(payload)
    data = serialize_payload(payload)
    with pytest.raises(LaunchError) as e:
        LaunchPlan(data)
    assert message in str(e.value)
    cpp = cpp_lib()
    with pytest.raises(LaunchError) as e_cpp:
        evaluate_launch_cpp(data, 0, attention_args(), lib=cpp)
    assert str(e_cpp.value) == str(e.value)


@pytest.mark.parametrize("archs,ptx_arch,cc,expect", [
    ((80, 90), 80, 80, (80, False)),
    ((80, 90), 80, 86, (80, False)),
    ((80, 86, 90), 80, 89, (86, False)),
    ((80, 90), 80, 90, (90, False)),
    ((80, 90), 80, 100, (80, True)),
    ((80, 90), 0, 100, "no cubin for sm_100 in this payload (has sm_80, sm_90; no PTX)"),
    ((80,), 90, 75, "no cubin for sm_75 in this payload (has sm_80; PTX needs >= sm_90)"),
    ((), 80, 75, "no cubin for sm_75 in this payload (has no cubins; PTX needs >= sm_80)"),
])
def test_select_image(archs, ptx_arch, cc, expect):
    payload = attention_payload(archs=archs, ptx_arch=ptx_arch)
    kernel = payload.plans[0].kernels[0]
    if isinstance(expect, str):
        with pytest.raises(LaunchError, match=expect.replace("(", r"\(").replace(")", r"\)")):
            select_image(kernel, cc)
    else:
        choice = select_image(kernel, cc)
        assert (choice.arch, choice.is_ptx) == expect
        assert choice.image == (b"// ptx\n" if choice.is_ptx else b"\x7fELF" + bytes([choice.arch]))
    # The C++ runtime picks the same.
    lib = cpp_lib()
    data = serialize_payload(payload)
    message = ctypes.create_string_buffer(512)
    rc = lib.cuda_gqa_select_images(data, len(data), cc, message, len(message))
    text = message.value.decode()
    if isinstance(expect, str):
        assert rc != 0 and text == f"kernel gqa_attention_fwd: {expect}"
    else:
        assert rc == 0
        assert text == "gqa_attention_fwd: " + ("PTX" if expect[1] else f"sm_{expect[0]} cubin")


# --------------------------------------------------------------------------
# parity with the C++ evaluator


_LIB = None


def cpp_lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        if not LIBRARY.is_file():
            pytest.fail(f"{LIBRARY} not found: run `make build` first")
        # In a subprocess first: a crash of the library must fail a test, not pytest.
        probe = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(LIBRARY)!r})"],
                               capture_output=True, text=True)
        assert probe.returncode == 0, probe.stderr
        lib = ctypes.CDLL(str(LIBRARY), mode=ctypes.RTLD_GLOBAL)
        lib.cuda_gqa_select_images.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p,
                                               ctypes.c_size_t]
        lib.cuda_gqa_select_images.restype = ctypes.c_int
        _LIB = lib
    return _LIB


def both(data: bytes, args, **scratch):
    """(python, cpp): each a KernelLaunch or the LaunchError message."""
    out = []
    for evaluate in (lambda: LaunchPlan(data).evaluate(0, args, **scratch),
                     lambda: evaluate_launch_cpp(data, 0, args, lib=cpp_lib(), **scratch)):
        try:
            out.append(evaluate())
        except LaunchError as e:
            out.append(str(e))
    return out


def normalized(launch):
    if isinstance(launch, str):
        return launch
    # NaN-free floats compare exactly; ints by value.
    return (launch.grid, launch.block, launch.shared_mem_bytes, launch.params, tuple(launch.slots()))


SHAPES = [  # b, hq, hkv, lq, lkv, d
    (1, 8, 2, 128, 128, 64),
    (2, 32, 8, 1, 4096, 128),
    (3, 4, 1, 65, 200, 128),
    (1, 16, 1, 1000, 1000, 64),
    (4, 6, 3, 17, 33, 16),
    (2, 8, 8, 64, 64, 256),
    (1, 2, 1, 0, 8, 64),
]
VARIANTS = ["contiguous", "blhd", "misaligned_q", "misaligned_out_8", "aligned_32", "wrong_dtype", "foreign_dtype",
            "bad_last_stride", "odd_stride_view", "short_args", "wrong_size", "huge_stride"]


def variant_args(variant, shape, dtype):
    b, hq, hkv, lq, lkv, d = shape
    args = attention_args(b, hq, hkv, lq, lkv, d, dtype, layout="blhd" if variant == "blhd" else "bhld")
    if variant == "misaligned_q":
        args = replace(args, 0, address=args[0].address + 2)
    elif variant == "misaligned_out_8":
        args = replace(args, 3, address=args[3].address + 8)
    elif variant == "aligned_32":
        args = replace(args, 1, address=args[1].address + 32)
    elif variant == "wrong_dtype":
        args = replace(args, 2, dtype=F32 if dtype != F32 else F16)
    elif variant == "foreign_dtype":
        args = replace(args, 1, dtype=-1, dtype_label="float64")
    elif variant == "bad_last_stride":
        args = replace(args, 0, strides=args[0].strides[:3] + (2,))
    elif variant == "odd_stride_view":  # a view into a padded buffer: head stride not a multiple of 16
        s = args[1].strides
        args = replace(args, 1, strides=(s[0] + 8, s[1] + 8, s[2], 1))
    elif variant == "short_args":
        args = args[:3]
    elif variant == "wrong_size":
        args = replace(args, 3, sizes=(b, hq, lq + 1, d), strides=contiguous_strides((b, hq, lq + 1, d)))
    elif variant == "huge_stride":
        args = replace(args, 2, strides=(1 << 36, 1 << 20, d, 1))
    return args


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [F16, BF16, F32], ids=["f16", "bf16", "f32"])
def test_parity_with_cpp(shape, dtype):
    b, hq, hkv, lq, lkv, d = shape
    seen_ok = seen_refused = 0
    for dynamic, scratch, stride_type in itertools.product((False, True), ((0, 0), (512, 0), (128, 64)),
                                                           (T.Int32, T.Int64)):
        if dynamic and scratch != (0, 0):
            payloads = [attention_payload(b, hq, hkv, lq, lkv, d, dtype, dynamic=True, scratch=scratch,
                                          stride_type=stride_type)]
        else:
            payloads = [attention_payload(b, hq, hkv, lq, lkv, d, dtype, dynamic=dynamic, scratch=scratch,
                                          stride_type=stride_type, shared=98304 if d > 64 else 16384,
                                          num_warps=8 if d > 64 else 4)]
        for payload, variant in itertools.product(payloads, VARIANTS):
            data = serialize_payload(payload)
            args = variant_args(variant, shape, dtype)
            for gs, ps in ((GLOBAL_SCRATCH, PROFILE_SCRATCH), (0, 0)):
                py, cpp = both(data, args, global_scratch=gs, profile_scratch=ps)
                assert normalized(py) == normalized(cpp), (variant, dynamic, scratch, stride_type, py, cpp)
                if isinstance(py, str):
                    seen_refused += 1
                else:
                    seen_ok += 1
    assert seen_ok and seen_refused


def test_parity_grid_limit_and_wrong_kernel_index():
    data = serialize_payload(attention_payload(dynamic=True))
    py, cpp = both(data, attention_args(b=70000))
    assert isinstance(py, str) and py == cpp
    with pytest.raises(LaunchError, match="kernel 1 out of range"):
        evaluate_launch_cpp(data, 1, attention_args(), lib=cpp_lib())


def test_parity_randomized():
    rng = np.random.default_rng(0)
    for _ in range(200):
        b, hkv = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        hq = hkv * int(rng.choice([1, 2, 4, 8]))
        lq, lkv = int(rng.integers(0, 700)), int(rng.integers(1, 700))
        d = int(rng.choice([16, 32, 64, 128, 256]))
        dtype = int(rng.choice([F16, BF16, F32]))
        data = serialize_payload(attention_payload(b, hq, hkv, lq, lkv, d, dtype, dynamic=bool(rng.integers(2))))
        args = attention_args(b, hq, hkv, lq, lkv, d, dtype, layout=str(rng.choice(["bhld", "blhd"])))
        i = int(rng.integers(4))
        args = replace(args, i, address=args[i].address + int(rng.choice([0, 0, 0, 2, 4, 8, 16, 48])))
        py, cpp = both(data, args)
        assert normalized(py) == normalized(cpp), (b, hq, hkv, lq, lkv, d, dtype, py, cpp)


def test_importing_launch_plan_needs_no_torch_or_executorch():
    code = ("import sys; import cuda_gqa.runtime.launch_plan, cuda_gqa.runtime.cubin_launcher; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'executorch', 'triton')]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cubin_launcher_without_cuda_core_or_gpu_raises_clearly():
    code = ("from cuda_gqa.runtime.cubin_launcher import CubinLauncher, CudaCoreUnavailable\n"
            "import sys\n"
            f"data = {serialize_payload(attention_payload())!r}\n"
            "try:\n    CubinLauncher(data)\nexcept CudaCoreUnavailable as e:\n    print('refused:', e)\n"
            "else:\n    print('built')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    import torch

    if not torch.cuda.is_available():
        assert result.stdout.startswith("refused:"), result.stdout


# --------------------------------------------------------------------------
# split-KV decode payloads: Workspace params and Int32 constants

WORKSPACE = 0x7E00_0000_0000
SPLIT_LEN = 576


def decode_payload(b=1, hq=32, hkv=8, lq=1, lkv=8192, d=128, dtype=F16, split_len=SPLIT_LEN, *,
                   dynamic=False, partial_div=16) -> fb.PayloadT:
    """[split, combine] shaped like attention_plan's: Partial then Lse in one workspace."""
    def spec(h, length, size_from=None):
        if not dynamic:
            return fb.TensorSpecT(dtype=dtype, sizes=[b, h, length, d])
        return fb.TensorSpecT(dtype=dtype, sizes=[-1, h, -1, d], maxSizes=[b, h, length, d], sizeFrom=size_from)

    splits = -(-lkv // split_len)
    partial = b * hq * lq * splits * d * 4
    lse = b * hq * lq * splits * 4
    lse_offset = -(-partial // 16) * 16

    def ws(offset, extent, div=16):
        p = param(K.Workspace, T.Pointer, div=div)
        p.workspaceOffset, p.workspaceExtent = offset, extent
        return p

    def const(value):
        return fb.KernelParamT(kind=K.Int32Constant, type=T.Int32, i32Value=value)

    split_params = [param(K.TensorPointer, T.Pointer, arg, div=16) for arg in range(4)]
    split_params += [ws(0, partial, partial_div), ws(lse_offset, lse), param(K.Float32Constant, T.Float32, f32=0.125)]
    split_params += [param(K.TensorStride, T.Int32, arg, dim, div=16) for arg in range(4) for dim in range(3)]
    split_params += [param(K.TensorSize, T.Int32, 0, 2), param(K.TensorSize, T.Int32, 1, 2),
                     param(K.GlobalScratch, T.Pointer), param(K.ProfileScratch, T.Pointer)]
    combine_params = [ws(0, partial), ws(lse_offset, lse), param(K.TensorPointer, T.Pointer, 3, div=16)]
    combine_params += [param(K.TensorStride, T.Int32, 3, dim, div=16) for dim in range(3)]
    combine_params += [param(K.TensorSize, T.Int32, 0, 2), const(splits),
                       param(K.GlobalScratch, T.Pointer), param(K.ProfileScratch, T.Pointer)]

    def f(arg, dim, divisor=1):
        return fb.GridFactorT(arg=arg, dim=dim, divisor=divisor)

    def kernel(name, params, grid):
        return fb.KernelT(name=name, numWarps=4, sharedMemBytes=16384, params=params, grid=grid,
                          cubins=[fb.CubinT(arch=90, image=np.frombuffer(b"\x7fELF\x5a", dtype=np.uint8))])

    split_grid = [fb.GridDimT(factors=[f(1, 2, split_len)]), fb.GridDimT(factors=[f(1, 0), f(1, 1)]), fb.GridDimT()]
    combine_grid = [fb.GridDimT(factors=[f(0, 2)]), fb.GridDimT(factors=[f(0, 0), f(0, 1)]), fb.GridDimT()]
    like_q = [fb.DimSourceT(dim=0, arg=0, argDim=0), fb.DimSourceT(dim=2, arg=0, argDim=2)]
    return fb.PayloadT(inputs=[spec(hq, lq), spec(hkv, lkv), spec(hkv, lkv)], outputs=[spec(hq, lq, like_q)],
                       plans=[fb.LaunchPlanT(kernels=[kernel("gqa_decode_split", split_params, split_grid),
                                                      kernel("gqa_decode_combine", combine_params, combine_grid)])],
                       workspaceBytes=lse_offset + lse)


def test_decode_launches_fill_workspace_and_constants():
    plan = LaunchPlan(serialize_payload(decode_payload()))
    assert plan.workspace_bytes == 32 * 15 * 128 * 4 + 32 * 15 * 4
    args = attention_args(1, 32, 8, 1, 8192, 128)
    split, combine = plan.evaluate_all(args, workspace=WORKSPACE)
    assert (split.name, split.grid) == ("gqa_decode_split", (15, 8, 1))
    values = [v for _, v in split.params]
    assert values[4:6] == [WORKSPACE, WORKSPACE + 32 * 15 * 128 * 4]
    assert split.params[-3] == (T.Int32, 8192)  # L_kv
    assert (combine.name, combine.grid) == ("gqa_decode_combine", (1, 32, 1))
    assert [v for _, v in combine.params][:3] == [WORKSPACE, WORKSPACE + 32 * 15 * 128 * 4, args[3].address]
    assert combine.params[-3] == (T.Int32, 15)
    with pytest.raises(LaunchError, match="kernel gqa_decode_split: workspace missing"):
        plan.evaluate(0, args)
    with pytest.raises(LaunchError, match="workspace is not 256-byte aligned"):
        plan.evaluate(1, args, workspace=WORKSPACE + 16)


@pytest.mark.parametrize("shape", [(1, 32, 8, 1, 8192, 128), (1, 32, 1, 1, 4096, 128), (2, 16, 4, 4, 3000, 64),
                                   (1, 8, 2, 16, 10, 64)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_decode_parity_with_cpp(shape, dynamic):
    b, hq, hkv, lq, lkv, d = shape
    data = serialize_payload(decode_payload(b, hq, hkv, lq, lkv, d, split_len=256, dynamic=dynamic))
    seen_ok = seen_refused = 0
    for variant in VARIANTS:
        args = variant_args(variant, shape, F16)
        for workspace in (WORKSPACE, 0, WORKSPACE + 16, WORKSPACE + 256, (1 << 64) - 256):
            for k in (0, 1):
                out = []
                for evaluate in (lambda: LaunchPlan(data).evaluate(k, args, workspace=workspace),
                                 lambda: evaluate_launch_cpp(data, k, args, workspace=workspace, lib=cpp_lib())):
                    try:
                        out.append(evaluate())
                    except LaunchError as e:
                        out.append(str(e))
                py, cpp = out
                assert normalized(py) == normalized(cpp), (variant, workspace, k, py, cpp)
                seen_ok += not isinstance(py, str)
                seen_refused += isinstance(py, str)
    assert seen_ok and seen_refused


def test_workspace_is_ignored_without_one():
    # A payload with no workspace: the address given for it is not used or checked.
    data = serialize_payload(attention_payload())
    py, cpp = both(data, attention_args(), workspace=WORKSPACE + 8)
    assert not isinstance(py, str) and normalized(py) == normalized(cpp)


def _decode_ws_param(p, k=0, i=4):
    return p.plans[0].kernels[k].params[i]


@pytest.mark.parametrize("mutate,message", [
    (lambda p: setattr(p, "workspaceBytes", 0), "plan 0 kernel 0 (gqa_decode_split) param 4: workspace range [0, +"),
    (lambda p: setattr(_decode_ws_param(p), "workspaceOffset", 8),
     "param 4: workspace offset 8 is not a multiple of 16, which the cubin assumes"),
    (lambda p: setattr(_decode_ws_param(p, 1, 1), "workspaceExtent", 1 << 30),
     "kernel 1 (gqa_decode_combine) param 1: workspace range"),
    (lambda p: setattr(_decode_ws_param(p), "type", T.Int64), "param 4: Workspace must be passed as Pointer"),
    (lambda p: setattr(_decode_ws_param(p, 1, 7), "type", T.Int64), "param 7: Int32Constant must be passed as Int32"),
    (lambda p: (setattr(_decode_ws_param(p, 1, 7), "divisibility", 16)), "Int32Constant 15 is not a multiple of 16"),
    (lambda p: setattr(p, "workspaceBytes", 1 << 41), "workspace_bytes 2199023255552 too large"),
    (lambda p: setattr(_decode_ws_param(p), "kind", 9), "param 4: unknown param kind 9"),
])
def test_decode_payload_refusals_match_cpp(mutate, message):
    payload = decode_payload()
    mutate(payload)
    data = serialize_payload(payload)
    with pytest.raises(LaunchError) as e:
        LaunchPlan(data)
    assert message in str(e.value)
    with pytest.raises(LaunchError) as e_cpp:
        evaluate_launch_cpp(data, 0, attention_args(1, 32, 8, 1, 8192, 128), workspace=WORKSPACE, lib=cpp_lib())
    assert str(e_cpp.value) == str(e.value)


# --------------------------------------------------------------------------
# payload constants (weights): Constant params take their device copies' addresses

CONSTANTS = (0x7D00_0000_0000, 0x7D00_0001_0000)  # where init uploaded "wq" and "bias"


def constant_payload() -> fb.PayloadT:
    """attention_payload whose kernel also reads two constants: "bias" (param 4), then "wq" (param 5)."""
    payload = attention_payload()
    payload.constants = [fb.ConstantSpecT(name="wq", dtype=F16, sizes=[64, 64]),
                         fb.ConstantSpecT(name="bias", dtype=F32, sizes=[64])]
    payload.plans[0].kernels[0].params[4:4] = [
        fb.KernelParamT(kind=K.Constant, type=T.Pointer, constant=1, divisibility=16),
        fb.KernelParamT(kind=K.Constant, type=T.Pointer, constant=0, divisibility=16)]
    return payload


def test_constant_params_receive_their_constants_addresses_in_python_and_cpp():
    python, cpp = both(serialize_payload(constant_payload()), attention_args(), constants=CONSTANTS)
    assert normalized(python) == normalized(cpp)
    assert python.params[4:6] == ((T.Pointer, CONSTANTS[1]), (T.Pointer, CONSTANTS[0]))
    assert python.params[:4] == tuple((T.Pointer, a.address) for a in attention_args())


@pytest.mark.parametrize("constants,message", [
    (CONSTANTS[:1], "kernel gqa_attention_fwd param 4: constant 1 missing (1 constants uploaded)"),
    ((), "kernel gqa_attention_fwd param 4: constant 1 missing (0 constants uploaded)"),
    ((CONSTANTS[0] + 8, CONSTANTS[1]),
     "kernel gqa_attention_fwd param 5: address of constant 0 is not a multiple of 16 bytes, which the cubin assumes"),
], ids=["one-missing", "none", "misaligned"])
def test_constants_init_did_not_upload_are_refused_alike(constants, message):
    python, cpp = both(serialize_payload(constant_payload()), attention_args(), constants=constants)
    assert python == cpp == message


def _constant_param(p, i=4):
    return p.plans[0].kernels[0].params[i]


@pytest.mark.parametrize("mutate,message", [
    (lambda p: setattr(_constant_param(p), "constant", 2), "param 4: constant 2 out of range (2 constants)"),
    (lambda p: setattr(_constant_param(p), "type", T.Int64), "param 4: Constant must be passed as Pointer"),
    (lambda p: setattr(_constant_param(p), "divisibility", 512),
     "param 4: constant addresses are 256-byte aligned, not a multiple of 512, which the cubin assumes"),
    (lambda p: setattr(_constant_param(p), "divisibility", 48), "not a multiple of 48"),
    (lambda p: setattr(p.constants[0], "dtype", 9), "constant 0: unknown dtype 9"),
    (lambda p: setattr(p.constants[0], "sizes", [1] * 9), "constant 0: rank 9 exceeds 8"),
    (lambda p: setattr(p.constants[1], "sizes", [-1]), "constant 1: has dynamic sizes"),
    (lambda p: setattr(p.constants[1], "sizes", [-4]), "constant 1: size -4 at dim 0"),
    (lambda p: setattr(p.constants[0], "sizes", [1 << 40, 1 << 30]), "constant 0: tensor byte size overflows"),
    (lambda p: setattr(p.constants[0], "sizes", [1 << 40, 64]), "constant 0: tensor larger than 64 TiB"),
    (lambda p: setattr(p.constants[1], "name", ""), "constant 1: has no name"),
    (lambda p: setattr(p.constants[1], "name", "w\0q"), "constant 1: name contains NUL"),
    (lambda p: setattr(p.constants[1], "name", "wq"), "constant 1: repeats the name 'wq'"),
    (lambda p: setattr(p, "constants", None), "param 4: constant 1 out of range (0 constants)"),
], ids=["index", "type", "divisibility-512", "divisibility-48", "dtype", "rank", "dynamic", "negative", "overflow",
        "too-large", "no-name", "nul", "repeated", "no-constants"])
def test_constant_refusals_match_cpp(mutate, message):
    payload = constant_payload()
    mutate(payload)
    data = serialize_payload(payload)
    with pytest.raises(LaunchError) as e:
        LaunchPlan(data)
    assert message in str(e.value)
    with pytest.raises(LaunchError) as e_cpp:
        evaluate_launch_cpp(data, 0, attention_args(), constants=CONSTANTS, lib=cpp_lib())
    assert str(e_cpp.value) == str(e.value)


def test_a_version_3_payload_evaluates_alike():
    """Version 4 readers take version 3 payloads (no constants) unchanged."""
    import flatbuffers

    payload = attention_payload()
    payload.version = 3
    builder = flatbuffers.Builder(0)
    builder.Finish(payload.Pack(builder), file_identifier=b"CGQA")
    data = bytes(builder.Output())
    python, cpp = both(data, attention_args())
    assert not isinstance(python, str) and normalized(python) == normalized(cpp)
