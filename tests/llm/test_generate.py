"""The generate loop on CPU-only .pte files: chunked prefill, decode, sampling, CLI."""

import pytest
import torch

from cuda_gqa.export.llm.generate import PteDecoder, eager_greedy, generate, main, sample


def _eager_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    return eager_greedy(model, prompt, new_tokens)[0]


@pytest.mark.parametrize("prompt_len", [5, 8, 11, 16])  # padded, one chunk, overlapping chunks, two chunks
def test_greedy_generation_matches_eager(cpu_pte, prompt_len):
    _, model, pte = cpu_pte
    prompt = torch.randint(0, 256, (prompt_len,), generator=torch.Generator().manual_seed(prompt_len)).tolist()
    runner = PteDecoder(pte)
    seen = []
    result = generate(runner, prompt, 6, on_token=lambda token, count, seconds: seen.append((token, count)))
    assert result.tokens == _eager_greedy(model, prompt, 6)
    assert seen == list(zip(result.tokens, range(1, 7)))
    assert result.prompt_tokens == prompt_len and result.prefill_seconds > 0


def test_generation_stops_at_a_stop_id_and_at_the_cache_end(cpu_pte):
    _, _, pte = cpu_pte
    runner = PteDecoder(pte)
    greedy = generate(runner, [1, 2, 3], 5).tokens
    stop = greedy[1]
    assert generate(runner, [1, 2, 3], 5, stop_ids={stop}).tokens == greedy[:greedy.index(stop) + 1]
    assert len(generate(runner, list(range(20)), 50).tokens) == runner.max_seq_len - 20


def test_positions_outside_the_cache_are_refused_before_the_program_runs(cpu_pte):
    _, _, pte = cpu_pte
    runner = PteDecoder(pte)
    last = runner.max_seq_len - 1
    for position in (runner.max_seq_len, runner.max_seq_len + 5, -1):
        with pytest.raises(ValueError, match=f"position {position} is outside the program's cache "
                                             f"\\(positions 0..{last}\\)"):
            runner.decode(1, position)
    assert runner.decode(1, last).shape == (runner.prefill(list(range(3))).shape[0],)


def test_sampling():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    assert sample(logits) == 0
    g = torch.Generator().manual_seed(0)
    # top_p below the top token's probability keeps only it.
    assert {sample(logits, temperature=1.0, top_p=0.3, generator=g) for _ in range(50)} == {0}
    draws = torch.tensor([sample(logits, temperature=1.0, generator=g) for _ in range(4000)])
    frequencies = torch.bincount(draws, minlength=4) / len(draws)
    torch.testing.assert_close(frequencies, torch.softmax(logits, 0), atol=0.03, rtol=0)
    # top_p=0.9 drops the least likely token (the top three hold 0.93).
    assert 3 not in {sample(logits, temperature=1.0, top_p=0.9, generator=g) for _ in range(500)}


def test_cli_prints_tokens_and_speed(cpu_pte, capsys):
    _, model, pte = cpu_pte
    assert main(["--pte", str(pte), "--prompt-ids", "3,1,4,1,5", "--max-new-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    assert f"tokens: {','.join(map(str, _eager_greedy(model, [3, 1, 4, 1, 5], 4)))}\n" in out
    assert "prefill: 5 tokens in " in out and "decode: 3 steps in " in out
    assert "[generate] 4 tokens, " in err and "tokens/s" in err


def test_cli_refuses_text_without_a_tokenizer(cpu_pte, capsys):
    _, _, pte = cpu_pte
    assert main(["--pte", str(pte), "--prompt", "hello"]) == 2
    assert "--prompt needs --tokenizer" in capsys.readouterr().err
