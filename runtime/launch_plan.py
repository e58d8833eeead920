"""Evaluates a payload's launch records in Python, as the C++ launcher does.

Given a payload and, for each delegate argument (inputs, then outputs), its
dtype, sizes, strides and device address, this module decides which plan
of the payload's dispatch table runs and what cuLaunchKernel gets for each
of its kernels: grid, block, dynamic shared memory and the entry point's
parameter values, after the checks the C++ runtime makes
(runtime/cpp/payload.cpp at init, runtime/cpp/launcher.cpp at execute).
Refusals raise LaunchError with the text the C++ backend logs after
"CudaGqaBackend: ". tests/runtime/test_launch_plan.py holds the two
evaluators to the same answers.

Pure Python: numpy, the standard library and the payload bindings only, so
it runs where neither torch nor a GPU is (runtime/cubin_launcher.py puts it
to work on torch tensors).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from cuda_gqa.backends.serialization import PROGRAMMATIC_LAUNCH_ARCH, deserialize_payload
from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.backends.serialization.dtypes import DTYPE_NAMES, DTYPE_SIZES

__all__ = [
    "ArgInfo",
    "DTYPE_NAMES",
    "DTYPE_SIZES",
    "ImageChoice",
    "KernelLaunch",
    "LaunchError",
    "LaunchPlan",
    "MAX_RANK",
    "compute_grid",
    "evaluate_launch_cpp",
    "launches_as_programmatic_dependent",
    "plans_for_arch",
    "select_image",
    "select_plan_cpp",
]

# Bounds of runtime/cpp/payload.h.
MAX_RANK = 8
MAX_PARAMS = 256
MAX_GRID_FACTORS = 8
MAX_NUM_WARPS = 32
MAX_SHARED_MEM_BYTES = 1 << 20
MAX_WORKSPACE_BYTES = 1 << 40
WORKSPACE_ALIGN = 256  # alignment of the workspace base (cuMemAlloc's)
CONSTANT_ALIGN = 256  # alignment of every constant's device copy (cuMemAlloc's)
GRID_LIMITS = (0x7FFFFFFF, 65535, 65535)

_PARAM_KINDS = range(fb.ParamKind.TensorPointer, fb.ParamKind.Constant + 1)
_PARAM_TYPES = range(fb.ParamType.Pointer, fb.ParamType.Float32 + 1)
_INT_TYPES = (fb.ParamType.Int32, fb.ParamType.Int64)
_U64 = (1 << 64) - 1


class LaunchError(ValueError):
    """A payload or a set of arguments the runtime would refuse; the message says why."""


@dataclass(frozen=True)
class ArgInfo:
    """One delegate argument as a launch sees it.

    dtype: a payload DType value (fb.DType), or -1 for any other element type,
    then named by dtype_label in messages. strides are in elements; address is
    the device address the kernel reads or writes.
    """

    dtype: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    address: int = 0
    dtype_label: Optional[str] = None

    def __post_init__(self):
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "address", int(self.address))
        if len(self.sizes) != len(self.strides):
            raise ValueError(f"{len(self.sizes)} sizes but {len(self.strides)} strides")

    @property
    def rank(self) -> int:
        return len(self.sizes)


@dataclass(frozen=True)
class ImageChoice:
    """The image of a kernel chosen for a device: a cubin of `arch`, or PTX (arch: ptxArch)."""

    arch: int
    is_ptx: bool
    image: bytes


@dataclass(frozen=True)
class KernelLaunch:
    """What cuLaunchKernel gets for one kernel.

    params: one (fb.ParamType, value) per entry-point parameter in order;
    values are ints (pointers, Int32, Int64) or floats (Float32, already
    rounded to float32). A grid of 0 CTAs means there is nothing to launch.
    """

    kernel_index: int
    name: str
    grid: tuple[int, int, int]
    block: int
    shared_mem_bytes: int
    params: tuple[tuple[int, Union[int, float]], ...]
    plan_index: int = 0  # the payload's plan it belongs to

    @property
    def ctas(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def slots(self) -> list[int]:
        """Each parameter's 8-byte slot as the C++ launcher fills it (little-endian,
        int32 and float32 in the low 4 bytes, zero above)."""
        out = []
        for type_, value in self.params:
            if type_ == fb.ParamType.Float32:
                out.append(struct.unpack("<I", struct.pack("<f", value))[0])
            elif type_ == fb.ParamType.Int32:
                out.append(int(value) & 0xFFFFFFFF)
            else:
                out.append(int(value) & _U64)
        return out


# ---------------------------------------------------------------------------
# payload checks (runtime/cpp/payload.cpp: what init refuses)


def _fail(where: str, what: str) -> LaunchError:
    return LaunchError(f"{where}: {what}" if where else what)


def _len(v) -> int:
    return 0 if v is None else len(v)


def _as_bytes(v) -> bytes:
    if v is None:
        return b""
    if isinstance(v, np.ndarray):
        return v.astype(np.uint8, copy=False).tobytes()
    return bytes(bytearray(v))


def _as_str(v) -> str:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", errors="replace")
    return "" if v is None else str(v)


def _f32(x: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.float32(x))


def _check_spec(spec, where: str) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(dtype, sizes, max sizes) of a spec; max sizes equal sizes where static."""
    if spec is None:
        raise _fail(where, "missing tensor spec")
    dtype = int(spec.dtype)
    if dtype not in DTYPE_NAMES:
        raise _fail(where, f"unknown dtype {dtype}")
    if spec.sizes is None:
        raise _fail(where, "missing sizes")
    sizes = tuple(int(s) for s in spec.sizes)
    if len(sizes) > MAX_RANK:
        raise _fail(where, f"rank {len(sizes)} exceeds {MAX_RANK}")
    declared = getattr(spec, "maxSizes", None)  # a StateSpec has none: it is static
    max_sizes = tuple(int(s) for s in declared) if _len(declared) else ()
    if max_sizes and len(max_sizes) != len(sizes):
        raise _fail(where, f"{len(max_sizes)} max_sizes for rank {len(sizes)}")
    nbytes = DTYPE_SIZES[dtype]
    for d, s in enumerate(sizes):
        if s < -1:
            raise _fail(where, f"size {s} at dim {d}")
        if s < 0 and not max_sizes:
            raise _fail(where, f"dynamic sizes need {len(sizes)} max_sizes, got 0")
        bound = max_sizes[d] if max_sizes else s
        if bound < 0 or (s >= 0 and bound != s):
            raise _fail(where, f"max size {bound} at dim {d} of size {s}")
        nbytes *= bound
        if nbytes >= 1 << 63:
            raise _fail(where, "tensor byte size overflows")
    if nbytes > 1 << 46:
        raise _fail(where, "tensor larger than 64 TiB")
    return dtype, sizes, max_sizes or sizes


def _check_size_from(spec, index: int, specs, num_inputs: int, where: str) -> tuple[tuple[int, int, int], ...]:
    """A spec's (dim, arg, arg_dim) sources: dynamic dims only, from an input; every
    dynamic dim of an output has one (its size comes from nowhere else)."""
    sizes = specs[index][1]
    sources = []
    for src in spec.sizeFrom or []:
        dim, arg, arg_dim = int(src.dim), int(src.arg), int(src.argDim)
        if dim >= len(sizes) or sizes[dim] >= 0:
            raise _fail(where, f"size_from names dim {dim}, which is not dynamic")
        if any(dim == d for d, _, _ in sources):
            raise _fail(where, f"size_from names dim {dim} twice")
        if arg >= num_inputs or arg == index:
            raise _fail(where, f"size_from dim {dim}: arg {arg} is not another input")
        if arg_dim >= len(specs[arg][1]):
            raise _fail(where, f"size_from dim {dim}: dim {arg_dim} out of range for arg {arg}")
        if specs[arg][2][arg_dim] > specs[index][2][dim]:
            raise _fail(where, f"size_from dim {dim}: arg {arg} dim {arg_dim} may exceed its max size")
        sources.append((dim, arg, arg_dim))
    if index >= num_inputs:
        for d, s in enumerate(sizes):
            if s < 0 and all(dim != d for dim, _, _ in sources):
                raise _fail(where, f"dynamic dim {d} has no size_from")
    return tuple(sources)


def _check_param(p, specs: Sequence[tuple[int, tuple[int, ...]]], workspace_bytes: int, num_constants: int,
                 where: str) -> None:
    if p is None:
        raise _fail(where, "missing param")
    kind, type_ = int(p.kind), int(p.type)
    if kind not in _PARAM_KINDS:
        raise _fail(where, f"unknown param kind {kind}")
    if type_ not in _PARAM_TYPES:
        raise _fail(where, f"unknown param type {type_}")
    if kind in (fb.ParamKind.TensorPointer, fb.ParamKind.TensorStride, fb.ParamKind.TensorSize):
        if p.arg >= len(specs):
            raise _fail(where, f"arg {p.arg} out of range ({len(specs)} delegate args)")
        if kind == fb.ParamKind.TensorPointer:
            if type_ != fb.ParamType.Pointer:
                raise _fail(where, "TensorPointer must be passed as Pointer")
            return
        if type_ not in _INT_TYPES:
            raise _fail(where, "TensorStride/TensorSize must be Int32 or Int64")
        rank = len(specs[p.arg][1])
        if p.dim >= rank:
            raise _fail(where, f"dim {p.dim} out of range for arg {p.arg} of rank {rank}")
    elif kind == fb.ParamKind.Float32Constant:
        if type_ != fb.ParamType.Float32:
            raise _fail(where, "Float32Constant must be passed as Float32")
        if not math.isfinite(_f32(p.f32Value)):
            raise _fail(where, "Float32Constant is not finite")
        if p.divisibility > 1:
            raise _fail(where, "divisibility on a float constant")
    elif kind == fb.ParamKind.Workspace:
        if type_ != fb.ParamType.Pointer:
            raise _fail(where, "Workspace must be passed as Pointer")
        offset, extent = int(p.workspaceOffset), int(p.workspaceExtent)
        if offset >= workspace_bytes or extent == 0 or extent > workspace_bytes - offset:
            raise _fail(where, f"workspace range [{offset}, +{extent}) outside the {workspace_bytes}-byte workspace")
        if p.divisibility > 1 and (p.divisibility > WORKSPACE_ALIGN or offset % p.divisibility):
            raise _fail(where, f"workspace offset {offset} is not a multiple of {p.divisibility}, "
                               "which the cubin assumes")
    elif kind == fb.ParamKind.Int32Constant:
        if type_ != fb.ParamType.Int32:
            raise _fail(where, "Int32Constant must be passed as Int32")
        if p.divisibility > 1 and int(p.i32Value) % p.divisibility:
            raise _fail(where, f"Int32Constant {p.i32Value} is not a multiple of {p.divisibility}, "
                               "which the cubin assumes")
    elif kind == fb.ParamKind.Constant:
        _check_constant_param(p, type_, num_constants, where)
    elif type_ != fb.ParamType.Pointer:
        raise _fail(where, "scratch must be passed as Pointer")


def _check_constant_param(p, type_: int, num_constants: int, where: str) -> None:
    if type_ != fb.ParamType.Pointer:
        raise _fail(where, "Constant must be passed as Pointer")
    if p.constant >= num_constants:
        raise _fail(where, f"constant {p.constant} out of range ({num_constants} constants)")
    # Device copies are CONSTANT_ALIGN-aligned and nothing more is promised.
    if p.divisibility > 1 and CONSTANT_ALIGN % p.divisibility:
        raise _fail(where, f"constant addresses are {CONSTANT_ALIGN}-byte aligned, not a multiple of "
                           f"{p.divisibility}, which the cubin assumes")


def _check_named_buffers(specs, what: str) -> list[tuple[str, int, tuple[int, ...]]]:
    """(name, dtype, sizes) of the payload's states or constants: static sizes, a name
    unique among those of its kind."""
    out = []
    for i, spec in enumerate(specs or []):
        where = f"{what} {i}"
        if spec is not None and _len(spec.sizes) and any(int(s) == -1 for s in spec.sizes):
            raise _fail(where, "has dynamic sizes")
        dtype, sizes, _ = _check_spec(spec, where)
        name = _as_str(spec.name) if spec.name else ""
        if not name:
            raise _fail(where, "has no name")
        if "\0" in name:
            raise _fail(where, "name contains NUL")
        if any(name == other for other, _, _ in out):
            raise _fail(where, f"repeats the name '{name}'")
        out.append((name, dtype, sizes))
    return out


def _pow2_or_zero(v: int) -> bool:
    return v & (v - 1) == 0


def _check_image(image, key, where: str) -> bool:
    """Whether an image is there, inline or as a named data key (not both)."""
    inline, named = _len(image) > 0, len(_as_str(key)) > 0
    if inline and named:
        raise _fail(where, "has both inline bytes and a named data key")
    if named and "\0" in _as_str(key):
        raise _fail(where, "named data key contains NUL")
    return inline or named


def _check_kernel(k, specs, workspace_bytes: int, num_constants: int, where: str) -> None:
    if k is None:
        raise _fail(where, "missing kernel")
    name = _as_str(k.name)
    if not name:
        raise _fail(where, "missing entry-point name")
    if "\0" in name:
        raise _fail(where, "entry-point name contains NUL")
    where = f"{where} ({name})"
    seen = set()
    for i, c in enumerate(k.cubins or []):
        cw = f"{where} cubin {i}"
        if c is None:
            raise _fail(cw, "missing")
        if not 10 <= c.arch <= 1000:
            raise _fail(cw, f"implausible arch {c.arch}")
        if not _check_image(c.image, c.imageKey, cw):
            raise _fail(cw, f"empty image for sm_{c.arch}")
        if c.arch in seen:
            raise _fail(cw, f"duplicate arch sm_{c.arch}")
        seen.add(c.arch)
    has_ptx = _check_image(k.ptx, k.ptxKey, f"{where} PTX")
    if has_ptx and not 10 <= k.ptxArch <= 1000:
        raise _fail(where, f"PTX with implausible ptx_arch {k.ptxArch}")
    if not seen and not has_ptx:
        raise _fail(where, "no cubin and no PTX")
    if not 1 <= k.numWarps <= MAX_NUM_WARPS:
        raise _fail(where, f"num_warps {k.numWarps} outside 1..{MAX_NUM_WARPS}")
    if k.sharedMemBytes > MAX_SHARED_MEM_BYTES:
        raise _fail(where, f"shared_mem_bytes {k.sharedMemBytes} too large")
    if not (_pow2_or_zero(k.globalScratchAlign) and _pow2_or_zero(k.profileScratchAlign)):
        raise _fail(where, "scratch alignment is not a power of two")
    if not k.params:
        raise _fail(where, "no params")
    if len(k.params) > MAX_PARAMS:
        raise _fail(where, f"{len(k.params)} params (max {MAX_PARAMS})")
    for i, p in enumerate(k.params):
        _check_param(p, specs, workspace_bytes, num_constants, f"{where} param {i}")
    if k.grid is None or len(k.grid) != 3:
        raise _fail(where, f"grid has {_len(k.grid)} dims, expected 3")
    for g, gd in enumerate(k.grid):
        gw = f"{where} grid dim {g}"
        if gd is None:
            raise _fail(gw, "missing")
        factors = gd.factors or []
        if len(factors) > MAX_GRID_FACTORS:
            raise _fail(gw, "too many factors")
        for f in factors:
            if f.arg >= len(specs):
                raise _fail(gw, f"factor arg {f.arg} out of range")
            if f.dim >= len(specs[f.arg][1]):
                raise _fail(gw, f"factor dim {f.dim} out of range for arg {f.arg}")
            if f.divisor == 0:
                raise _fail(gw, "factor divisor is 0")
        if gd.multiplier == 0:
            raise _fail(gw, "multiplier is 0")


def _check_workspace_bytes(value, where: str) -> int:
    value = int(value or 0)
    if value > MAX_WORKSPACE_BYTES:
        raise _fail(where, f"workspace_bytes {value} too large")
    return value


def _check_plan(plan, specs, workspace_bytes: int, num_constants: int, where: str) -> None:
    if plan is None:
        raise _fail(where, "missing")
    for arch in plan.archs if _len(plan.archs) else []:
        if not 10 <= arch <= 1000:
            raise _fail(where, f"implausible arch {arch}")
    for r in plan.when or []:
        if r.arg >= len(specs):
            raise _fail(where, f"range arg {r.arg} out of range")
        if r.dim >= len(specs[r.arg][1]):
            raise _fail(where, f"range dim {r.dim} out of range for arg {r.arg}")
        if not 0 <= r.min <= r.max:
            raise _fail(where, f"range [{r.min}, {r.max}] of arg {r.arg} dim {r.dim} is empty")
    if not plan.kernels:
        raise _fail(where, "no kernels")
    for i, k in enumerate(plan.kernels):
        _check_kernel(k, specs, workspace_bytes, num_constants, f"{where} kernel {i}")
    for arch in plan.archs if _len(plan.archs) else []:
        # A plan listing archs serves them from cubins only: no PTX or older-cubin fallback.
        for k in plan.kernels:
            if all(c.arch != arch for c in k.cubins or []):
                raise _fail(where, f"kernel {_as_str(k.name)} has no cubin for its arch sm_{arch}")


def _check_position_bound(b, specs, num_inputs: int, where: str):
    """A Payload.position_bounds entry: an int32/int64 input, a bound >= 0, and for a start
    position an input dimension counting its rows."""
    if b.arg >= num_inputs:
        raise _fail(where, f"names input {b.arg} of {num_inputs}")
    dtype = specs[b.arg][0]
    if dtype not in (fb.DType.Int32, fb.DType.Int64):
        raise _fail(where, f"names input {b.arg} of dtype {DTYPE_NAMES[dtype]}, not int32 or int64")
    if b.bound < 0:
        raise _fail(where, "has a negative bound")
    if b.index not in (fb.BoundedIndex.CachePosition, fb.BoundedIndex.TokenId):
        raise _fail(where, f"bounds indices of unknown kind {b.index}")
    if b.index == fb.BoundedIndex.TokenId and b.startOnly:
        raise _fail(where, "bounds token ids as a start position")
    if b.startOnly and (b.rowsArg >= num_inputs or b.rowsDim >= len(specs[b.rowsArg][1])):
        raise _fail(where, f"counts rows along input {b.rowsArg} dim {b.rowsDim}, which does not exist")
    return b


def plans_for_arch(plans, device_cc: Optional[int]) -> list[int]:
    """Indices of the plans init keeps for compute capability device_cc: those
    listing it if any plan does, else those listing no arch (None: the latter)."""
    listing = [i for i, p in enumerate(plans) if device_cc is not None and _len(p.archs) and device_cc in list(p.archs)]
    return listing or [i for i, p in enumerate(plans) if not _len(p.archs)]


# ---------------------------------------------------------------------------
# pure pieces of the launcher


def compute_grid(kernel, size_of: Callable[[int, int], int]) -> tuple[int, int, int]:
    """Each grid dim: its multiplier times the product over its factors of
    ceil_div(size_of(arg, dim), divisor); LaunchError("grid dim g exceeds the
    hardware limit") beyond the hardware limits."""
    grid = []
    for g, gd in enumerate(kernel.grid):
        limit = GRID_LIMITS[g]
        extent = int(gd.multiplier)
        if extent > limit:
            raise LaunchError(f"grid dim {g} exceeds the hardware limit")
        for f in gd.factors or []:
            n = -(-int(size_of(f.arg, f.dim)) // f.divisor)
            if n != 0 and extent > limit // n:
                raise LaunchError(f"grid dim {g} exceeds the hardware limit")
            extent *= n
        if extent > limit:
            raise LaunchError(f"grid dim {g} exceeds the hardware limit")
        grid.append(extent)
    return tuple(grid)


def _image_bytes(image, key, what: str, named_data: Optional[Mapping[str, bytes]]) -> bytes:
    """Inline image bytes, or those `key` names in the program's named data."""
    key = _as_str(key)
    if not key:
        return _as_bytes(image)
    if named_data is None:
        raise LaunchError(f"its {what}, named data '{key}', cannot be read: no named data was given")
    if key not in named_data:
        raise LaunchError(f"its {what}, named data '{key}', is missing from the program")
    data = bytes(named_data[key])
    if not data:
        raise LaunchError(f"its {what}, named data '{key}', is empty")
    return data


def select_image(kernel, device_cc: int, named_data: Optional[Mapping[str, bytes]] = None) -> ImageChoice:
    """The image of `kernel` for compute capability `device_cc` (major*10+minor),
    as runtime/cpp/kernel_module.cpp picks it: the exact cubin, else the highest
    cubin of the same major with a lower minor, else the PTX if device_cc >=
    ptxArch; else LaunchError listing what the payload has. Images stored by
    key are read from `named_data` (key -> bytes, the program's named data)."""
    best = None
    for c in kernel.cubins or []:
        if c.arch == device_cc:
            best = c
            break
        if c.arch // 10 == device_cc // 10 and c.arch % 10 <= device_cc % 10 and (
                best is None or c.arch > best.arch):
            best = c
    if best is not None:
        return ImageChoice(arch=int(best.arch), is_ptx=False,
                           image=_image_bytes(best.image, best.imageKey, f"sm_{best.arch} cubin", named_data))
    has_ptx = _len(kernel.ptx) > 0 or bool(_as_str(kernel.ptxKey))
    if has_ptx and device_cc >= kernel.ptxArch:
        return ImageChoice(arch=int(kernel.ptxArch), is_ptx=True,
                           image=_image_bytes(kernel.ptx, kernel.ptxKey, "PTX", named_data))
    has = ", ".join(f"sm_{c.arch}" for c in kernel.cubins or []) or "no cubins"
    ptx = f"PTX needs >= sm_{kernel.ptxArch}" if has_ptx else "no PTX"
    raise LaunchError(f"no cubin for sm_{device_cc} in this payload (has {has}; {ptx})")


def launches_as_programmatic_dependent(kernel, index: int, image: ImageChoice, device_cc: int) -> bool:
    """Whether kernel `index` of a plan may be launched as a programmatic dependent of the
    kernel before it (payload.fbs, Kernel.waits_for_previous): it says it waits, it is not
    the first, and both the device and the image chosen for it (a cubin's arch, or the PTX's
    ptxArch) are PROGRAMMATIC_LAUNCH_ARCH or later; an older image has no griddepcontrol."""
    return (bool(kernel.waitsForPrevious) and index > 0 and device_cc >= PROGRAMMATIC_LAUNCH_ARCH
            and image.arch >= PROGRAMMATIC_LAUNCH_ARCH)


# ---------------------------------------------------------------------------


class LaunchPlan:
    """A checked payload, ready to evaluate launches.

    Construction refuses what the C++ runtime's parse_payload refuses (same
    messages; the schema version is checked only when given bytes, by
    deserialize_payload) and keeps the dispatch table's plans for the device
    (plans_for_arch). select() picks the plan for a call as execute does;
    evaluate() then runs, for one kernel of it, the checks of the backend's
    init (scratch sized from the grid at the specs' max sizes) and execute
    (argument count, each argument against its spec, parameters, grid).
    """

    def __init__(self, payload: Union[fb.PayloadT, bytes, bytearray, memoryview], device_cc: Optional[int] = None,
                 named_data: Optional[Mapping[str, bytes]] = None):
        """device_cc: the GPU's compute capability, which picks the plans kept
        (None: those listing no arch). named_data: the program's named data
        (key -> bytes), where payloads exported through preprocess keep their
        cubins and PTX."""
        self.named_data = named_data
        if isinstance(payload, (bytes, bytearray, memoryview)):
            try:
                payload = deserialize_payload(bytes(payload))
            except ValueError as e:
                raise LaunchError(str(e)) from e
        self.payload = payload
        inputs = [_check_spec(s, f"input {i}") for i, s in enumerate(payload.inputs or [])]
        if not payload.outputs:
            raise LaunchError("payload has no outputs")
        outputs = [_check_spec(s, f"output {i}") for i, s in enumerate(payload.outputs)]
        self.num_inputs = len(inputs)
        self.num_outputs = len(outputs)
        # Payload.states: (name, dtype, sizes) of the device buffers the
        # delegate owns; launch arguments after the outputs.
        self.states = _check_named_buffers(payload.states, "state")
        # Payload.constants: (name, dtype, sizes) of the read-only tensors
        # Constant params address; their bytes are the named data `name`.
        self.constants = _check_named_buffers(payload.constants, "constant")
        # (dtype, sizes, max sizes) per launch arg (inputs, outputs, states), sizes -1 where dynamic.
        self.specs: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = (
            inputs + outputs + [(d, s, s) for _, d, s in self.states])
        if len(self.specs) > 256:
            raise LaunchError("more than 256 delegate arguments")
        all_specs = list(payload.inputs or []) + list(payload.outputs)
        self.size_from = [_check_size_from(spec, i, self.specs, self.num_inputs, self.arg_name(i))
                          for i, spec in enumerate(all_specs)] + [[] for _ in self.states]
        self.workspace_bytes = _check_workspace_bytes(payload.workspaceBytes, "")
        if not payload.plans:
            raise LaunchError("payload has no launch plans")
        for i, plan in enumerate(payload.plans):
            _check_plan(plan, self.specs, self.workspace_bytes, len(self.constants), f"plan {i}")
        # Payload.position_bounds, checked as parse_payload does (after the plans).
        self.position_bounds = [_check_position_bound(b, self.specs, self.num_inputs, f"position bound {i}")
                                for i, b in enumerate(payload.positionBounds or [])]
        # The plans kept for this device, as (index in the payload, plan).
        self.plan_indices = plans_for_arch(payload.plans, device_cc)
        if not self.plan_indices:
            raise LaunchError(f"no launch plan for sm_{device_cc} in this payload (its plans list archs "
                              f"{sorted({int(a) for p in payload.plans if _len(p.archs) for a in p.archs})})")
        self.plans = [payload.plans[i] for i in self.plan_indices]

    @property
    def num_args(self) -> int:
        """Launch arguments: inputs, outputs, then states."""
        return len(self.specs)

    def arg_name(self, index: int) -> str:
        if index < self.num_inputs:
            return f"input {index}"
        if index < self.num_inputs + self.num_outputs:
            return f"output {index - self.num_inputs}"
        return f"state {index - self.num_inputs - self.num_outputs}"

    def kernels(self, p: int) -> list:
        """Kernels of kept plan p, in launch order."""
        return list(self.plans[p].kernels)

    def names(self, p: int) -> list[str]:
        return [_as_str(k.name) for k in self.plans[p].kernels]

    # -- init-time ---------------------------------------------------------

    def needs_scratch(self, p: int, k: int) -> bool:
        kernel = self.plans[p].kernels[k]
        return kernel.globalScratchBytes > 0 or kernel.profileScratchBytes > 0

    def bounded_grid_ctas(self, p: int, k: int) -> int:
        """CTAs of kernel k of plan p at the specs' max sizes: the most any call launches
        (grids grow with sizes); scratch is sized from it."""
        grid = compute_grid(self.plans[p].kernels[k], lambda arg, dim: self.specs[arg][2][dim])
        return grid[0] * grid[1] * grid[2]

    def uses_workspace(self, p: int, k: int) -> bool:
        return any(int(q.kind) == fb.ParamKind.Workspace for q in self.plans[p].kernels[k].params)

    def scratch_ctas(self, p: int, k: int) -> int:
        """CTAs the scratch of kernel k of plan p has room for: 0 when it needs none."""
        return self.bounded_grid_ctas(p, k) if self.needs_scratch(p, k) else 0

    def select_image(self, p: int, k: int, device_cc: int) -> ImageChoice:
        try:
            return select_image(self.plans[p].kernels[k], device_cc, self.named_data)
        except LaunchError as e:
            raise LaunchError(f"kernel {self.names(p)[k]}: {e}") from None

    # -- execute-time ------------------------------------------------------

    def output_sizes(self, index: int, inputs: Sequence[ArgInfo]) -> tuple[int, ...]:
        """Sizes of output `index` for these inputs: the spec's, dynamic dims from their sources."""
        arg = self.num_inputs + index
        sizes = list(self.specs[arg][1])
        for dim, src, src_dim in self.size_from[arg]:
            if src < len(inputs) and src_dim < inputs[src].rank:
                sizes[dim] = inputs[src].sizes[src_dim]
        return tuple(sizes)

    def check_args(self, args: Sequence[ArgInfo]) -> None:
        """The argument count, then each argument against its spec."""
        if len(args) != self.num_args:
            raise LaunchError(f"{len(args)} delegate args, the payload expects {self.num_args}")
        for i, a in enumerate(args):
            self._check_arg(i, a, args)

    def check_inputs(self, inputs: Sequence[ArgInfo]) -> None:
        """The inputs alone against their specs (their size_from sources are inputs)."""
        if len(inputs) != self.num_inputs:
            raise LaunchError(f"{len(inputs)} inputs, the payload expects {self.num_inputs}")
        for i, a in enumerate(inputs):
            self._check_arg(i, a, inputs)

    def _check_arg(self, index: int, a: ArgInfo, args: Sequence[ArgInfo]) -> None:
        name = self.arg_name(index)
        dtype, sizes, bounds = self.specs[index]
        if a.dtype != dtype:
            label = DTYPE_NAMES.get(a.dtype) or a.dtype_label or f"code {a.dtype}"
            raise LaunchError(f"{name} has dtype {label}, the kernels were compiled for {DTYPE_NAMES[dtype]}")
        if a.rank != len(sizes):
            raise LaunchError(f"{name} has rank {a.rank}, expected {len(sizes)}")
        for d, (want, got) in enumerate(zip(sizes, a.sizes)):
            if got < 0 or (want >= 0 and got != want):
                expected = str(want) if want >= 0 else "a size >= 0"
                raise LaunchError(f"{name} has size {got} at dim {d}, expected {expected}")
            if got > bounds[d]:
                raise LaunchError(f"{name} has size {got} at dim {d}, above its bound {bounds[d]}")
        for dim, src, src_dim in self.size_from[index]:
            want = args[src].sizes[src_dim] if src_dim < args[src].rank else -1
            if a.sizes[dim] != want:
                raise LaunchError(f"{name} has size {a.sizes[dim]} at dim {dim}, expected {self.arg_name(src)}'s "
                                  f"size {want} at dim {src_dim}")
        if a.rank > 0 and a.sizes[-1] > 1 and a.strides[-1] != 1:
            raise LaunchError(f"{name}: last dimension has stride {a.strides[-1]}, expected 1")

    def check_positions(self, args: Sequence[ArgInfo], values: Mapping[int, Sequence[int]]) -> None:
        """Execute's check of Payload.position_bounds: values[i] holds input i's elements (flat)
        for the inputs whose values the caller can read (host memory); the others are skipped,
        as the C++ runtime skips device-resident inputs. LaunchError names the first position
        outside its cache."""
        for b in self.position_bounds:
            held = values.get(b.arg)
            if held is None or len(held) == 0:
                continue
            cache = f" outside the cache [0, {b.bound})"
            if b.startOnly:
                start, rows = int(held[0]), args[b.rowsArg].sizes[b.rowsDim]
                if start < 0 or start + rows > b.bound:
                    raise LaunchError(f"input {b.arg} holds start position {start} of {rows} rows,{cache}")
                continue
            for p in held:
                if not 0 <= int(p) < b.bound:
                    if b.index == fb.BoundedIndex.TokenId:
                        raise LaunchError(f"input {b.arg} holds token id {int(p)} outside the embedding table's "
                                          f"rows [0, {b.bound})")
                    raise LaunchError(f"input {b.arg} holds position {int(p)}{cache}")

    def select(self, args: Sequence[ArgInfo]) -> int:
        """The kept plan (index into self.plans) that runs these checked args: the first
        whose ranges hold and whose cubins' divisibility assumptions they meet; else
        LaunchError naming the assumption (when a plan's ranges held) or the size."""
        range_miss = assumption = None
        for p, plan in enumerate(self.plans):
            miss = self._range_miss(plan, args)
            if miss is not None:
                range_miss = range_miss or miss
                continue
            refusal = self._assumption_refusal(p, args)
            if refusal is None:
                return p
            assumption = assumption or refusal
        raise LaunchError(assumption or f"no launch plan takes these sizes: {range_miss}")

    def _range_miss(self, plan, args: Sequence[ArgInfo]) -> Optional[str]:
        """None when every range of the plan holds for args, else the first that does not."""
        for r in plan.when or []:
            size = args[r.arg].sizes[r.dim]
            if not r.min <= size <= r.max:
                return f"{self.arg_name(r.arg)} has size {size} at dim {r.dim}, outside [{r.min}, {r.max}]"
        return None

    def _assumption_refusal(self, p: int, args: Sequence[ArgInfo]) -> Optional[str]:
        """Why kernel params of plan p cannot take these args (divisibility), or None."""
        for k, kernel in enumerate(self.plans[p].kernels):
            name = _as_str(kernel.name)
            for i, q in enumerate(kernel.params):
                refusal = _divisibility_refusal(q, args, f"kernel {name} param {i}: ")
                if refusal is not None:
                    return refusal
        return None

    def evaluate(self, k: int, args: Sequence[ArgInfo], *, global_scratch: int = 0,
                 profile_scratch: int = 0, workspace: int = 0, constants: Sequence[int] = (),
                 check_args: bool = True, plan: Optional[int] = None) -> KernelLaunch:
        """Launch of kernel k of the plan select(args) picks (or kept plan `plan`) over
        `args` (inputs then outputs), with the scratch buffers at the given addresses
        (ignored for a kernel that needs none), the delegate's workspace at
        `workspace` (ignored when the payload has none) and the device copies of the
        payload's constants at `constants` (one address each, in order)."""
        if check_args:
            self.check_args(args)
        p = self.select(args) if plan is None else plan
        kernels = self.plans[p].kernels
        if k >= len(kernels):
            raise LaunchError(f"kernel {k} out of range ({len(kernels)} kernels)")
        kernel = kernels[k]
        name = _as_str(kernel.name)
        scratch_ctas = 0
        if self.needs_scratch(p, k):
            scratch_ctas = self.bounded_grid_ctas(p, k)
            if scratch_ctas == 0:  # nothing would be allocated
                global_scratch = profile_scratch = 0
        if kernel.globalScratchBytes == 0:
            global_scratch = 0
        if kernel.profileScratchBytes == 0:
            profile_scratch = 0
        if ((kernel.globalScratchBytes > 0 and not global_scratch) or
                (kernel.profileScratchBytes > 0 and not profile_scratch)):
            raise LaunchError(f"kernel {name}: scratch buffer missing")
        workspace = int(workspace) & _U64 if self.workspace_bytes else 0
        if not workspace and self.uses_workspace(p, k):
            raise LaunchError(f"kernel {name}: workspace missing")
        if workspace % WORKSPACE_ALIGN:
            raise LaunchError(f"kernel {name}: workspace is not {WORKSPACE_ALIGN}-byte aligned")
        constants = [int(c) & _U64 for c in constants]
        _check_constant_addresses(kernel, name, constants)

        params = []
        for i, q in enumerate(kernel.params):
            where = f"kernel {name} param {i}: "
            kind, type_ = int(q.kind), int(q.type)
            refusal = _divisibility_refusal(q, args, where)
            if refusal is not None:
                raise LaunchError(refusal)
            if kind == fb.ParamKind.TensorPointer:
                params.append((type_, args[q.arg].address & _U64))
                continue
            if kind == fb.ParamKind.Float32Constant:
                params.append((type_, _f32(q.f32Value)))
                continue
            if kind == fb.ParamKind.GlobalScratch:
                params.append((type_, int(global_scratch) & _U64))
                continue
            if kind == fb.ParamKind.ProfileScratch:
                params.append((type_, int(profile_scratch) & _U64))
                continue
            if kind == fb.ParamKind.Workspace:
                params.append((type_, (workspace + int(q.workspaceOffset)) & _U64))
                continue
            if kind == fb.ParamKind.Int32Constant:
                params.append((type_, int(q.i32Value)))
                continue
            if kind == fb.ParamKind.Constant:
                params.append((type_, constants[q.constant]))
                continue
            # TensorStride / TensorSize
            a = args[q.arg]
            value = a.strides[q.dim] if kind == fb.ParamKind.TensorStride else a.sizes[q.dim]
            if type_ == fb.ParamType.Int32 and not -(1 << 31) <= value < 1 << 31:
                raise LaunchError(f"{where}{value} does not fit in int32")
            params.append((type_, value))

        def size_of(arg: int, dim: int) -> int:
            if arg >= len(args) or dim >= min(args[arg].rank, MAX_RANK):
                return 0
            return args[arg].sizes[dim]

        try:
            grid = compute_grid(kernel, size_of)
        except LaunchError as e:
            raise LaunchError(f"kernel {name}: {e}") from None
        ctas = grid[0] * grid[1] * grid[2]
        if ctas and self.needs_scratch(p, k) and ctas > scratch_ctas:
            raise LaunchError(f"kernel {name}: grid of {ctas} CTAs exceeds the scratch allocated "
                              f"for {scratch_ctas}")
        return KernelLaunch(kernel_index=k, name=name, grid=grid, block=32 * kernel.numWarps,
                            shared_mem_bytes=int(kernel.sharedMemBytes), params=tuple(params),
                            plan_index=self.plan_indices[p])

    def evaluate_all(self, args: Sequence[ArgInfo], scratch: Optional[Sequence[Sequence[tuple[int, int]]]] = None,
                     workspace: int = 0, constants: Sequence[int] = ()) -> list[KernelLaunch]:
        """Every launch of the plan select(args) picks, in order; scratch: per kept plan,
        (global, profile) address per kernel; workspace: the delegate's, shared by all;
        constants: the device address of each payload constant."""
        self.check_args(args)
        p = self.select(args)
        kernels = self.plans[p].kernels
        addresses = list(scratch[p]) if scratch is not None else [(0, 0)] * len(kernels)
        return [self.evaluate(k, args, global_scratch=g, profile_scratch=q, workspace=workspace,
                              constants=constants, check_args=False, plan=p)
                for k, (g, q) in enumerate(addresses)]


def _check_constant_addresses(kernel, name: str, constants: Sequence[int]) -> None:
    """Init's check (check_scratch): each Constant param's constant has an address, a
    multiple of the divisibility its cubin assumes."""
    for i, q in enumerate(kernel.params):
        if int(q.kind) != fb.ParamKind.Constant:
            continue
        where = f"kernel {name} param {i}: "
        if q.constant >= len(constants):
            raise LaunchError(f"{where}constant {q.constant} missing ({len(constants)} constants uploaded)")
        if q.divisibility > 1 and constants[q.constant] % q.divisibility:
            raise LaunchError(f"{where}address of constant {q.constant} is not a multiple of {q.divisibility} "
                              "bytes, which the cubin assumes")


def _divisibility_refusal(q, args: Sequence[ArgInfo], where: str) -> Optional[str]:
    """Why a pointer, stride or size param breaks the divisibility its cubin assumes, or None."""
    kind = int(q.kind)
    if kind not in (fb.ParamKind.TensorPointer, fb.ParamKind.TensorStride, fb.ParamKind.TensorSize):
        return None
    if q.arg >= len(args):
        return f"{where}arg {q.arg} out of range"
    a = args[q.arg]
    if kind == fb.ParamKind.TensorPointer:
        ptr = a.address & _U64
        if q.divisibility > 1 and ptr % q.divisibility:
            return (f"{where}address of arg {q.arg} is not a multiple of {q.divisibility} bytes, "
                    "which the cubin assumes")
        return None
    if q.dim >= min(a.rank, MAX_RANK):
        return f"{where}dim {q.dim} out of range for arg {q.arg} of rank {a.rank}"
    is_stride = kind == fb.ParamKind.TensorStride
    value = a.strides[q.dim] if is_stride else a.sizes[q.dim]
    if q.divisibility > 1 and value % q.divisibility:
        return (f"{where}{'stride' if is_stride else 'size'} {value} of arg {q.arg} dim {q.dim} is not a "
                f"multiple of {q.divisibility}, which the cubin assumes")
    return None


# ---------------------------------------------------------------------------
# the C++ evaluator, for parity tests


def _cpp_args(args: Sequence[ArgInfo]):
    """The argument arrays the C API takes."""
    import ctypes

    n = max(len(args), 1)
    dtypes = (ctypes.c_int32 * n)(*[a.dtype for a in args])
    labels = (ctypes.c_char_p * n)(*[(a.dtype_label or "").encode() or None for a in args])
    ranks = (ctypes.c_uint32 * n)(*[a.rank for a in args])
    sizes = (ctypes.c_int64 * (n * MAX_RANK))()
    strides = (ctypes.c_int64 * (n * MAX_RANK))()
    for i, a in enumerate(args):
        for d in range(min(a.rank, MAX_RANK)):
            sizes[i * MAX_RANK + d] = a.sizes[d]
            strides[i * MAX_RANK + d] = a.strides[d]
    addresses = (ctypes.c_uint64 * n)(*[a.address & _U64 for a in args])
    return dtypes, labels, ranks, sizes, strides, addresses


def _load_lib(lib):
    if lib is None:
        from .backend_library import load_backend_library

        lib = load_backend_library()
    return lib


def select_plan_cpp(data: bytes, args: Sequence[ArgInfo], *, device_cc: int = 0, lib=None) -> tuple[int, int]:
    """(index of the payload's plan, its kernel count) that libcuda_gqa_backend.so's
    execute runs for these args on device_cc (cuda_gqa_select_plan); refusals
    raise LaunchError with the C++ message."""
    import ctypes

    lib = _load_lib(lib)
    fn = lib.cuda_gqa_select_plan
    if fn.restype is not ctypes.c_int or not fn.argtypes:
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_size_t,
                       ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_char_p),
                       ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_int64),
                       ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_uint64),
                       ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t),
                       ctypes.c_char_p, ctypes.c_size_t]
    plan_index, num_kernels = ctypes.c_size_t(0), ctypes.c_size_t(0)
    message = ctypes.create_string_buffer(1024)
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    rc = fn(buf, len(data), device_cc, len(args), *_cpp_args(args), ctypes.byref(plan_index),
            ctypes.byref(num_kernels), message, len(message))
    if rc != 0:
        raise LaunchError(message.value.decode(errors="replace"))
    return plan_index.value, num_kernels.value


_EVAL_CODES = {1: "bad payload", 2: "refused", 3: "internal"}


def evaluate_launch_cpp(data: bytes, k: int, args: Sequence[ArgInfo], *, global_scratch: int = 0,
                        profile_scratch: int = 0, workspace: int = 0, constants: Sequence[int] = (),
                        device_cc: int = 0, lib=None) -> KernelLaunch:
    """Kernel k's launch, of the plan execute picks for these args on device_cc, as
    libcuda_gqa_backend.so evaluates it (cuda_gqa_evaluate_launch; no GPU needed).
    Params come back as (fb.ParamType, value) decoded from the raw slots;
    refusals raise LaunchError with the C++ message."""
    import ctypes

    lib = _load_lib(lib)
    fn = lib.cuda_gqa_evaluate_launch
    if fn.restype is not ctypes.c_int or not fn.argtypes:
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t,
                       ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_char_p),
                       ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_int64),
                       ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_uint64),
                       ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64),
                       ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint32),
                       ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t),
                       ctypes.c_char_p, ctypes.c_size_t]
    launch = (ctypes.c_uint32 * 5)()
    values = (ctypes.c_uint64 * MAX_PARAMS)()
    num_params = ctypes.c_size_t(0)
    message = ctypes.create_string_buffer(1024)
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    constant_addresses = (ctypes.c_uint64 * max(len(constants), 1))(*[int(c) & _U64 for c in constants])
    rc = fn(buf, len(data), device_cc, k, len(args), *_cpp_args(args),
            global_scratch & _U64, profile_scratch & _U64, workspace & _U64, constant_addresses, len(constants),
            launch, values, MAX_PARAMS,
            ctypes.byref(num_params), message, len(message))
    text = message.value.decode(errors="replace")
    if rc != 0:
        raise LaunchError(text)
    plan_index = select_plan_cpp(data, args, device_cc=device_cc, lib=lib)[0]
    kernel = deserialize_payload(bytes(data)).plans[plan_index].kernels[k]
    params = []
    for i, p in enumerate(kernel.params[:num_params.value]):
        raw = values[i]
        if p.type == fb.ParamType.Float32:
            value = struct.unpack("<f", struct.pack("<I", raw & 0xFFFFFFFF))[0]
            if raw >> 32:
                raise AssertionError(f"float slot {i} has high bits set: {raw:#x}")
        elif p.type == fb.ParamType.Int32:
            value = struct.unpack("<i", struct.pack("<I", raw & 0xFFFFFFFF))[0]
            if raw >> 32:
                raise AssertionError(f"int32 slot {i} has high bits set: {raw:#x}")
        elif p.type == fb.ParamType.Int64:
            value = struct.unpack("<q", struct.pack("<Q", raw))[0]
        else:
            value = raw
        params.append((int(p.type), value))
    return KernelLaunch(kernel_index=k, name=_as_str(kernel.name), grid=tuple(launch[:3]), block=launch[3],
                        shared_mem_bytes=launch[4], params=tuple(params), plan_index=plan_index)
