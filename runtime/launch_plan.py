"""Evaluates a payload's launch records in Python, as the C++ launcher does.

Given a payload and, for each delegate argument (inputs, then outputs), its
dtype, sizes, strides and device address, this module decides what
cuLaunchKernel gets for each kernel: grid, block, dynamic shared memory and
the entry point's parameter values, after the checks the C++ runtime makes
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

from cuda_gqa.backends.serialization import deserialize_payload
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
    "select_image",
]

# Bounds of runtime/cpp/payload.h.
MAX_RANK = 8
MAX_PARAMS = 256
MAX_GRID_FACTORS = 8
MAX_NUM_WARPS = 32
MAX_SHARED_MEM_BYTES = 1 << 20
MAX_WORKSPACE_BYTES = 1 << 40
WORKSPACE_ALIGN = 256  # alignment of the workspace base (cuMemAlloc's)
GRID_LIMITS = (0x7FFFFFFF, 65535, 65535)

_PARAM_KINDS = range(fb.ParamKind.TensorPointer, fb.ParamKind.Int32Constant + 1)
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


def _check_spec(spec, where: str) -> tuple[int, tuple[int, ...]]:
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
    nbytes = DTYPE_SIZES[dtype]
    for d, s in enumerate(sizes):
        if s < -1:
            raise _fail(where, f"size {s} at dim {d}")
        if s >= 0:
            nbytes *= s
            if nbytes >= 1 << 63:
                raise _fail(where, "tensor byte size overflows")
    if nbytes > 1 << 46:
        raise _fail(where, "tensor larger than 64 TiB")
    return dtype, sizes


def _check_param(p, specs: Sequence[tuple[int, tuple[int, ...]]], workspace_bytes: int, where: str) -> None:
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
    elif type_ != fb.ParamType.Pointer:
        raise _fail(where, "scratch must be passed as Pointer")


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


def _check_kernel(k, specs, workspace_bytes: int, where: str) -> None:
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
        _check_param(p, specs, workspace_bytes, f"{where} param {i}")
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


def _check_workspace_bytes(value, where: str) -> int:
    value = int(value or 0)
    if value > MAX_WORKSPACE_BYTES:
        raise _fail(where, f"workspace_bytes {value} too large")
    return value


def _check_variant(v, specs, where: str) -> None:
    if v is None:
        raise _fail(where, "missing")
    if not _len(v.archs):
        raise _fail(where, "no archs")
    workspace_bytes = _check_workspace_bytes(v.workspaceBytes, where)
    if not v.kernels:
        raise _fail(where, "no kernels")
    for i, k in enumerate(v.kernels):
        _check_kernel(k, specs, workspace_bytes, f"{where} kernel {i}")
    for arch in v.archs:
        # A variant serves its archs from cubins only: no PTX or older-cubin fallback.
        for k in v.kernels:
            if all(c.arch != arch for c in k.cubins or []):
                raise _fail(where, f"kernel {_as_str(k.name)} has no cubin for its arch sm_{arch}")


# ---------------------------------------------------------------------------
# pure pieces of the launcher


def compute_grid(kernel, size_of: Callable[[int, int], int]) -> tuple[int, int, int]:
    """Each grid dim: product over its factors of ceil_div(size_of(arg, dim), divisor);
    LaunchError("grid dim g exceeds the hardware limit") beyond the hardware limits."""
    grid = []
    for g, gd in enumerate(kernel.grid):
        limit = GRID_LIMITS[g]
        extent = 1
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


# ---------------------------------------------------------------------------


class LaunchPlan:
    """A checked payload, ready to evaluate launches.

    Construction refuses what the C++ runtime's parse_payload refuses (same
    messages; the schema version is checked only when given bytes, by
    deserialize_payload). evaluate() then runs, for one kernel, the checks of
    the backend's init (scratch sized from the static grid) and execute
    (argument count, each argument against its spec, parameters, grid).
    """

    def __init__(self, payload: Union[fb.PayloadT, bytes, bytearray, memoryview], device_cc: Optional[int] = None,
                 named_data: Optional[Mapping[str, bytes]] = None):
        """device_cc: the GPU's compute capability; its arch variant, if the
        payload has one, replaces the payload's own kernels and workspace.
        named_data: the program's named data (key -> bytes), where payloads
        exported through preprocess keep their cubins and PTX."""
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
        self.states: list[tuple[str, int, tuple[int, ...]]] = []
        for i, state in enumerate(payload.states or []):
            where = f"state {i}"
            dtype, sizes = _check_spec(state, where)
            name = _as_str(state.name) if state.name else ""
            if not name:
                raise _fail(where, "has no name")
            if any(s < 0 for s in sizes):
                raise _fail(where, "has dynamic sizes")
            if any(name == other for other, _, _ in self.states):
                raise _fail(where, f"repeats the name '{name}'")
            self.states.append((name, dtype, sizes))
        self.specs: list[tuple[int, tuple[int, ...]]] = inputs + outputs + [(d, s) for _, d, s in self.states]
        if len(self.specs) > 256:
            raise LaunchError("more than 256 delegate arguments")
        self.workspace_bytes = _check_workspace_bytes(payload.workspaceBytes, "")
        if not payload.kernels:
            raise LaunchError("payload has no kernels")
        for i, k in enumerate(payload.kernels):
            _check_kernel(k, self.specs, self.workspace_bytes, f"kernel {i}")
        self.kernels = list(payload.kernels)
        self.variant_archs: Optional[list[int]] = None  # the archs of the variant in use
        for i, v in enumerate(payload.archVariants or []):
            _check_variant(v, self.specs, f"arch variant {i}")
        for v in payload.archVariants or []:
            if device_cc is not None and device_cc in list(v.archs):
                self.kernels, self.workspace_bytes = list(v.kernels), int(v.workspaceBytes or 0)
                self.variant_archs = [int(a) for a in v.archs]
                break
        self.names = [_as_str(k.name) for k in self.kernels]

    @property
    def num_args(self) -> int:
        """Launch arguments: inputs, outputs, then states."""
        return len(self.specs)

    def arg_name(self, index: int) -> str:
        return f"input {index}" if index < self.num_inputs else f"output {index - self.num_inputs}"

    # -- init-time ---------------------------------------------------------

    def needs_scratch(self, k: int) -> bool:
        kernel = self.kernels[k]
        return kernel.globalScratchBytes > 0 or kernel.profileScratchBytes > 0

    def static_grid_ctas(self, k: int) -> int:
        """CTAs of kernel k's grid over the static spec sizes (scratch is sized from it);
        LaunchError if the grid reads a dynamic size."""
        kernel = self.kernels[k]
        dynamic = False

        def size_of(arg: int, dim: int) -> int:
            nonlocal dynamic
            s = self.specs[arg][1][dim]
            dynamic |= s < 0
            return max(s, 0)

        grid = compute_grid(kernel, size_of)
        if dynamic:
            raise LaunchError(f"grid of kernel {self.names[k]} depends on a dynamic size")
        return grid[0] * grid[1] * grid[2]

    def uses_workspace(self, k: int) -> bool:
        return any(int(p.kind) == fb.ParamKind.Workspace for p in self.kernels[k].params)

    def scratch_ctas(self, k: int) -> int:
        """CTAs the scratch of kernel k has room for: 0 when it needs none."""
        return self.static_grid_ctas(k) if self.needs_scratch(k) else 0

    def select_image(self, k: int, device_cc: int) -> ImageChoice:
        try:
            return select_image(self.kernels[k], device_cc, self.named_data)
        except LaunchError as e:
            raise LaunchError(f"kernel {self.names[k]}: {e}") from None

    # -- execute-time ------------------------------------------------------

    def check_args(self, args: Sequence[ArgInfo]) -> None:
        """The argument count, then each argument against its spec."""
        if len(args) != self.num_args:
            raise LaunchError(f"{len(args)} delegate args, the payload expects {self.num_args}")
        for i, a in enumerate(args):
            self._check_arg(i, a)

    def _check_arg(self, index: int, a: ArgInfo) -> None:
        name = self.arg_name(index)
        dtype, sizes = self.specs[index]
        if a.dtype != dtype:
            label = DTYPE_NAMES.get(a.dtype) or a.dtype_label or f"code {a.dtype}"
            raise LaunchError(f"{name} has dtype {label}, the kernels were compiled for {DTYPE_NAMES[dtype]}")
        if a.rank != len(sizes):
            raise LaunchError(f"{name} has rank {a.rank}, expected {len(sizes)}")
        for d, (want, got) in enumerate(zip(sizes, a.sizes)):
            if got < 0 or (want >= 0 and got != want):
                expected = str(want) if want >= 0 else "a size >= 0"
                raise LaunchError(f"{name} has size {got} at dim {d}, expected {expected}")
        if a.rank > 0 and a.sizes[-1] > 1 and a.strides[-1] != 1:
            raise LaunchError(f"{name}: last dimension has stride {a.strides[-1]}, expected 1")

    def evaluate(self, k: int, args: Sequence[ArgInfo], *, global_scratch: int = 0,
                 profile_scratch: int = 0, workspace: int = 0, check_args: bool = True) -> KernelLaunch:
        """Launch of kernel k over `args` (inputs then outputs), with the scratch
        buffers at the given addresses (ignored for a kernel that needs none) and
        the delegate's workspace at `workspace` (ignored when the payload has none)."""
        kernel = self.kernels[k]
        name = self.names[k]
        scratch_ctas = 0
        if self.needs_scratch(k):
            scratch_ctas = self.static_grid_ctas(k)
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
        if not workspace and self.uses_workspace(k):
            raise LaunchError(f"kernel {name}: workspace missing")
        if workspace % WORKSPACE_ALIGN:
            raise LaunchError(f"kernel {name}: workspace is not {WORKSPACE_ALIGN}-byte aligned")
        if check_args:
            self.check_args(args)

        params = []
        for i, p in enumerate(kernel.params):
            where = f"kernel {name} param {i}: "
            kind, type_ = int(p.kind), int(p.type)
            if kind == fb.ParamKind.TensorPointer:
                if p.arg >= len(args):
                    raise LaunchError(f"{where}arg {p.arg} out of range")
                ptr = args[p.arg].address & _U64
                if p.divisibility > 1 and ptr % p.divisibility:
                    raise LaunchError(f"{where}address of arg {p.arg} is not a multiple of "
                                      f"{p.divisibility} bytes, which the cubin assumes")
                params.append((type_, ptr))
                continue
            if kind == fb.ParamKind.Float32Constant:
                params.append((type_, _f32(p.f32Value)))
                continue
            if kind == fb.ParamKind.GlobalScratch:
                params.append((type_, int(global_scratch) & _U64))
                continue
            if kind == fb.ParamKind.ProfileScratch:
                params.append((type_, int(profile_scratch) & _U64))
                continue
            if kind == fb.ParamKind.Workspace:
                params.append((type_, (workspace + int(p.workspaceOffset)) & _U64))
                continue
            if kind == fb.ParamKind.Int32Constant:
                params.append((type_, int(p.i32Value)))
                continue
            # TensorStride / TensorSize
            if p.arg >= len(args):
                raise LaunchError(f"{where}arg {p.arg} out of range")
            a = args[p.arg]
            if p.dim >= min(a.rank, MAX_RANK):
                raise LaunchError(f"{where}dim {p.dim} out of range for arg {p.arg} of rank {a.rank}")
            is_stride = kind == fb.ParamKind.TensorStride
            value = a.strides[p.dim] if is_stride else a.sizes[p.dim]
            if p.divisibility > 1 and value % p.divisibility:
                raise LaunchError(f"{where}{'stride' if is_stride else 'size'} {value} of arg {p.arg} "
                                  f"dim {p.dim} is not a multiple of {p.divisibility}, which the cubin assumes")
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
        if ctas and self.needs_scratch(k) and ctas > scratch_ctas:
            raise LaunchError(f"kernel {name}: grid of {ctas} CTAs exceeds the scratch allocated "
                              f"for {scratch_ctas}")
        return KernelLaunch(kernel_index=k, name=name, grid=grid, block=32 * kernel.numWarps,
                            shared_mem_bytes=int(kernel.sharedMemBytes), params=tuple(params))

    def evaluate_all(self, args: Sequence[ArgInfo], scratch: Optional[Iterable[tuple[int, int]]] = None,
                     workspace: int = 0) -> list[KernelLaunch]:
        """Every kernel's launch, in order; scratch: (global, profile) address per kernel;
        workspace: the delegate's workspace, shared by all kernels."""
        self.check_args(args)
        scratch = list(scratch) if scratch is not None else [(0, 0)] * len(self.kernels)
        return [self.evaluate(k, args, global_scratch=g, profile_scratch=p, workspace=workspace, check_args=False)
                for k, (g, p) in enumerate(scratch)]


# ---------------------------------------------------------------------------
# the C++ evaluator, for parity tests


_EVAL_CODES = {1: "bad payload", 2: "refused", 3: "internal"}


def evaluate_launch_cpp(data: bytes, k: int, args: Sequence[ArgInfo], *, global_scratch: int = 0,
                        profile_scratch: int = 0, workspace: int = 0, device_cc: int = 0,
                        lib=None) -> KernelLaunch:
    """Kernel k's launch (of device_cc's plan) as libcuda_gqa_backend.so evaluates it
    (cuda_gqa_evaluate_launch; no GPU needed). Params come back as
    (fb.ParamType, value) decoded from the raw slots; refusals raise
    LaunchError with the C++ message."""
    import ctypes

    if lib is None:
        from .backend_library import load_backend_library

        lib = load_backend_library()
    fn = lib.cuda_gqa_evaluate_launch
    if fn.restype is not ctypes.c_int or not fn.argtypes:
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t,
                       ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_char_p),
                       ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_int64),
                       ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_uint64),
                       ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint32),
                       ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t),
                       ctypes.c_char_p, ctypes.c_size_t]
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
    launch = (ctypes.c_uint32 * 5)()
    values = (ctypes.c_uint64 * MAX_PARAMS)()
    num_params = ctypes.c_size_t(0)
    message = ctypes.create_string_buffer(1024)
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    rc = fn(buf, len(data), device_cc, k, len(args), dtypes, labels, ranks, sizes, strides, addresses,
            global_scratch & _U64, profile_scratch & _U64, workspace & _U64, launch, values, MAX_PARAMS,
            ctypes.byref(num_params), message, len(message))
    text = message.value.decode(errors="replace")
    if rc != 0:
        raise LaunchError(text)
    kernel = LaunchPlan(bytes(data), device_cc=device_cc).kernels[k]
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
                        shared_mem_bytes=launch[4], params=tuple(params))
