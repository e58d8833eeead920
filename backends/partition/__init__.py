from .cuda_gqa_partitioner import AttentionDecision, CudaGqaPartitioner

__all__ = ["AttentionDecision", "CudaGqaPartitioner"]
