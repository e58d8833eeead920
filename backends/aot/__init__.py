"""Ahead-of-time compilation: Triton kernels to cubins, without a GPU."""
