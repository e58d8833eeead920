"""payload_interpreter.py maps a payload's Constant pointers to CPU tensors of the case's named data."""

from __future__ import annotations

import numpy as np
import torch

from cuda_gqa.backends.named_images import image_key
from cuda_gqa.backends.payload_constants import PayloadConstants, constant_param
from cuda_gqa.backends.serialization import payload_generated as fb
from cuda_gqa.backends.serialization import serialize_payload

from payload_interpreter import run_in_subprocess

K, P = fb.ParamKind, fb.ParamType
CUBIN = b"\x7fELF stands in for add_weight_rows"


def add_weight_payload(constants: PayloadConstants, weight: torch.Tensor) -> bytes:
    """out = x + w over float32 [3, 40], w the payload constant "w"."""
    spec = lambda: fb.TensorSpecT(dtype=fb.DType.Float32, sizes=[3, 40])  # noqa: E731
    params = [fb.KernelParamT(kind=K.TensorPointer, type=P.Pointer, arg=0, divisibility=16),
              constant_param(constants.index("w", weight)),
              fb.KernelParamT(kind=K.TensorPointer, type=P.Pointer, arg=1, divisibility=16),
              fb.KernelParamT(kind=K.TensorSize, type=P.Int32, arg=0, dim=1)]
    kernel = fb.KernelT(name="add_weight_rows", cubins=[fb.CubinT(arch=80, image=np.frombuffer(CUBIN, np.uint8))],
                        numWarps=1, params=params,
                        grid=[fb.GridDimT(factors=[fb.GridFactorT(arg=0, dim=0, divisor=1)]), fb.GridDimT(),
                              fb.GridDimT()])
    payload = fb.PayloadT(inputs=[spec()], outputs=[spec()], plans=[fb.LaunchPlanT(kernels=[kernel])],
                          constants=constants.specs())
    return serialize_payload(payload)


def test_constant_pointers_read_the_named_data(tmp_path):
    constants, weight = PayloadConstants(), torch.randn(3, 40)
    payload = add_weight_payload(constants, weight)
    kernels = {image_key(CUBIN): {"module": "interpreter_kernels", "name": "add_weight_rows",
                                  "signature": {"x_ptr": "*fp32", "w_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"},
                                  "constexprs": {"BLOCK": 64}}}
    x = torch.randn(3, 40)
    (result,) = run_in_subprocess({"kernels": kernels, "programs": [
        {"payload": payload, "calls": [[x], [2 * x]], "named_data": constants.named_data()}]}, tmp_path)
    torch.testing.assert_close(result["outputs"], [[x + weight], [2 * x + weight]], rtol=0, atol=0)
