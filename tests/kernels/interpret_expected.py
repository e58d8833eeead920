"""What the interpreter scripts compare a kernel's output with (imported by both)."""

import torch

from cuda_gqa.backends.kernels.reference import reference_attention


def expected_output(case, q, k, v, scale):
    if case.get("top_left_causal"):
        # PyTorch's own is_causal (top-left: query i sees keys 0..i) over all of K/V.
        return torch.nn.functional.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), is_causal=True, scale=scale, enable_gqa=True)
    return reference_attention(q, k, v, is_causal=case["causal"], scale=scale)


def kernel_keys(case) -> int:
    """L_kv as the kernel gets it: top-left causal cuts the keys to the first L_q (as the AOT stage does)."""
    return case["l_q"] if case.get("top_left_causal") else case["l_kv"]
