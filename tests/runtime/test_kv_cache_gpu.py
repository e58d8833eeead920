"""The delegate-owned KV cache on a real GPU: the cache-write kernel against torch's
index_copy_, and prefill then decode steps through payloads sharing their cache states
(CubinLauncher with one StateBuffers; the C++ backend through its C API) against an eager
cache, including a second sequence from position 0 over the stale rows of the first.
Skipped (tests/conftest.py) where torch sees no CUDA device; the ExecuTorch end-to-end
test also skips where executorch is not installed."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

B, H_Q, H_KV, D, MAX_SEQ_LEN, PREFILL_LEN = 1, 8, 2, 64, 512, 8


def device_arch() -> int:
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def tolerance(dtype):
    return dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cache_write_kernel_matches_index_copy(dtype):
    from cuda_gqa.backends.kernels.kv_cache_write import kv_cache_write, kv_cache_write_grid

    gen = torch.Generator(device="cuda").manual_seed(0)
    b, h, s, d, l = 2, 3, 40, 80, 6  # D=80: padded to BLOCK_D=128
    k_cache = torch.randn(b, h, s, d, device="cuda", dtype=dtype, generator=gen)
    v_cache = torch.randn(b, h, s, d, device="cuda", dtype=dtype, generator=gen)
    # Strided new rows ([B, L, H, D] storage), as a model's transposed projections are.
    k_new = torch.randn(b, l, h, d, device="cuda", dtype=dtype, generator=gen).transpose(1, 2)
    v_new = torch.randn(b, l, h, d, device="cuda", dtype=dtype, generator=gen).transpose(1, 2)
    positions = torch.tensor([30, 31, 32, 33, 34, 35], device="cuda")
    expected_k, expected_v = k_cache.clone().index_copy_(2, positions, k_new), v_cache.clone()
    expected_v.index_copy_(2, positions, v_new)
    kv_len = torch.zeros(1, device="cuda", dtype=torch.int32)
    kv_cache_write[kv_cache_write_grid(l, b, h)](
        k_new, v_new, positions, k_cache, v_cache, kv_len, l, s, *k_new.stride()[:3], *v_new.stride()[:3],
        *k_cache.stride()[:3], *v_cache.stride()[:3], NUM_HEADS_KV=h, HEAD_DIM=d, BLOCK_D=128, BLOCK_L=8)
    torch.cuda.synchronize()
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
    assert kv_len.item() == 36
    # A position past the cache is skipped and kv_len stops at the cache length.
    kv_cache_write[kv_cache_write_grid(1, b, h)](
        k_new, v_new, torch.tensor([s], device="cuda"), k_cache, v_cache, kv_len, 1, s, *k_new.stride()[:3],
        *v_new.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3], NUM_HEADS_KV=h, HEAD_DIM=d, BLOCK_D=128,
        BLOCK_L=1)
    torch.cuda.synchronize()
    assert torch.equal(k_cache, expected_k) and kv_len.item() == s


def cached_payload(dtype, l_new: int, new_rows_rank: int = 4) -> bytes:
    """One layer's attention over a delegate-owned cache: inputs q, k_new, v_new, positions,
    mask [1, 1, L, S] (bool); output; states "k" and "v"."""
    from cuda_gqa.backends.attention_plan import AttentionArgs, build_attention_payload
    from cuda_gqa.backends.kv_cache_plan import KvCacheArgs

    return build_attention_payload(
        dtype=dtype, batch=B, num_heads_q=H_Q, num_heads_kv=H_KV, head_dim=D, l_q=l_new, l_kv=MAX_SEQ_LEN,
        is_causal=False, mask_shape=(1, 1, l_new, MAX_SEQ_LEN), mask_dtype=torch.bool, archs=[device_arch()],
        args=AttentionArgs(query=0, key=1, value=2, mask=4, out=5),
        cache=KvCacheArgs(k_new=1, v_new=2, positions=3, k_state="k", v_state="v", max_seq_len=MAX_SEQ_LEN,
                          new_rows_rank=new_rows_rank))


class EagerLayer:
    """The decoder's attention over a static cache, in float32: index_copy_ then masked attention."""

    def __init__(self):
        self.k = torch.zeros(B, H_KV, MAX_SEQ_LEN, D, device="cuda")
        self.v = torch.zeros_like(self.k)

    def __call__(self, q, k_new, v_new, positions, mask):
        from cuda_gqa.backends.kernels.reference import reference_attention

        self.k.index_copy_(2, positions, k_new.float())
        self.v.index_copy_(2, positions, v_new.float())
        return reference_attention(q, self.k, self.v, attn_mask=mask)


def causal_mask(positions):
    keys = torch.arange(MAX_SEQ_LEN, device="cuda")
    return (keys[None, :] <= positions[:, None])[None, None]


def step_inputs(dtype, positions, gen):
    l = positions.numel()
    q = torch.randn(B, H_Q, l, D, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(B, H_KV, l, D, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(B, H_KV, l, D, device="cuda", dtype=dtype, generator=gen)
    return q, k, v, positions, causal_mask(positions)


def run_sequence(prefill, decode, dtype, seed, prompt_len=5, steps=6):
    """Prefill a padded prompt, then decode `steps` tokens; each output checked against
    the eager cache on its real rows. Returns the outputs."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    eager, outputs = EagerLayer(), []
    positions = torch.arange(PREFILL_LEN, device="cuda")  # rows prompt_len.. are padding, overwritten later
    inputs = step_inputs(dtype, positions, gen)
    out = prefill(*inputs)
    expected = eager(*inputs)
    torch.testing.assert_close(out[:, :, :prompt_len].float(), expected[:, :, :prompt_len], **tolerance(dtype))
    outputs.append(out[:, :, :prompt_len].clone())
    for pos in range(prompt_len, prompt_len + steps):
        inputs = step_inputs(dtype, torch.tensor([pos], device="cuda"), gen)
        out = decode(*inputs)
        torch.testing.assert_close(out.float(), eager(*inputs), **tolerance(dtype), msg=f"decode at {pos}")
        outputs.append(out.clone())
    torch.cuda.synchronize()
    return outputs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prefill_and_decode_share_the_cache_and_a_new_sequence_needs_no_reset(dtype):
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher, StateBuffers

    states = StateBuffers()
    prefill = CubinLauncher(cached_payload(dtype, PREFILL_LEN), states=states)
    decode = CubinLauncher(cached_payload(dtype, 1), states=states)
    assert set(states.tensors) == {"k", "v"} and states.tensors["k"].shape == (B, H_KV, MAX_SEQ_LEN, D)
    first = run_sequence(prefill, decode, dtype, seed=1, steps=8)
    # A second, shorter sequence from position 0 over the first one's stale rows
    # gives what launchers with fresh (zeroed) states give.
    again = run_sequence(prefill, decode, dtype, seed=2, prompt_len=3, steps=2)
    fresh_states = StateBuffers()
    fresh = run_sequence(CubinLauncher(cached_payload(dtype, PREFILL_LEN), states=fresh_states),
                         CubinLauncher(cached_payload(dtype, 1), states=fresh_states), dtype, seed=2, prompt_len=3,
                         steps=2)
    for a, b in zip(again, fresh):
        assert torch.equal(a, b)
    assert len(first) == 9
    states.zero_()
    assert not states.tensors["k"].any()


def test_new_rows_without_their_batch_dim():
    """`cache[:, :, positions] = new` traces new as [H_kv, L, D] (B = 1): the cache write reads it so."""
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    dtype = torch.float16
    decode = CubinLauncher(cached_payload(dtype, 1, new_rows_rank=3))
    gen, eager = torch.Generator(device="cuda").manual_seed(4), EagerLayer()
    for pos in range(10):
        q, k, v, positions, mask = step_inputs(dtype, torch.tensor([pos], device="cuda"), gen)
        out = decode(q, k[0], v[0], positions, mask)
        torch.testing.assert_close(out.float(), eager(q, k, v, positions, mask), **tolerance(dtype))
    torch.cuda.synchronize()
    assert torch.equal(decode.states.tensors["k"][:, :, :10].float(), eager.k[:, :, :10])


def test_cpp_backend_keeps_the_cache_across_executes():
    """The C++ backend's own delegate (C API; its states are its own): decode steps from
    position 0, the cache written on the device by each execute and read by the next."""
    import cuda_gqa.runtime as cr
    from cuda_gqa.runtime import cpp_delegate

    torch.cuda.init()
    lib = cr.load_backend_library()
    dtype = torch.float16
    rc, handle = cpp_delegate.init(cached_payload(dtype, 1))
    assert rc == cpp_delegate.ERROR_OK, rc
    try:
        assert lib.cuda_gqa_live_state_count() >= 2
        gen, eager = torch.Generator(device="cuda").manual_seed(3), EagerLayer()
        for pos in range(12):
            q, k, v, positions, mask = step_inputs(dtype, torch.tensor([pos], device="cuda"), gen)
            out = torch.empty(B, H_Q, 1, D, device="cuda", dtype=dtype)
            torch.cuda.synchronize()
            tensors = [cpp_delegate.torch_tensor(t) for t in (q, k, v, positions, mask, out)]
            assert cpp_delegate.execute(handle, tensors) == cpp_delegate.ERROR_OK
            torch.testing.assert_close(out.float(), eager(q, k, v, positions, mask), **tolerance(dtype))
    finally:
        cpp_delegate.destroy(handle)


def test_exported_llm_prefill_then_decode_match_eager(tmp_path):
    """export_llm with the cache in the delegates, run by ExecuTorch's runtime on this GPU."""
    pytest.importorskip("executorch.runtime", reason="executorch is not installed")
    import dataclasses

    from executorch.runtime import Runtime

    import cuda_gqa.runtime as cr
    from cuda_gqa.export.llm.decoder import Decoder
    from cuda_gqa.export.llm.pipeline import export_llm
    from cuda_gqa.export.llm.presets import PRESETS, randomize_weights

    config = dataclasses.replace(PRESETS["tiny-llama3"], num_layers=2)
    model = randomize_weights(Decoder(config, max_seq_len=64)).eval()
    result = export_llm(model, prefill_len=PREFILL_LEN, archs=[f"sm_{device_arch()}"], cpu_partitioner=None,
                        whole_model=False, out=tmp_path / "llama.pte")
    assert all("KV cache owned by the delegate" in d.reason for r in result.reports.values() for d in r)
    cr.load_backend_library()
    program = Runtime.get().load_program(result.pte)
    prefill, decode = program.load_method("prefill"), program.load_method("decode")
    for sequence, prompt_len in enumerate((5, 3)):  # the second starts over at position 0
        prompt = torch.randint(0, config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(sequence))
        padded = torch.cat([prompt, torch.zeros(1, PREFILL_LEN - prompt_len, dtype=torch.long)], dim=1)
        model.reset_buffers()
        with torch.no_grad():
            expected = model(prompt, torch.tensor([0]))[:, -1:]
        prefill.execute([padded, torch.tensor([0])])  # its one row of logits is the padding's
        # The prompt's last token again, by decode (as generate.py does): its logits.
        (logits,) = decode.execute([prompt[:, -1:], torch.tensor([prompt_len - 1])])
        torch.testing.assert_close(logits, expected, atol=1e-2, rtol=1e-2)
        token = logits[:, -1].argmax(-1, keepdim=True)
        for pos in range(prompt_len, prompt_len + 6):
            with torch.no_grad():
                expected = model(token, torch.tensor([pos]))
            (logits,) = decode.execute([token, torch.tensor([pos])])
            torch.testing.assert_close(logits, expected, atol=1e-2, rtol=1e-2, msg=f"sequence {sequence}, pos {pos}")
            token = logits[:, -1].argmax(-1, keepdim=True)


LLAMA_MAX_SEQ = 64


def llama_payload(dtype, owned: bool) -> bytes:
    """ExecuTorch's llama attention (llama::custom_sdpa, with its llama::update_cache writes when
    owned): [B, L, H, D] tensors, L dynamic up to LLAMA_MAX_SEQ - 1, a 0-dim int64 start position.
    Inputs q, K and V (the new rows when owned, else the whole caches), start; output; owned:
    states "k" and "v" [B, S, H_kv, D]."""
    from cuda_gqa.backends.attention_plan import AttentionArgs, build_attention_payload
    from cuda_gqa.backends.kv_cache_plan import KvCacheArgs, StartPosition
    from cuda_gqa.backends.layout import BSHD

    cache = KvCacheArgs(k_new=1, v_new=2, positions=None, k_state="k", v_state="v", max_seq_len=LLAMA_MAX_SEQ)
    return build_attention_payload(
        dtype=dtype, batch=B, num_heads_q=H_Q, num_heads_kv=H_KV, head_dim=D, l_q=(1, LLAMA_MAX_SEQ - 1),
        l_kv=LLAMA_MAX_SEQ, is_causal=True, archs=[device_arch()], generic=False,
        args=AttentionArgs(query=0, key=1, value=2, out=4, layout=BSHD), start=StartPosition(arg=3),
        cache=cache if owned else None)


@pytest.mark.parametrize("owned", [True, False], ids=["cache-owned", "caches-as-inputs"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_llama_attention_from_a_start_position(dtype, owned):
    """A 20-token prefill (forward kernel), a 3-token chunk and decode steps (split-KV decode) at
    start_pos onwards: keys [0, start + L), causal from start (what llama::custom_sdpa does)."""
    from cuda_gqa.backends.kernels.reference import reference_attention
    from cuda_gqa.runtime.cubin_launcher import CubinLauncher

    attention = CubinLauncher(llama_payload(dtype, owned))
    gen = torch.Generator(device="cuda").manual_seed(5)
    k_cache = torch.zeros(B, LLAMA_MAX_SEQ, H_KV, D, device="cuda", dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    start = 0
    for length in (20, 3, 1, 1):
        q = torch.randn(B, length, H_Q, D, device="cuda", dtype=dtype, generator=gen)
        k, v = (torch.randn(B, length, H_KV, D, device="cuda", dtype=dtype, generator=gen) for _ in range(2))
        k_cache[:, start:start + length], v_cache[:, start:start + length] = k, v
        position = torch.tensor(start, device="cuda")
        out = attention(q, k, v, position) if owned else attention(q, k_cache, v_cache, position)
        expected = reference_attention(q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2),
                                       is_causal=True, kv_len=start + length).transpose(1, 2)
        torch.cuda.synchronize()
        assert out.shape == q.shape
        torch.testing.assert_close(out.float(), expected, **tolerance(dtype), msg=f"{length} tokens at {start}")
        start += length
    if owned:
        assert torch.equal(attention.states.tensors["k"], k_cache)
        assert torch.equal(attention.states.tensors["v"], v_cache)
