"""Triton attention kernels compiled ahead of time by backends/aot."""
