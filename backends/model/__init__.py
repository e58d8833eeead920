"""The whole decoder step as one delegate: the graph read as an op plan, fused, then emitted.

ops.py:        the plan's values and ops (what the kernels library runs)
recognize.py:  an exported decoder step -> ModelPlan (patterns of ATen nodes -> ops)
fuse.py:       graph-level fusions on the plan (norm into linear, QKV and gate/up concat, ...)
reference.py:  the plan evaluated with PyTorch ops (the specification the kernels are tested against)
"""
