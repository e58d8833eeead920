"""A model's identical kernels are stored once per .pte: adding layers whose payloads differ
(here in softmax scale) adds far less than a set of cubins each."""

import pytest
import torch
from executorch.exir import to_edge_transform_and_lower
from torch import nn
from torch.nn import functional as F

from cuda_gqa.backends.partition import CudaGqaPartitioner
from cuda_gqa.backends.serialization import deserialize_payload
from cuda_gqa.runtime.pte_delegates import cuda_gqa_delegates


class DistinctLayers(nn.Module):
    def __init__(self, layers: int):
        super().__init__()
        self.layers = layers

    def forward(self, q, k, v):
        for i in range(self.layers):
            q = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.1 + i / 100, enable_gqa=True)
        return q


def export(layers: int) -> bytes:
    inputs = (torch.zeros(1, 4, 16, 32, dtype=torch.float16), torch.zeros(1, 1, 16, 32, dtype=torch.float16),
              torch.zeros(1, 1, 16, 32, dtype=torch.float16))
    partitioner = CudaGqaPartitioner(archs=["sm_80"], ptx=True)
    edge = to_edge_transform_and_lower(torch.export.export(DistinctLayers(layers), inputs), partitioner=[partitioner])
    assert sum(d.delegated for d in partitioner.report) == layers
    return edge.to_executorch().buffer


@pytest.fixture(scope="module")
def programs():
    return {layers: export(layers) for layers in (1, 4)}


def test_size_grows_by_well_under_a_cubin_set_per_layer(programs):
    payloads, named_data = cuda_gqa_delegates(programs[4])
    assert len(set(payloads)) == 4  # no two payloads alike: ExecuTorch could not share them itself
    _, one_layer_images = cuda_gqa_delegates(programs[1])
    assert named_data == one_layer_images  # the 4-layer program holds exactly one layer's images
    image_set = sum(map(len, one_layer_images.values()))
    per_layer = (len(programs[4]) - len(programs[1])) / 3
    assert per_layer < image_set / 20, (per_layer, image_set)


def test_every_key_a_payload_names_is_in_the_program(programs):
    payloads, named_data = cuda_gqa_delegates(programs[4])
    for data in payloads:
        payload = deserialize_payload(data)
        for plan in payload.plans:
            for kernel in plan.kernels:
                # PTX: in the plans listing no arch (the fallback for GPUs no plan names).
                assert kernel.ptx is None and (len(plan.archs) or kernel.ptxKey.decode() in named_data)
                for cubin in kernel.cubins:
                    assert cubin.image is None and cubin.imageKey.decode() in named_data
