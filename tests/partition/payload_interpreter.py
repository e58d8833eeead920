"""Runs a cuda_gqa payload on the CPU: its launch plans, its kernels under Triton's interpreter.

A payload names each launch's cubin and how its parameters bind to the
delegate's arguments, not the Triton source the cubin came from, so the
export records that: `recording_compiles()` wraps the AOT compiles
(compile_to_cubin in backends/aot/*) and remembers, per cubin (by its
named-data key, as preprocess stores it), the @triton.jit function, its
signature and constexprs.

`PayloadInterpreter` then runs a delegate as the runtimes do, with the
product's own evaluation (runtime/launch_plan.py, in parity with the C++
launcher: plan selection, parameter values, grids) over CPU tensors; each
launch runs as that function under TRITON_INTERPRET=1, its pointer
parameters mapped back to the argument, state, constant or workspace they
address. States and the workspace are zeroed once and kept across calls,
like the device buffers of a delegate; each constant (Payload.constants, a
weight) is a CPU tensor made once from the program's named data.

The interpreter must be switched on before triton is imported, and the
AOT compiles need it off: run `python payload_interpreter.py CASE OUT` in a
subprocess (`run_in_subprocess`). CASE (torch.save) holds {"kernels": what
recording_compiles collected, "programs": [{"payload": bytes, "calls":
[[input tensors], ...], "named_data": {name: bytes}}, ...]} ("named_data",
what the program's named data holds for the payload's constants, e.g.
PayloadConstants.named_data(); optional when the payload has none; optional
"states_from": the index of an earlier program whose final states, by name,
this one starts from: two methods sharing their caches); OUT
gets, per program, {"outputs": [[output tensors] per call], "states": [final
state tensors]}.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

AOT_MODULES = ("cuda_gqa.backends.aot.attention", "cuda_gqa.backends.aot.attention_decode",
               "cuda_gqa.backends.aot.kv_cache_write", "cuda_gqa.backends.aot.linear", "cuda_gqa.backends.aot.embedding",
               "cuda_gqa.backends.aot.rmsnorm", "cuda_gqa.backends.aot.rope_cache_write", "cuda_gqa.backends.aot.add",
               "cuda_gqa.backends.aot.argmax_rows", "cuda_gqa.backends.aot.last_row")

# Kernel constexprs that switch griddepcontrol instructions on (backends/kernels/attention_decode.py,
# programmatic_launch.py).
PROGRAMMATIC_LAUNCH_SWITCHES = ("LAUNCH_DEPENDENTS", "WAIT_FOR_SPLITS", "WAIT_FOR_PREVIOUS")


@contextmanager
def recording_compiles(kernels: dict):
    """Within it, every AOT compile adds {image key: {"module", "name", "signature", "constexprs"}} to kernels."""
    import pytest

    from cuda_gqa.backends.named_images import image_key

    with pytest.MonkeyPatch.context() as patch:
        for name in AOT_MODULES:
            module = importlib.import_module(name)

            def compile_and_record(fn, *, signature, constexprs, _compile=module.compile_to_cubin, **options):
                compiled = _compile(fn, signature=signature, constexprs=constexprs, **options)
                kernels[image_key(compiled.cubin)] = {"module": fn.__module__, "name": fn.__qualname__,
                                                      "signature": dict(signature), "constexprs": dict(constexprs)}
                return compiled

            patch.setattr(module, "compile_to_cubin", compile_and_record)
        yield kernels


def run_in_subprocess(case: dict, workdir: Path) -> list[dict]:
    """Run CASE's programs through PayloadInterpreter in a fresh interpreter process; returns OUT."""
    import torch

    case_path, out_path = workdir / "interpreter_case.pt", workdir / "interpreter_out.pt"
    torch.save(case, case_path)
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, __file__, str(case_path), str(out_path)], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out_path)


class PayloadInterpreter:
    def __init__(self, payload: bytes, kernels: dict, named_data: dict | None = None):
        """named_data: name -> bytes of the payload's constants (the program's named data)."""
        import torch

        from cuda_gqa.runtime.launch_plan import LaunchPlan

        self.plan = LaunchPlan(payload)  # the plans listing no arch: the lowest arch's
        self.kernels = kernels
        self.torch_dtype = {code: getattr(torch, name) for code, name in _DTYPE_NAMES.items()}
        self.states = [torch.zeros(sizes, dtype=self.torch_dtype[dtype]) for _, dtype, sizes in self.plan.states]
        self.constants = [self._constant(name, self.torch_dtype[dtype], sizes, named_data or {})
                          for name, dtype, sizes in self.plan.constants]
        # 256-byte aligned, as the runtimes allocate it.
        raw = torch.zeros(_round_up(max(self.plan.workspace_bytes, 16), 16) + 256, dtype=torch.uint8)
        self.workspace = raw[-raw.data_ptr() % 256:][:raw.numel() - 256]

    @staticmethod
    def _constant(name: str, dtype, sizes, named_data: dict):
        """A CPU tensor of constant `name` from its named data bytes (a copy: writable, aligned)."""
        import torch

        assert name in named_data, f"constant '{name}' is not in the case's named_data"
        data = bytearray(named_data[name])
        if not data:
            return torch.empty(sizes, dtype=dtype)
        return torch.frombuffer(data, dtype=torch.uint8).view(dtype).reshape(sizes).clone()

    def _info(self, tensor):
        from cuda_gqa.runtime.launch_plan import ArgInfo

        code = {v: k for k, v in self.torch_dtype.items()}[tensor.dtype]
        return ArgInfo(dtype=code, sizes=tuple(tensor.shape), strides=tuple(tensor.stride()),
                       address=tensor.data_ptr())

    def __call__(self, *inputs):
        import torch

        plan = self.plan
        infos = [self._info(t) for t in inputs]
        outputs = [torch.zeros(plan.output_sizes(i, infos), dtype=self.torch_dtype[plan.specs[plan.num_inputs + i][0]])
                   for i in range(plan.num_outputs)]
        args = [*inputs, *outputs, *self.states]
        arg_infos = [self._info(t) for t in args]
        # Execute's refusal of positions outside the cache (host-resident inputs: all of them here).
        plan.check_positions(arg_infos, {i: t.flatten().tolist() for i, t in enumerate(inputs)
                                         if t.dtype in (torch.int32, torch.int64)})
        p = plan.select(arg_infos)
        # No kernel here uses Triton's scratch; nonzero addresses only satisfy the checks.
        scratch = [[(16, 16)] * len(plan.kernels(q)) for q in range(len(plan.plans))]
        constants = [t.data_ptr() for t in self.constants]
        for launch in plan.evaluate_all(arg_infos, scratch=scratch, workspace=self.workspace.data_ptr(),
                                        constants=constants):
            kernel = plan.kernels(p)[launch.kernel_index]
            info = self.kernels[_key_of(kernel.cubins[0])]
            fn = getattr(importlib.import_module(info["module"]), info["name"])
            names = [n for n in fn.arg_names if n not in info["constexprs"]]
            values = {}
            for name, (_, value) in zip(names, launch.params):
                kind = info["signature"][name]
                values[name] = self._pointer(value, kind, args + self.constants) if kind.startswith("*") else value
            # Launches run one after another here: programmatic dependent launch's trigger and
            # wait (griddepcontrol, which the interpreter lacks) have nothing to order.
            constexprs = {name: False if name in PROGRAMMATIC_LAUNCH_SWITCHES else value
                          for name, value in info["constexprs"].items()}
            if launch.ctas:
                fn[launch.grid](**values, **constexprs)
        return outputs

    def _pointer(self, address: int, kind: str, args):
        """The tensor a pointer parameter addresses: an argument or constant, or the workspace from an offset."""
        import torch

        dtype = {"*fp32": torch.float32, "*fp16": torch.float16, "*bf16": torch.bfloat16, "*i32": torch.int32,
                 "*i64": torch.int64, "*i1": torch.bool}[kind]
        for tensor in args:
            if tensor.data_ptr() == address and tensor.dtype == dtype:
                return tensor
        offset = address - self.workspace.data_ptr()
        if 0 <= offset < self.workspace.numel():
            return self.workspace[offset:].view(dtype)
        for tensor in args:  # a pointer the launch never dereferences (e.g. Partial of one split): any of its type
            if tensor.data_ptr() == address:
                return tensor.view(dtype) if tensor.element_size() == dtype.itemsize else torch.empty(0, dtype=dtype)
        raise AssertionError(f"pointer {address:#x} ({kind}) addresses no argument or workspace")


def _key_of(cubin) -> str:
    """The cubin's named-data key, or the key its inline image would have (payloads built
    by build_attention_payload directly keep their images inline)."""
    from cuda_gqa.backends.named_images import image_key

    key = cubin.imageKey
    if key:
        return key.decode() if isinstance(key, bytes) else key
    return image_key(bytes(cubin.image))


_DTYPE_NAMES = {0: "float32", 1: "float16", 2: "bfloat16", 3: "bool", 4: "int32", 5: "int64"}  # fb.DType


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def main(case_path: str, out_path: str) -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch

    case = torch.load(case_path)
    results = []
    for program in case["programs"]:
        delegate = PayloadInterpreter(program["payload"], case["kernels"], program.get("named_data"))
        if "states_from" in program:
            earlier = results[program["states_from"]]["named_states"]
            delegate.states = [earlier[name].clone() for name, _, _ in delegate.plan.states]
        outputs = [delegate(*inputs) for inputs in program["calls"]]
        results.append({"outputs": outputs, "states": delegate.states,
                        "named_states": {name: t for (name, _, _), t in zip(delegate.plan.states, delegate.states)}})
    torch.save(results, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
