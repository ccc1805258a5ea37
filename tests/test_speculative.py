"""Self-speculative decoding: the text of greedy AR, fewer forwards when the drafts are right."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from tiny_models import tiny_model
from transformers import DynamicCache

from wrinklefree.block_diffusion import block_diffusion_forward
from wrinklefree.generate import DecodeStats, NotDLMModelError, generate_ar
from wrinklefree.speculative import generate_speculative, verify_and_draft

VOCAB = 128
MASK = VOCAB - 1


def collect(chunks) -> list[int]:
    return [t for chunk in chunks for t in chunk]


def speculative(model, ids, n, block_size, **options) -> tuple[list[list[int]], DecodeStats]:
    stats = DecodeStats()
    chunks = list(generate_speculative(model, ids, mask_token_id=MASK, max_new_tokens=n,
                                       block_size=block_size, stats=stats, **options))
    return chunks, stats


class Clock(nn.Module):
    """A stub LM that predicts position i + 1's token as (i + 1) % 100 from any input, so greedy AR
    writes the positions and every draft is right, except that a mask input predicting a position
    in ``wrong`` drafts the wrong token. It records its keys in the cache, so the cache's length
    gives the positions when none are passed (as in AR decoding)."""

    def __init__(self, wrong: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.wrong = set(wrong)

    def forward(self, input_ids, position_ids=None, past_key_values=None, use_cache=None,
                attention_mask=None, logits_to_keep=0, **kwargs):
        length = input_ids.shape[1]
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + length)[None]
        if past_key_values is not None:
            past_key_values.update(torch.zeros(1, 1, length, 1), torch.zeros(1, 1, length, 1), 0)
        target = (position_ids[0] + 1) % 100  # (L,)
        for i, predicted in enumerate(target.tolist()):
            if input_ids[0, i] == MASK and predicted in self.wrong:
                target[i] = (predicted + 1) % 100
        logits = torch.nn.functional.one_hot(target, VOCAB).float()[None] * 20.0  # (1, L, V)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


@pytest.mark.parametrize(
    ("attention", "prompt_len", "block_size"),
    [("sdpa", 1, 2), ("sdpa", 4, 3), ("sdpa", 7, 8), ("eager", 3, 4), ("eager", 8, 8)],
)
def test_tokens_equal_greedy_ar_on_a_tiny_model(attention, prompt_len, block_size):
    model = tiny_model(vocab_size=VOCAB)
    model.set_attn_implementation(attention)
    ids = torch.randint(0, MASK, (1, prompt_len), generator=torch.Generator().manual_seed(7))
    for n in (1, 2, 13):
        chunks, stats = speculative(model, ids, n, block_size)
        assert collect(chunks) == collect(generate_ar(model, ids, max_new_tokens=n))
        assert stats.new_tokens == n and stats.model_calls <= n - 1  # never more than AR's


def test_eos_and_repetition_penalty_give_the_ar_text():
    model, ids = tiny_model(vocab_size=VOCAB), torch.tensor([[5, 9, 17, 3, 8]])
    text = collect(generate_ar(model, ids, max_new_tokens=12))
    for eos in (text[0], text[5], {text[7], 1000}):
        got = collect(speculative(model, ids, 12, 4, eos_token_id=eos)[0])
        assert got == collect(generate_ar(model, ids, max_new_tokens=12, eos_token_id=eos))
        assert got[-1] in ({eos} if isinstance(eos, int) else eos)
    penalised = collect(generate_ar(model, ids, max_new_tokens=16, repetition_penalty=1.5))
    assert penalised != collect(generate_ar(model, ids, max_new_tokens=16))
    assert collect(speculative(model, ids, 16, 4, repetition_penalty=1.5)[0]) == penalised


@pytest.mark.parametrize(
    ("prompt", "n", "wrong", "chunks", "checked", "accepted"),
    [
        # aligned prompt, every draft right: a block costs two forwards (its opening token
        # commits alone, drafting the rest; the next forward accepts the whole rest)
        (4, 8, (), [[4], [5, 6, 7], [8], [9, 10, 11]], [2, 2], [2, 2]),
        # unaligned: position 7 leaves nothing to draft, position 8 opens a block
        (6, 6, (), [[6], [7], [8], [9, 10, 11]], [1, 1], [1, 1]),
        # a wrong draft at position 10: 9 commits alone with the free token 10, which the
        # re-drafted 11 then follows (the first draft: checked 3 times, right twice; the
        # second checked once, after the first draft of [5, 6, 7] was right)
        (4, 8, (10,), [[4], [5, 6, 7], [8], [9], [10, 11]], [3, 1], [2, 1]),
    ],
)
def test_forwards_commit_the_accepted_drafts(prompt, n, wrong, chunks, checked, accepted):
    model, ids = Clock(wrong), torch.arange(prompt)[None]
    got, stats = speculative(model, ids, n, 4)
    assert got == chunks
    assert collect(got) == collect(generate_ar(model, ids, max_new_tokens=n))
    assert stats.model_calls == len(chunks)  # one forward commits each chunk
    assert (stats.drafts_checked, stats.drafts_accepted) == (checked, accepted)


def test_stops_at_eos_inside_the_accepted_drafts():
    ids = torch.arange(4)[None]
    assert speculative(Clock(), ids, 8, 4, eos_token_id=6)[0] == [[4], [5, 6]]
    assert speculative(Clock(), ids, 8, 4, eos_token_id=4)[0] == [[4]]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_one_forward_is_the_causal_view_and_the_training_layouts_noisy_view(attention):
    """The pending tokens get a plain causal forward's logits; the draft block gets exactly the
    noisy-view logits the training forward gives the same block (clean earlier blocks, the block
    bidirectional)."""
    model = tiny_model(vocab_size=VOCAB)
    model.set_attn_implementation(attention)
    seq, pending = [5, 9, 17, 3, 8], [40, 41, 42]  # pending at positions 5-7
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.tensor([seq]), past_key_values=cache, use_cache=True)
        clean, noisy = verify_and_draft(model, cache, seq, pending, MASK, 4, 100,
                                        torch.device("cpu"))
        causal = model(input_ids=torch.tensor([seq + pending])).logits[0, len(seq):]
        window = torch.tensor([seq + pending])  # 8 positions: blocks 0 and 1
        masked = torch.tensor([seq + pending[:1] + [MASK, MASK]])  # block 1 = [8, 40, mask, mask]
        training = block_diffusion_forward(model, window, masked, 4).dlm_logits[0, 4:]
    torch.testing.assert_close(clean, causal, atol=1e-5, rtol=0)
    assert noisy.start == 4
    torch.testing.assert_close(noisy.logits, training, atol=1e-5, rtol=0)


def test_needs_a_mask_token_and_one_row():
    ids = torch.tensor([[1, 2]])
    with pytest.raises(NotDLMModelError, match="no mask token"):
        collect(generate_speculative(Clock(), ids, mask_token_id=None, max_new_tokens=4))
    with pytest.raises(ValueError, match="shape"):
        collect(generate_speculative(Clock(), ids.repeat(2, 1), mask_token_id=MASK,
                                     max_new_tokens=4))


def test_cli_speculative_prints_the_ar_text_and_its_pace(tmp_path, capsys):
    from transformers import GPT2Tokenizer

    from wrinklefree.assets import gpt2_tokenizer_dir
    from wrinklefree.cli import main

    tokenizer = GPT2Tokenizer.from_pretrained(gpt2_tokenizer_dir())
    model = tiny_model(vocab_size=len(tokenizer), seed=1)
    model.config.mask_token_id = len(tokenizer) - 2
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    def cli(*flags):
        main(["generate", str(tmp_path), "--prompt", "In the beginning", "--max-new-tokens",
              "10", "--block-size", "4", *flags])
        return capsys.readouterr()

    ar, spec = cli(), cli("--mode", "speculative")
    assert spec.out == ar.out
    assert "1.00 new tokens per forward" in ar.err and "new tokens per forward" in spec.err
    assert cli("--mode", "speculative", "--repetition-penalty", "2").out == cli(
        "--repetition-penalty", "2").out
    with pytest.raises(SystemExit):
        cli("--mode", "speculative", "--temperature", "0.7")
    assert "reproduces greedy decoding" in capsys.readouterr().err
