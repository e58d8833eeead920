"""Delegate-owned state buffers (Payload.states, the device KV cache) in the C++ and Python runtimes,
on the CPU: validation, and a fake libcuda.so.1 running two-method programs whose delegates
share a state by name within one program and not across programs."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.runtime.launch_plan import LaunchError, LaunchPlan

from fake_programs import ADD_MODULES, ROOT, K, P, add_payload, fake_env, pack, param
from test_cpp_backend import load_library, validate

from cuda_gqa.backends.serialization import deserialize_payload


def state(name="layers.0.k_cache", sizes=(2, 64)) -> fb.StateSpecT:
    return fb.StateSpecT(name=name, dtype=fb.DType.Float32, sizes=list(sizes))


def state_payload(pointer_args=(0, 3, 2), states=None) -> fb.PayloadT:
    """add_f32 over x, y -> out (2 x 64 float32) with a state "s" as arg 3: the fake driver's
    kernel adds its first two pointers into the third, so (0, 3, 2) reads the state
    (out = x + s) and (0, 1, 3) writes it (s = x + y)."""
    payload = deserialize_payload(add_payload())
    payload.states = states if states is not None else [state("s")]
    kernel = payload.plans[0].kernels[0]
    kernel.params = [param(K.TensorPointer, P.Pointer, arg=a, divisibility=16) for a in pointer_args]
    kernel.params.append(param(K.TensorSize, P.Int32, arg=0, dim=1))
    return payload


def test_states_are_launch_arguments_after_the_outputs():
    data = pack(state_payload())
    assert validate(load_library(), data) == (0, "ok")
    plan = LaunchPlan(data)
    assert plan.states == [("s", fb.DType.Float32, (2, 64))]
    assert (plan.num_inputs, plan.num_outputs, plan.num_args) == (2, 1, 4)


BAD_STATES = {
    "no name": ([state("")], "state 0: has no name"),
    "dynamic": ([state("s", (-1, 64))], "state 0: has dynamic sizes"),
    "repeated": ([state("s"), state("s")], "state 1: repeats the name 's'"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_bad_states_are_refused_alike_in_cpp_and_python(case):
    states, reason = BAD_STATES[case]
    data = pack(state_payload(states=states))
    rc, message = validate(load_library(), data)
    assert rc != 0 and reason in message, message
    with pytest.raises(LaunchError, match=reason):
        LaunchPlan(data)


def test_a_param_past_the_states_is_refused():
    data = pack(state_payload(pointer_args=(0, 1, 4)))  # 2 inputs, 1 output, 1 state: arg 4 is none
    rc, message = validate(load_library(), data)
    assert rc != 0 and "arg 4 out of range (4 delegate args)" in message, message
    with pytest.raises(LaunchError):
        LaunchPlan(data)


# Methods given as (name, payload file) pairs, then the .pte path, each one
# delegate: "write" (s = x + y) and "read" (out = x + s) name state "s"
# alike, "mismatched" declares "s" with other sizes. Payload images go to the program's named data (the
# program identity the C++ registry keys states by).
TWO_METHOD_SCRIPT = ADD_MODULES + """
from executorch.exir._serialize._named_data_store import NamedDataStore
from cuda_gqa.backends.named_images import move_images_to_named_data
from cuda_gqa.backends.serialization import deserialize_payload, serialize_payload

class CudaGqaBackend(BackendDetails):
    payload = b""

    @staticmethod
    def preprocess(edge_program, compile_specs):
        payload, store = deserialize_payload(CudaGqaBackend.payload), NamedDataStore()
        move_images_to_named_data(payload, store)
        return PreprocessResult(processed_bytes=serialize_payload(payload),
                                data_store_output=store.get_named_data_store_output())

inputs = (torch.ones(2, 64), torch.ones(2, 64))
methods = {}
for name, path in zip(sys.argv[1:-1:2], sys.argv[2:-1:2]):
    CudaGqaBackend.payload = open(path, "rb").read()
    lowered = to_backend("CudaGqaBackend", to_edge(torch.export.export(Add(), inputs)).exported_program(), [])
    methods[name] = torch.export.export(Wrapper(lowered), inputs)
open(sys.argv[-1], "wb").write(to_edge(methods).to_executorch().buffer)
"""

RUN_SCRIPT = """
import sys, torch
from executorch.runtime import Runtime
from cuda_gqa.runtime import load_backend_library, zero_states
lib = load_backend_library()
x, y = torch.ones(2, 64), torch.full((2, 64), 2.0)
first = Runtime.get().load_program(sys.argv[1])
write, read = first.load_method("write"), first.load_method("read")
print("fresh", read.execute([x, y])[0][0, 0].item())
write.execute([x, y])
print("after write", read.execute([x, y])[0][0, 0].item())
second = Runtime.get().load_program(sys.argv[1])
other_read = second.load_method("read")
print("other program", other_read.execute([x, y])[0][0, 0].item())
print("live states", lib.cuda_gqa_live_state_count())
zero_states()
print("zeroed", read.execute([x, y])[0][0, 0].item())
try:
    first.load_method("mismatched")
    print("mismatched loaded")
except Exception:
    print("mismatched refused")
del other_read, second
print("live states", lib.cuda_gqa_live_state_count())
# Two programs from one bytes object: ExecuTorch keeps each one's flatbuffer in that buffer.
data = open(sys.argv[1], "rb").read()
one, two = Runtime.get().load_program(data), Runtime.get().load_program(data)
one.load_method("write").execute([x, y])
print("same bytes, other program", two.load_method("read").execute([x, y])[0][0, 0].item())
print("same bytes, same program", one.load_method("read").execute([x, y])[0][0, 0].item())
"""


def test_delegates_of_one_program_share_states_and_programs_do_not(fake_driver_dir, tmp_path):
    (tmp_path / "write.bin").write_bytes(pack(state_payload(pointer_args=(0, 1, 3))))
    (tmp_path / "read.bin").write_bytes(pack(state_payload(pointer_args=(0, 3, 2))))
    (tmp_path / "mismatched.bin").write_bytes(pack(state_payload(states=[state("s", (4, 32))])))
    pte = tmp_path / "methods.pte"
    methods = [arg for name in ("write", "read", "mismatched") for arg in (name, str(tmp_path / f"{name}.bin"))]
    made = subprocess.run([sys.executable, "-c", TWO_METHOD_SCRIPT, *methods, str(pte)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert made.returncode == 0, made.stderr[-3000:]
    run = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(pte)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env=fake_env(fake_driver_dir))
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    # A fresh state reads as zeros; the write method's state is the read
    # method's; another program loaded from the same file has its own; zeroing works;
    # a delegate declaring the state otherwise is refused at load, naming both; two programs loaded
    # from one bytes object have a state each.
    assert run.stdout.splitlines() == ["fresh 1.0", "after write 4.0", "other program 1.0", "live states 2",
                                       "zeroed 1.0", "mismatched refused", "live states 1",
                                       "same bytes, other program 1.0", "same bytes, same program 4.0"], \
        run.stdout + run.stderr[-2000:]
    assert "state 's' is float32[4, 32] here but float32[2, 64] in another delegate of this program" in run.stderr


C_API_SCRIPT = """
import sys, numpy as np
from cuda_gqa.runtime import cpp_delegate, load_backend_library
lib = load_backend_library()
rc, handle = cpp_delegate.init(open(sys.argv[1], "rb").read())
assert rc == 0, rc
print("live states", lib.cuda_gqa_live_state_count())
x, out = np.ones((2, 64), np.float32), np.full((2, 64), 7.0, np.float32)
assert cpp_delegate.execute(handle, [cpp_delegate.host_tensor(a) for a in (x, x, out)]) == 0
print("out", out[0, 0], out[1, 63])
cpp_delegate.destroy(handle)
print("live states", lib.cuda_gqa_live_state_count())
"""


def test_a_delegate_without_a_program_gets_its_own_zeroed_state_freed_with_it(fake_driver_dir, tmp_path):
    (tmp_path / "read.bin").write_bytes(pack(state_payload(pointer_args=(0, 3, 2))))
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(C_API_SCRIPT), str(tmp_path / "read.bin")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=fake_env(fake_driver_dir))
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert run.stdout.splitlines() == ["live states 1", "out 1.0 1.0", "live states 0"], run.stdout


def test_cpp_and_python_evaluate_a_state_bound_launch_alike():
    from cuda_gqa.runtime.launch_plan import ArgInfo, evaluate_launch_cpp

    data = pack(state_payload(pointer_args=(0, 3, 2)))
    tensor = lambda address: ArgInfo(dtype=fb.DType.Float32, sizes=(2, 64), strides=(64, 1), address=address)
    args = [tensor(0x10000), tensor(0x20000), tensor(0x30000), tensor(0x40000)]  # x, y, out, state
    python = LaunchPlan(data).evaluate(0, args, global_scratch=0x50000)
    cpp = evaluate_launch_cpp(data, 0, args, global_scratch=0x50000, lib=load_library())
    assert python.params == cpp.params and python.grid == cpp.grid
    assert [value for _, value in python.params[:3]] == [0x10000, 0x40000, 0x30000]  # x, the state, out
    # The state is an argument like the others: leaving it out is refused by both.
    with pytest.raises(LaunchError, match="3 delegate args, the payload expects 4"):
        LaunchPlan(data).evaluate_all(args[:3])
    with pytest.raises(LaunchError, match="3 delegate args, the payload expects 4"):
        evaluate_launch_cpp(data, 0, args[:3], global_scratch=0x50000, lib=load_library())


# The same two methods, each adding a weight kept in an external .ptd: ExecuTorch then gives each
# method a merged named-data map of its own (the .ptd's keys, then the program's), and the
# delegates must still find their program's states through it.
EXTERNAL_WEIGHTS_SCRIPT = TWO_METHOD_SCRIPT.replace("""open(sys.argv[-1], "wb").write(to_edge(methods).to_executorch().buffer)""",
                                                  "").replace("methods[name] = torch.export.export(Wrapper(lowered), inputs)", """class Weighted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lowered, self.weight = lowered, torch.nn.Parameter(torch.zeros(2, 64))

        def forward(self, x, y):
            return self.lowered(x, y) + self.weight
    methods[name] = torch.export.export(Weighted(), inputs)""") + """
import pathlib
from executorch.exir import ExecutorchBackendConfig
program = to_edge(methods).to_executorch(ExecutorchBackendConfig(external_constants=True))
open(sys.argv[-1], "wb").write(program.buffer)
program.write_tensor_data_to_file(str(pathlib.Path(sys.argv[-1]).parent))
"""

EXTERNAL_RUN_SCRIPT = """
import sys, torch
from executorch.runtime import Runtime
from cuda_gqa.runtime import load_backend_library
load_backend_library()
x, y = torch.ones(2, 64), torch.full((2, 64), 2.0)
first, second = (Runtime.get().load_program(sys.argv[1], data_path=sys.argv[2]) for _ in range(2))
first.load_method("write").execute([x, y])
print("same program", first.load_method("read").execute([x, y])[0][0, 0].item())
print("other program", second.load_method("read").execute([x, y])[0][0, 0].item())
"""


def test_methods_with_external_weights_share_their_program_states(fake_driver_dir, tmp_path):
    (tmp_path / "write.bin").write_bytes(pack(state_payload(pointer_args=(0, 1, 3))))
    (tmp_path / "read.bin").write_bytes(pack(state_payload(pointer_args=(0, 3, 2))))
    pte = tmp_path / "methods.pte"
    methods = [arg for name in ("write", "read") for arg in (name, str(tmp_path / f"{name}.bin"))]
    made = subprocess.run([sys.executable, "-c", EXTERNAL_WEIGHTS_SCRIPT, *methods, str(pte)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert made.returncode == 0, made.stderr[-3000:]
    (ptd,) = tmp_path.glob("*.ptd")
    run = subprocess.run([sys.executable, "-c", EXTERNAL_RUN_SCRIPT, str(pte), str(ptd)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT, env=fake_env(fake_driver_dir))
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert run.stdout.splitlines() == ["same program 4.0", "other program 1.0"], run.stdout + run.stderr[-2000:]
