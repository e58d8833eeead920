from .cuda_gqa_partitioner import AttentionDecision, CudaGqaPartitioner
from .whole_model_partitioner import CudaGqaModelPartitioner

__all__ = ["AttentionDecision", "CudaGqaModelPartitioner", "CudaGqaPartitioner"]
