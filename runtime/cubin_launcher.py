"""Runs a payload's cubins directly on torch CUDA tensors, without ExecuTorch.

    launcher = CubinLauncher(payload_bytes)       # loads each kernel's image once
    out = launcher(q, k, v)                       # or launcher(q, k, v, out=buffer)

Launch parameters, grid and checks come from runtime/launch_plan.py, which
evaluates the payload as the C++ backend does (the two are held to the same
answers by tests/runtime/test_launch_plan.py). Unlike the backend, nothing is
staged: the kernels read and write the tensors in place, on torch's current
stream, so inputs may be strided views (last dim contiguous) and any
misalignment the cubins do not allow is refused with LaunchError before
anything is launched.

Needs torch and cuda-core (with cuda-python's bindings); both are imported
only when a CubinLauncher is built, so importing this module works anywhere.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.backends.serialization.dtypes import torch_dtype_codes

from .launch_plan import (WORKSPACE_ALIGN, ArgInfo, KernelLaunch, LaunchError, LaunchPlan,
                          launches_as_programmatic_dependent)

__all__ = ["ConstantBuffers", "CubinLauncher", "CudaCoreUnavailable", "LaunchError", "StateBuffers", "arg_info"]

_DEFAULT_SHARED_MEM_LIMIT = 48 * 1024


class CudaCoreUnavailable(RuntimeError):
    """torch with CUDA or cuda-core is missing on this machine."""


def _import_cuda_core():
    """The cuda.core namespace holding Device, ObjectCode, LaunchConfig, launch:
    `cuda.core` in recent releases, `cuda.core.experimental` in older ones."""
    errors = []
    for name in ("cuda.core", "cuda.core.experimental"):
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            errors.append(f"{name}: {e}")
            continue
        if all(hasattr(mod, a) for a in ("Device", "ObjectCode", "LaunchConfig", "launch")):
            return mod
        errors.append(f"{name}: lacks Device/ObjectCode/LaunchConfig/launch")
    raise CudaCoreUnavailable("CubinLauncher needs cuda-core (pip install cuda-core): " + "; ".join(errors))


def _import_driver():
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python < 12.6
        except ImportError as e:
            raise CudaCoreUnavailable(f"CubinLauncher needs cuda-python's driver bindings: {e}") from e
    return driver


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise CudaCoreUnavailable(f"CubinLauncher needs torch: {e}") from e
    if not torch.cuda.is_available():
        raise CudaCoreUnavailable("CubinLauncher needs a CUDA device; torch.cuda.is_available() is False")
    return torch


class _CallableTuple(tuple):
    """(version, handle) that also answers being called: cuda.core reads
    `__cuda_stream__` as an attribute in old releases, calls it in newer ones."""

    def __call__(self):
        return self


class _ForeignStream:
    """A CUstream handle owned by someone else (torch), in the form cuda.core accepts."""

    def __init__(self, handle: int):
        self.__cuda_stream__ = _CallableTuple((0, int(handle)))


def arg_info(tensor, dtypes: Optional[dict] = None) -> ArgInfo:
    """The launch plan's view of a torch tensor: dtype, sizes, strides, data address."""
    if dtypes is None:
        import torch

        dtypes = torch_dtype_codes(torch)
    code = dtypes.get(tensor.dtype, -1)
    return ArgInfo(dtype=code, sizes=tuple(tensor.shape), strides=tuple(tensor.stride()),
                   address=tensor.data_ptr(), dtype_label=None if code >= 0 else str(tensor.dtype).removeprefix("torch."))


def _driver_handle(kernel):
    """The CUkernel or CUfunction behind a cuda.core kernel (None if this release hides it)."""
    handle = getattr(kernel, "handle", None)
    return getattr(kernel, "_handle", None) if handle is None else handle


def _handle_int(handle) -> int:
    try:
        return int(handle)
    except TypeError:
        return int(handle.getPtr()) if hasattr(handle, "getPtr") else 0


def _check_driver(result, what: str):
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err!r}")


class StateBuffers:
    """The device buffers payload states name (a delegate-owned KV cache), by name.

    CubinLaunchers given the same StateBuffers share the states they name,
    as the C++ backend shares them between the delegates of one program:
    pass one to the launchers of a program's prefill and decode payloads.
    A state is allocated zeroed when a launcher first asks for it; a
    launcher built without one gets states of its own.
    """

    def __init__(self):
        self.tensors: dict = {}  # name -> torch tensor

    def get(self, name: str, dtype, sizes: Sequence[int], device):
        """The buffer of state `name`, allocated zeroed on first use; LaunchError if an
        earlier launcher declared it with another dtype, shape or device."""
        import torch

        tensor = self.tensors.get(name)
        if tensor is None:
            tensor = torch.zeros(tuple(sizes), dtype=dtype, device=device)
            self.tensors[name] = tensor
        elif tensor.dtype != dtype or tuple(tensor.shape) != tuple(sizes) or tensor.device != torch.device(device):
            raise LaunchError(f"state '{name}' is {dtype} {list(sizes)} on {device} here but "
                              f"{tensor.dtype} {list(tensor.shape)} on {tensor.device} in another launcher")
        return tensor

    def zero_(self) -> None:
        """Zeroes every state (a new sequence from position 0 does not need it:
        rows past the filled length are never read)."""
        for tensor in self.tensors.values():
            tensor.zero_()


class ConstantBuffers:
    """The device copies of payload constants (Payload.constants, a model's weights), by name.

    Each is uploaded from `named_data` (name -> bytes, the program's named data) the first
    time a launcher asks for it, and shared by every CubinLauncher given this object, as
    the C++ backend shares them between the delegates of one program: pass one to the
    launchers of a program's prefill and decode payloads. No host copy is kept.
    """

    def __init__(self, named_data: Optional[Mapping[str, bytes]] = None):
        self.named_data = named_data if named_data is not None else {}
        self.tensors: dict = {}  # name -> torch tensor on the device

    def get(self, name: str, dtype, sizes: Sequence[int], device):
        """The device copy of constant `name`, uploaded on first use; LaunchError if its named
        data is missing or of another size, or an earlier launcher declared it otherwise."""
        import torch

        tensor = self.tensors.get(name)
        if tensor is None:
            tensor = self._upload(name, dtype, tuple(int(s) for s in sizes), device)
            self.tensors[name] = tensor
        elif tensor.dtype != dtype or tuple(tensor.shape) != tuple(sizes) or tensor.device != torch.device(device):
            raise LaunchError(f"constant '{name}' is {dtype} {list(sizes)} on {device} here but "
                              f"{tensor.dtype} {list(tensor.shape)} on {tensor.device} in another launcher")
        return tensor

    def _upload(self, name: str, dtype, sizes: tuple, device):
        import torch

        if name not in self.named_data:
            raise LaunchError(f"constant '{name}': missing from the program's named data")
        data = self.named_data[name]
        nbytes = int(np.prod(sizes, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
        if len(data) != nbytes:
            raise LaunchError(f"constant '{name}': its named data holds {len(data)} bytes, "
                              f"{str(dtype).removeprefix('torch.')} of its sizes needs {nbytes}")
        if nbytes == 0:
            return torch.empty(sizes, dtype=dtype, device=device)
        host = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return host.view(dtype).reshape(sizes).to(device)


class CubinLauncher:
    """A payload's kernels, loaded on one CUDA device, callable on torch tensors.

    `CubinLauncher(payload_bytes, device=None, named_data=None)`: device is an
    index, a torch.device or None (torch's current device); named_data maps
    the keys of images the payload keeps in the program's named data to
    their bytes (payloads from build_attention_payload carry theirs inline
    and need none). Picks each kernel's image
    for the device's compute capability as the C++ runtime does (exact cubin,
    then an older minor of the same major, then PTX), loads it once, opts in
    to dynamic shared memory above 48 KiB, and allocates the kernels' scratch
    for the grid at the payload's max sizes and the payload's workspace
    (once; every call reuses it). Every plan of the dispatch table kept for
    the device is loaded.

    `states`: the StateBuffers holding the payload's states (Payload.states,
    a delegate-owned KV cache); launchers given the same one share them
    (a program's prefill and decode). Default: states of this launcher's own.

    `constants`: the ConstantBuffers holding the device copies of the
    payload's constants (Payload.constants, the model's weights); launchers
    given the same one share them. Default: copies of this launcher's own,
    uploaded from `named_data`.

    `launcher(*inputs, out=None)` checks the tensors (device, dtype, sizes,
    bounds, strides; LaunchError before any launch if one is off), allocates
    the output when `out` is None (dynamic sizes from the inputs, as the
    payload's size_from says), picks the plan the C++ backend would (the first
    whose ranges hold and whose alignment assumptions the tensors meet),
    launches its kernels on torch's current stream and returns the output (a
    tuple if the payload has several).
    """

    def __init__(self, payload_bytes: bytes, device: Any = None, named_data: Optional[Mapping[str, bytes]] = None,
                 states: Optional[StateBuffers] = None, programmatic_launch: bool = True,
                 constants: Optional[ConstantBuffers] = None):
        """programmatic_launch: launch the kernels that wait for the one before them themselves
        (payload.fbs, Kernel.waits_for_previous) as its programmatic dependents where the device
        and their image allow (launch_plan.launches_as_programmatic_dependent), as the C++
        backend does; False launches every kernel plainly."""
        torch = _import_torch()
        self._torch = torch
        self._cc = _import_cuda_core()
        self._driver = _import_driver()
        self._dtypes = torch_dtype_codes(torch)
        self._torch_dtype = {v: k for k, v in self._dtypes.items()}

        if device is None:
            index = torch.cuda.current_device()
        elif isinstance(device, int):
            index = device
        else:
            d = torch.device(device)
            if d.type != "cuda":
                raise ValueError(f"CubinLauncher runs on a CUDA device, not {d}")
            index = d.index if d.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        major, minor = torch.cuda.get_device_capability(index)
        self.compute_capability = 10 * major + minor
        # The dispatch table's plans for this arch.
        self.plan = LaunchPlan(payload_bytes, device_cc=self.compute_capability, named_data=named_data)

        # Initialize torch's context first, so cuda.core shares its primary context.
        torch.cuda.init()
        with torch.cuda.device(index):
            torch.empty(1, device=self.device)
        self._cc_device = self._cc.Device(index)
        self._cc_device.set_current()

        self._kept_plan = {index: p for p, index in enumerate(self.plan.plan_indices)}  # payload's -> kept
        self.images = []  # per kept plan, ImageChoice per kernel
        self._kernels = []  # per kept plan, the loaded kernel per kernel
        self.programmatic = []  # per kept plan, per kernel: launched as a programmatic dependent
        loaded = {}  # plans share kernels: load each image and entry point once
        for p in range(len(self.plan.plans)):
            self.images.append([])
            self._kernels.append([])
            self.programmatic.append([])
            for k, kernel in enumerate(self.plan.kernels(p)):
                choice = self.plan.select_image(p, k, self.compute_capability)
                name = self.plan.names(p)[k]
                key = (name, choice.image)
                if key not in loaded:
                    loaded[key] = self._load(name, choice, kernel.sharedMemBytes)
                self.images[p].append(choice)
                self._kernels[p].append(loaded[key])
                self.programmatic[p].append(programmatic_launch and launches_as_programmatic_dependent(
                    kernel, k, choice, self.compute_capability))
        # What cuLaunchKernelEx needs of a programmatic dependent that does not change per call.
        self._programmatic_functions = {(p, k): self._cu_function(self._kernels[p][k])
                                        for p, plan in enumerate(self.programmatic)
                                        for k, programmatic in enumerate(plan) if programmatic}
        self._programmatic_attribute = self._programmatic_launch_attribute() if self._programmatic_functions else None

        self._scratch = []  # per kept plan, (global, profile) address per kernel
        self._scratch_buffers = []  # keeps the tensors alive
        for p, k in ((p, k) for p in range(len(self.plan.plans)) for k in range(len(self.plan.kernels(p)))):
            if k == 0:
                self._scratch.append([])
            kernel = self.plan.kernels(p)[k]
            ctas = self.plan.scratch_ctas(p, k)
            addresses = []
            for nbytes, align in ((kernel.globalScratchBytes, kernel.globalScratchAlign),
                                  (kernel.profileScratchBytes, kernel.profileScratchAlign)):
                if nbytes == 0 or ctas == 0:
                    addresses.append(0)
                    continue
                align = max(int(align), 1)
                buf = torch.empty(ctas * nbytes + align - 1, dtype=torch.uint8, device=self.device)
                self._scratch_buffers.append(buf)
                addresses.append((buf.data_ptr() + align - 1) // align * align)
            self._scratch[p].append(tuple(addresses))
        # The payload's workspace (split-KV partials and the like): one buffer,
        # allocated here once and shared by the kernels, which run in order on
        # one stream; never allocated per call.
        self._workspace = None
        self.workspace_address = 0
        if self.plan.workspace_bytes:
            align = WORKSPACE_ALIGN
            # Zeroed once: fused split-KV kernels keep arrival counters there
            # (payload.fbs, Workspace); each launch leaves them 0.
            self._workspace = torch.zeros(self.plan.workspace_bytes + align - 1, dtype=torch.uint8,
                                          device=self.device)
            self.workspace_address = (self._workspace.data_ptr() + align - 1) // align * align
        # The payload's states (Payload.states): launch arguments after the
        # outputs, at addresses fixed for the launcher's lifetime.
        self.states = states if states is not None else StateBuffers()
        self._state_infos = [arg_info(self.states.get(name, self._torch_dtype[dtype], sizes, self.device),
                                      self._dtypes)
                             for name, dtype, sizes in self.plan.states]
        # The payload's constants, uploaded once (or found in `constants`); the
        # launches bind their addresses, fixed for the launcher's lifetime.
        self.constants = constants if constants is not None else ConstantBuffers(named_data)
        self._constant_tensors = [self.constants.get(name, self._torch_dtype[dtype], sizes, self.device)
                                  for name, dtype, sizes in self.plan.constants]
        self.constant_addresses = [t.data_ptr() for t in self._constant_tensors]
        self._launch_takes_stream_first = self._launch_signature_stream_first()
        self._streams = {}

    # -- loading -------------------------------------------------------------

    def _load(self, name: str, choice, shared_mem_bytes: int):
        ObjectCode = self._cc.ObjectCode
        try:
            if choice.is_ptx:
                text = choice.image.rstrip(b"\0")
                code = (ObjectCode.from_ptx(text) if hasattr(ObjectCode, "from_ptx")
                        else ObjectCode(text, "ptx"))
            else:
                code = (ObjectCode.from_cubin(choice.image) if hasattr(ObjectCode, "from_cubin")
                        else ObjectCode(choice.image, "cubin"))
            kernel = code.get_kernel(name)
        except Exception as e:
            what = "PTX" if choice.is_ptx else f"sm_{choice.arch} cubin"
            raise LaunchError(f"kernel {name}: loading the {what} failed: {e}") from e
        if shared_mem_bytes > _DEFAULT_SHARED_MEM_LIMIT:
            self._opt_in_shared_memory(name, kernel, int(shared_mem_bytes))
        return kernel

    def _opt_in_shared_memory(self, name: str, kernel, nbytes: int) -> None:
        drv = self._driver
        handle = _driver_handle(kernel)
        if handle is None:
            raise LaunchError(f"kernel {name}: cuda.core exposes no handle to set its shared memory limit on")
        attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if type(handle).__name__ == "CUkernel":  # loaded through the library API
            result = drv.cuKernelSetAttribute(attr, nbytes, handle, drv.CUdevice(self.device.index))
        else:
            if not isinstance(handle, drv.CUfunction):
                handle = drv.CUfunction(_handle_int(handle))
            result = drv.cuFuncSetAttribute(handle, attr, nbytes)
        try:
            _check_driver(result, "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")
        except RuntimeError as e:
            raise LaunchError(f"kernel {name}: needs {nbytes} bytes of dynamic shared memory: {e}") from None

    def _launch_signature_stream_first(self) -> bool:
        """launch(stream, config, kernel, *args) since cuda-core 0.2; launch(kernel,
        config, *args) with LaunchConfig(stream=...) before."""
        try:
            params = list(inspect.signature(self._cc.launch).parameters)
        except (TypeError, ValueError):  # a Cython function without a signature
            doc = (self._cc.launch.__doc__ or "").lstrip()
            return not doc.startswith("launch(kernel")
        return not params or params[0] != "kernel"

    def _stream(self):
        handle = int(self._torch.cuda.current_stream(self.device).cuda_stream)
        stream = self._streams.get(handle)
        if stream is None:
            stream = self._cc_device.create_stream(_ForeignStream(handle))
            self._streams[handle] = stream
        return stream

    # -- launching -----------------------------------------------------------

    def plan_launches(self, args: Sequence[ArgInfo]) -> list[KernelLaunch]:
        """What __call__ would launch for these arguments (inputs then outputs; the states are appended)."""
        return self.plan.evaluate_all(list(args) + self._state_infos, self._scratch,
                                      workspace=self.workspace_address, constants=self.constant_addresses)

    def _output(self, index: int, inputs: Sequence[ArgInfo]):
        dtype = self.plan.specs[self.plan.num_inputs + index][0]
        sizes = self.plan.output_sizes(index, inputs)
        if any(s < 0 for s in sizes):
            raise LaunchError(f"output {index} has sizes {list(sizes)} for these inputs: pass out=")
        return self._torch.empty(sizes, dtype=self._torch_dtype[dtype], device=self.device)

    def __call__(self, *inputs, out=None):
        torch = self._torch
        num_outputs = self.plan.num_outputs
        if len(inputs) != self.plan.num_inputs:
            raise LaunchError(f"{len(inputs)} inputs, the payload expects {self.plan.num_inputs}")
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor):
                raise LaunchError(f"{self.plan.arg_name(i)} is a {type(t).__name__}, not a torch.Tensor")
        input_infos = [arg_info(t, self._dtypes) for t in inputs]
        if out is None:
            self.plan.check_inputs(input_infos)  # before sizing outputs from them
            outputs = tuple(self._output(i, input_infos) for i in range(num_outputs))
        else:
            outputs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
            if len(outputs) != num_outputs:
                raise LaunchError(f"{len(outputs)} outputs, the payload expects {num_outputs}")
        tensors = tuple(inputs) + outputs
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise LaunchError(f"{self.plan.arg_name(i)} is a {type(t).__name__}, not a torch.Tensor")
            if t.device != self.device:
                raise LaunchError(f"{self.plan.arg_name(i)} is on {t.device}, the kernels are loaded on {self.device}")
        launches = self.plan_launches(input_infos + [arg_info(t, self._dtypes) for t in outputs])
        with torch.cuda.device(self.device):
            self._cc_device.set_current()
            stream = self._stream()
            for launch in launches:
                if launch.ctas:
                    self._launch(stream, launch)
        return outputs[0] if num_outputs == 1 else outputs

    def _launch(self, stream, launch: KernelLaunch) -> None:
        cc = self._cc
        p = self._kept_plan[launch.plan_index]
        kernel = self._kernels[p][launch.kernel_index]
        if self.programmatic[p][launch.kernel_index]:
            self._launch_programmatic(self._programmatic_functions[p, launch.kernel_index], launch)
            return
        args = [_pack(t, v) for t, v in launch.params]
        if self._launch_takes_stream_first:
            config = cc.LaunchConfig(grid=launch.grid, block=(launch.block, 1, 1),
                                     shmem_size=launch.shared_mem_bytes)
            cc.launch(stream, config, kernel, *args)
        else:
            config = cc.LaunchConfig(grid=launch.grid, block=(launch.block, 1, 1), stream=stream,
                                     shmem_size=launch.shared_mem_bytes)
            cc.launch(kernel, config, *args)


    def _programmatic_launch_attribute(self):
        drv = self._driver
        attribute = drv.CUlaunchAttribute()
        attribute.id = drv.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        attribute.value.programmaticStreamSerializationAllowed = 1
        return attribute

    def _cu_function(self, kernel):
        """The driver handle of a loaded cuda.core kernel, as cuLaunchKernelEx takes it: a
        CUkernel (library API) launches as a CUfunction of the current context."""
        drv = self._driver
        handle = _driver_handle(kernel)
        return handle if isinstance(handle, drv.CUfunction) else drv.CUfunction(_handle_int(handle))

    def _launch_programmatic(self, function, launch: KernelLaunch) -> None:
        """cuLaunchKernelEx with programmatic stream serialization (cuda.core has no such
        launch option): the kernel's CTAs may start while the previous kernel on the
        stream drains; the kernel waits for it itself (griddepcontrol.wait)."""
        drv = self._driver
        config = drv.CUlaunchConfig()
        config.gridDimX, config.gridDimY, config.gridDimZ = launch.grid
        config.blockDimX, config.blockDimY, config.blockDimZ = launch.block, 1, 1
        config.sharedMemBytes = launch.shared_mem_bytes
        config.hStream = drv.CUstream(int(self._torch.cuda.current_stream(self.device).cuda_stream))
        config.attrs = [self._programmatic_attribute]
        config.numAttrs = 1
        # kernelParams as the C++ launcher passes them: one pointer per 8-byte slot.
        slots = np.array(launch.slots(), dtype=np.uint64)
        pointers = np.array([slots.ctypes.data + 8 * i for i in range(len(slots))], dtype=np.uint64)
        _check_driver(drv.cuLaunchKernelEx(config, function, pointers.ctypes.data, 0),
                      f"kernel {launch.name}: cuLaunchKernelEx (programmatic)")


def _pack(type_: int, value):
    """One entry-point parameter as cuda.core passes it: pointers 64-bit, ints and floats by width."""
    if type_ == fb.ParamType.Int32:
        return np.int32(value)
    if type_ == fb.ParamType.Int64:
        return np.int64(value)
    if type_ == fb.ParamType.Float32:
        return np.float32(value)
    return np.uint64(value)
