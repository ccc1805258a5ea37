from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from transformers import DynamicCache, GPT2Tokenizer, LlamaConfig, LlamaForCausalLM

from wrinklefree.assets import gpt2_tokenizer_dir
from wrinklefree.block_diffusion import block_diffusion_forward, record_block_size
from wrinklefree.cli import main
from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.errors import UserInputError
from wrinklefree.generate import (
    DecodeStats,
    NotDLMModelError,
    block_attention_mask,
    encode_prompt,
    eos_token_ids,
    generate_ar,
    generate_batch,
    generate_block_diffusion,
    stream_text,
)
from wrinklefree.models import resolve_source
from wrinklefree.sampling import next_token, nucleus, penalize_repeats, sample

VOCAB = 128
MASK = VOCAB - 1


def tiny_llama(vocab_size: int = VOCAB, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return GPT2Tokenizer.from_pretrained(gpt2_tokenizer_dir())


@pytest.fixture(scope="module")
def gpt2_model(gpt2_tokenizer):
    """A tiny random Llama with GPT-2's vocabulary: random tokens include partial UTF-8 bytes."""
    return tiny_llama(vocab_size=len(gpt2_tokenizer))


class Bigram(nn.Module):
    """A stub LM whose logits at position t depend only on the token at t (no attention, so the
    cache is irrelevant): logits = table[input_ids]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # (V, V)

    def forward(self, input_ids, past_key_values=None, use_cache=None, logits_to_keep=0,
                **kwargs):
        logits = self.table[input_ids]  # (B, L, V)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def successor_bigram(mask_predicts_itself: bool = False) -> Bigram:
    """Real token v predicts v + 1 with near certainty; the mask token carries no information
    (uniform logits) or, for a model never trained to fill masks, predicts the mask itself."""
    table = torch.zeros(VOCAB, VOCAB)
    for v in range(VOCAB - 1):
        table[v, (v + 1) % (VOCAB - 1)] = 20.0
    if mask_predicts_itself:
        table[MASK, MASK] = 20.0
    return Bigram(table)


def collect(chunks) -> list[int]:
    return [t for chunk in chunks for t in chunk]


# ----------------------------------------------------------------------------- sampling


def test_nucleus_hand_computed():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])

    def kept(top_p):  # the nucleus as a dense (V,) distribution
        weights, ids = nucleus(probs, top_p)
        return torch.zeros(4).scatter(-1, ids, weights)

    # sorted 0.5, 0.3, 0.15, 0.05: mass before each = 0, 0.5, 0.8, 0.95
    torch.testing.assert_close(kept(0.7), torch.tensor([0.0, 0.625, 0.0, 0.375]))
    torch.testing.assert_close(kept(0.5), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(kept(0.81), probs / 0.95 * torch.tensor([1.0, 1.0, 0.0, 1.0]))


@pytest.mark.parametrize(("top_p", "rounds"), [(0.7, 8), (0.81, 8), (1.0, 8), (0.7, 0)])
def test_sample_follows_the_nucleus(top_p, rounds):
    """The rejection sampler draws the renormalised nucleus (rounds=0: the sorted fallback)."""
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3]).repeat(20_000, 1)  # (N, 4)
    tokens = sample(probs, top_p, torch.Generator().manual_seed(0), rounds=rounds)  # (N,)
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    weights, ids = nucleus(probs[0], top_p)
    expected = torch.zeros(4).scatter(-1, ids, weights)
    assert bool((freq[expected == 0] == 0).all())  # never outside the nucleus
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)  # ~4.5 sd of 20k draws


def test_batched_samples_stay_in_each_rows_nucleus():
    logits = torch.tensor([[0.0, 5.0, 4.5, -9.0], [3.0, -9.0, -9.0, 2.9]]).repeat(50, 1)  # (100, 4)
    tokens = next_token(logits, temperature=1.0, top_p=0.9,
                        generator=torch.Generator().manual_seed(0))  # (100,)
    assert tokens.shape == (100,)
    assert set(tokens[0::2].tolist()) == {1, 2} and set(tokens[1::2].tolist()) == {0, 3}
    assert next_token(logits).tolist() == [1, 0] * 50


def test_sampling_respects_seeds_and_tiny_top_p_is_greedy():
    model, ids = tiny_llama(), torch.tensor([[1, 2, 3]])

    def run(seed, top_p=1.0):
        return collect(generate_ar(model, ids, max_new_tokens=12, temperature=1.5, top_p=top_p,
                                   seed=seed))

    assert run(0) == run(0)
    assert any(run(0) != run(s) for s in (1, 2, 3))
    greedy = collect(generate_ar(model, ids, max_new_tokens=12))
    assert run(5, top_p=1e-6) == greedy


def test_next_token_rejects_bad_settings():
    with pytest.raises(ValueError, match="top_p"):
        collect(generate_ar(tiny_llama(), torch.tensor([[1]]), max_new_tokens=2, top_p=0.0))
    with pytest.raises(ValueError, match="temperature"):
        collect(generate_ar(tiny_llama(), torch.tensor([[1]]), max_new_tokens=2, temperature=-1))
    assert int(next_token(torch.tensor([0.1, 3.0, -1.0]))) == 1
    with pytest.raises(ValueError, match="repetition_penalty"):
        generate_batch(tiny_llama(), torch.tensor([[1]]), max_new_tokens=2, repetition_penalty=0)


def test_repetition_penalty_hand_computed():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    # seen: 2 / 2 = 1 and -1 * 2 = -2 (both drop); unseen tokens keep their logits
    assert penalize_repeats(logits, seen, 2.0).tolist() == [[1.0, -2.0, 0.5, 3.0]]


def test_repetition_penalty_breaks_a_loop_and_equals_hf_generate():
    """A bigram loop 3 -> 4 -> 3: greedy repeats it; penalised, the second-best successor wins.
    On a real model the penalty gives transformers' tokens (prompt included in what is seen)."""
    table = torch.zeros(VOCAB, VOCAB)
    table[3, 4], table[4, 3], table[3, 5], table[5, 6] = 5.0, 5.0, 4.0, 5.0
    loop = successor_bigram()
    loop.table = table
    assert collect(generate_ar(loop, torch.tensor([[3]]), max_new_tokens=4)) == [4, 3, 4, 3]
    # θ = 2: 4 -> 3 still wins (5 / 2 > 0), but back at 3 the seen 4 scores 5 / 2 < 4 for 5
    assert collect(generate_ar(loop, torch.tensor([[3]]), max_new_tokens=4,
                               repetition_penalty=2.0)) == [4, 3, 5, 6]
    model, ids = tiny_llama(), torch.tensor([[5, 9, 17, 3], [8, 2, 2, 40]])
    for row in ids:
        expected = model.generate(row[None], max_new_tokens=20, do_sample=False,
                                  repetition_penalty=1.3)[0, ids.shape[1]:].tolist()
        assert collect(generate_ar(model, row[None], max_new_tokens=20, repetition_penalty=1.3,
                                   eos_token_id=model.generation_config.eos_token_id)) == expected
    batched = generate_batch(model, ids, max_new_tokens=20, repetition_penalty=1.3)
    assert batched[0].tolist() == collect(generate_ar(model, ids[:1], max_new_tokens=20,
                                                      repetition_penalty=1.3))


# ----------------------------------------------------------------------------- autoregressive


def test_greedy_equals_hf_generate():
    model, ids = tiny_llama(), torch.tensor([[5, 9, 17, 3]])
    expected = model.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.shape[1]:].tolist()
    got = collect(generate_ar(model, ids, max_new_tokens=20,
                              eos_token_id=model.generation_config.eos_token_id))
    assert got == expected


def test_batched_greedy_rows_equal_one_row_decoding():
    model, ids = tiny_llama(), torch.tensor([[5, 9, 17, 3], [8, 2, 2, 40], [1, 1, 1, 1]])
    got = generate_batch(model, ids, max_new_tokens=12)  # (3, 12)
    for row, prompt in zip(got.tolist(), ids, strict=True):
        assert row == collect(generate_ar(model, prompt[None], max_new_tokens=12))


def test_batched_rows_pad_with_eos_after_they_finish():
    got = generate_batch(successor_bigram(), torch.tensor([[3], [5]]), max_new_tokens=10,
                         eos_token_id=6)
    assert got.tolist() == [[4, 5, 6], [6, 6, 6]]  # row 1 drew EOS first; stops when all have


def test_ar_stops_after_eos():
    got = collect(generate_ar(successor_bigram(), torch.tensor([[3]]), max_new_tokens=10,
                              eos_token_id=[6, 99]))
    assert got == [4, 5, 6]


def test_streaming_yields_the_same_text(gpt2_tokenizer, gpt2_model):
    ids = encode_prompt(gpt2_tokenizer, "In the beginning")
    tokens = collect(generate_ar(gpt2_model, ids, max_new_tokens=30, temperature=1.0, seed=0))
    pieces = list(stream_text(gpt2_tokenizer, generate_ar(gpt2_model, ids, max_new_tokens=30,
                                                          temperature=1.0, seed=0)))
    assert len(pieces) > 1
    assert "".join(pieces) == gpt2_tokenizer.decode(tokens, skip_special_tokens=True)


def test_streaming_holds_back_partial_characters(gpt2_tokenizer):
    # GPT-2 byte tokens 447 + 247 are the two halves of the UTF-8 bytes of "’" (U+2019)
    assert gpt2_tokenizer.decode([447]) == "\ufffd"
    pieces = list(stream_text(gpt2_tokenizer, [[40], [447], [247], [82]]))
    assert pieces == ["I", "’", "s"]


# ----------------------------------------------------------------------------- block diffusion


def reference_block_diffusion(model, ids, max_new_tokens, block_size):
    """Threshold > 1 without any cache, straight from the training forward: every step re-runs
    [clean | noisy] with the block layout over the whole text, reads the block's first token from
    the clean view (AR) and unmasks the single most confident masked position of the noisy view
    (token shift: logits at i - 1 predict token i)."""
    seq, prompt = ids[0].tolist(), ids.shape[1]
    start = prompt // block_size * block_size
    while len(seq) - prompt < max_new_tokens:
        if start == len(seq):  # the block opens after committed text: one AR token
            with torch.no_grad():
                out = block_diffusion_forward(model, torch.tensor([seq]), torch.tensor([seq]),
                                              block_size)
            seq.append(int(out.logits[0, -1].argmax()))
        end = min(start + block_size, prompt + max_new_tokens)
        seq += [MASK] * (end - len(seq))
        while MASK in seq[start:]:
            with torch.no_grad():
                out = block_diffusion_forward(model, torch.tensor([seq]), torch.tensor([seq]),
                                              block_size)
            logits = out.dlm_logits[0, start : end - 1].clone()  # predicts start + 1 .. end - 1
            logits[:, MASK] = -float("inf")
            conf, tok = logits.softmax(-1).max(-1)
            conf[torch.tensor(seq[start + 1 : end]) != MASK] = -1
            j = int(conf.argmax())
            seq[start + 1 + j] = int(tok[j])
        start = end
    return seq[prompt:]


@pytest.mark.parametrize("prompt", [[5, 9, 17, 3], [5, 9, 17, 3, 8, 2]])  # aligned, unaligned
def test_cached_block_diffusion_equals_the_training_layout_recomputed(prompt):
    model, ids = tiny_llama(), torch.tensor([prompt])
    got = collect(generate_block_diffusion(model, ids, mask_token_id=MASK, max_new_tokens=11,
                                           block_size=4, threshold=2.0, require_dlm=False))
    assert got == reference_block_diffusion(model, ids, 11, 4)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_fully_unmasked_block_gives_the_training_forwards_logits(attention):
    """The decoder's denoising pass (cached clean prefix + bidirectional block) is the training
    layout's noisy view: with nothing masked, the logits agree."""
    model = tiny_llama()
    model.set_attn_implementation(attention)
    ids = torch.randint(0, MASK, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        training = block_diffusion_forward(model, ids, ids, 4).dlm_logits[0]  # (12, V)
        cache = DynamicCache()
        model(input_ids=ids[:, :8], past_key_values=cache, use_cache=True)  # blocks 0, 1
        mask = block_attention_mask(model, 4, 8, ids.device)
        decoding = model(input_ids=ids[:, 8:], past_key_values=cache, use_cache=True,
                         attention_mask=mask).logits[0]
    torch.testing.assert_close(decoding, training[8:], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("threshold", "max_steps", "denoise_calls"),
    [(2.0, None, 8), (0.0, None, 3), (2.0, 2, 6)],  # blocks: AR token + 3, + 3, + 2 masks
)
def test_block_diffusion_fills_exactly_and_counts_steps(threshold, max_steps, denoise_calls):
    model, ids = tiny_llama(), torch.tensor([[5, 9, 17, 3]])
    stats = DecodeStats()
    blocks = list(generate_block_diffusion(
        model, ids, mask_token_id=MASK, max_new_tokens=11, block_size=4, threshold=threshold,
        max_steps=max_steps, require_dlm=False, stats=stats,
    ))
    assert [len(b) for b in blocks] == [4, 4, 3]
    assert MASK not in collect(blocks)
    # threshold > 1: exactly one token per step; 0: every masked position in one step;
    # max_steps=2 finishes each block in 2 steps. Two commit passes cache blocks 1 and 2.
    assert stats.model_calls == denoise_calls + 2
    assert stats.new_tokens == 11


def test_threshold_above_one_costs_one_forward_per_token_like_ar():
    model, ids = tiny_llama(), torch.tensor([[5, 9, 17, 3]])
    dlm, ar = DecodeStats(), DecodeStats()
    collect(generate_block_diffusion(model, ids, mask_token_id=MASK, max_new_tokens=12,
                                     block_size=4, threshold=1.5, require_dlm=False, stats=dlm))
    collect(generate_ar(model, ids, max_new_tokens=12, stats=ar))
    assert dlm.new_tokens == ar.new_tokens == 12
    assert dlm.model_calls == ar.model_calls == 11  # the first token comes from the prompt pass


def test_uninformative_masks_degenerate_to_left_to_right_greedy():
    model, ids = successor_bigram(), torch.tensor([[10, 20]])
    stats = DecodeStats()
    got = collect(generate_block_diffusion(model, ids, mask_token_id=MASK, max_new_tokens=9,
                                           block_size=4, threshold=0.5, stats=stats))
    assert got == collect(generate_ar(model, ids, max_new_tokens=9)) == list(range(21, 30))
    # blocks [10 20 | 21 22], [23 | 24 25 26], [27 | 28 29]: 7 denoising steps, 2 commits
    assert stats.model_calls == 7 + 2


def test_sampled_block_diffusion_is_seeded_and_tiny_top_p_is_greedy():
    model, ids = tiny_llama(), torch.tensor([[5, 9, 17, 3]])

    def run(**options):
        return collect(generate_block_diffusion(model, ids, mask_token_id=MASK, max_new_tokens=10,
                                                block_size=4, threshold=0.5, require_dlm=False,
                                                **options))

    assert run(temperature=1.5, seed=0) == run(temperature=1.5, seed=0)
    assert any(run(temperature=1.5, seed=0) != run(temperature=1.5, seed=s) for s in (1, 2, 3))
    assert run(temperature=1.0, top_p=1e-6, seed=4) == run()
    with pytest.raises(ValueError, match="temperature"):
        run(temperature=-1.0)


def test_block_diffusion_stops_at_eos():
    got = list(generate_block_diffusion(successor_bigram(), torch.tensor([[10]]),
                                        mask_token_id=MASK, max_new_tokens=12, block_size=4,
                                        eos_token_id=15))
    assert got == [[11, 12, 13], [14, 15]]


def test_non_dlm_models_are_refused_clearly():
    ids = torch.tensor([[10, 20]])
    with pytest.raises(NotDLMModelError, match="use --mode ar"):
        collect(generate_block_diffusion(successor_bigram(mask_predicts_itself=True), ids,
                                         mask_token_id=MASK, max_new_tokens=8))
    with pytest.raises(NotDLMModelError, match="no mask token"):
        collect(generate_block_diffusion(successor_bigram(), ids, mask_token_id=None,
                                         max_new_tokens=8))


# ----------------------------------------------------------------------------- sources, CLI


def test_run_folder_resolves_to_final(tmp_path):
    (tmp_path / "final").mkdir()
    with pytest.raises(UserInputError, match="neither a model folder"):
        resolve_source(str(tmp_path))  # a folder with an unfinished run is no model
    (tmp_path / "final" / "config.json").write_text("{}")
    assert resolve_source(str(tmp_path)) == str(tmp_path / "final")


def test_chat_needs_a_template(gpt2_tokenizer):
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompt(gpt2_tokenizer, "hi", chat=True)


def test_cli_generates_from_a_run_folder(tmp_path, gpt2_tokenizer, gpt2_model, capsys):
    model = gpt2_model
    model.save_pretrained(tmp_path / "final")
    gpt2_tokenizer.save_pretrained(tmp_path / "final")
    main(["generate", str(tmp_path), "--prompt", "In the beginning", "--max-new-tokens", "6"])
    ids = encode_prompt(gpt2_tokenizer, "In the beginning")
    eos = eos_token_ids(model, gpt2_tokenizer)
    expected = collect(generate_ar(model, ids, max_new_tokens=6, eos_token_id=eos))
    out = capsys.readouterr().out
    assert gpt2_tokenizer.decode(expected, skip_special_tokens=True) in out
    with pytest.raises(SystemExit):
        main(["generate", str(tmp_path), "--prompt", "x", "--mode", "dlm"])
    assert "use --mode ar" in capsys.readouterr().err


def test_cli_packed_generation_matches_the_fake_quant_model(tmp_path, gpt2_tokenizer, capsys):
    model = convert_model_to_bitnet(tiny_llama(vocab_size=len(gpt2_tokenizer), seed=3),
                                    calibrate=False)
    model.save_pretrained(tmp_path)
    gpt2_tokenizer.save_pretrained(tmp_path)
    main(["generate", str(tmp_path), "--packed", "--prompt", "In the beginning",
          "--max-new-tokens", "6"])
    ids = encode_prompt(gpt2_tokenizer, "In the beginning")
    eos = eos_token_ids(model, gpt2_tokenizer)
    expected = collect(generate_ar(model, ids, max_new_tokens=6, eos_token_id=eos))
    assert gpt2_tokenizer.decode(expected, skip_special_tokens=True) in capsys.readouterr().out



def save_tiny_dlm(path, tokenizer) -> LlamaForCausalLM:
    """A tiny random GPT-2-vocabulary Llama with a DLM mask token (an id it seldom predicts), as
    `wf generate --mode dlm` loads a DLM student: the decoding, not the training, is under test."""
    model = tiny_llama(vocab_size=len(tokenizer), seed=1)
    model.config.mask_token_id = len(tokenizer) - 2
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def test_cli_dlm_samples_with_the_seed(tmp_path, gpt2_tokenizer, capsys):
    model = save_tiny_dlm(tmp_path, gpt2_tokenizer)
    ids = encode_prompt(gpt2_tokenizer, "In the beginning")
    eos = eos_token_ids(model, gpt2_tokenizer)

    def library(**sampling):
        return gpt2_tokenizer.decode(collect(generate_block_diffusion(
            model, ids, mask_token_id=model.config.mask_token_id, max_new_tokens=10,
            block_size=4, eos_token_id=eos, **sampling)), skip_special_tokens=True)

    def cli(*flags):
        main(["generate", str(tmp_path), "--mode", "dlm", "--prompt", "In the beginning",
              "--max-new-tokens", "10", "--block-size", "4", *flags])
        return capsys.readouterr().out

    sampled = library(temperature=1.5, top_p=0.9, seed=7)
    assert sampled != library()  # sampling reaches the decoder: not the greedy text
    flags = ["--temperature", "1.5", "--top-p", "0.9", "--seed", "7"]
    assert sampled in cli(*flags)
    assert cli(*flags) == cli(*flags)


def test_cli_dlm_defaults_to_the_recorded_block_size(tmp_path, gpt2_tokenizer, capsys):
    model = save_tiny_dlm(tmp_path, gpt2_tokenizer)
    record_block_size(model, 4)
    model.save_pretrained(tmp_path)
    ids = encode_prompt(gpt2_tokenizer, "In the beginning")
    text = gpt2_tokenizer.decode(collect(generate_block_diffusion(
        model, ids, mask_token_id=model.config.mask_token_id, max_new_tokens=10, block_size=4,
        eos_token_id=eos_token_ids(model, gpt2_tokenizer))), skip_special_tokens=True)
    main(["generate", str(tmp_path), "--mode", "dlm", "--prompt", "In the beginning",
          "--max-new-tokens", "10"])
    assert text in capsys.readouterr().out


def test_cli_compile_gives_the_eager_greedy_tokens(tmp_path, gpt2_tokenizer, capsys,
                                                   monkeypatch):
    """--compile is wired (static cache, _int_mm packing); torch.compile is replaced by the
    identity, since inductor costs minutes (the compiled graph is measured in docs/generate.md)."""
    import wrinklefree.nn.packed as packed

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(kw) or fn)
    prepacks = []
    real_prepack = packed.onednn_prepack
    monkeypatch.setattr(packed, "onednn_prepack",
                        lambda codes: prepacks.append(1) or real_prepack(codes))
    model = convert_model_to_bitnet(tiny_llama(vocab_size=len(gpt2_tokenizer), seed=3),
                                    calibrate=False)
    model.save_pretrained(tmp_path)
    gpt2_tokenizer.save_pretrained(tmp_path)
    args = ["generate", str(tmp_path), "--packed", "--prompt", "In the beginning",
            "--max-new-tokens", "6"]
    main(args)
    eager = capsys.readouterr().out
    n_eager = len(prepacks)
    assert n_eager > 0  # eager --packed takes oneDNN's pre-packed weights where it can
    main([*args, "--compile"])
    assert capsys.readouterr().out == eager
    assert compiled == [{"backend": "inductor", "dynamic": False}]
    assert len(prepacks) == n_eager  # the compiled run packed no weight for oneDNN
    with pytest.raises(SystemExit):
        main([*args, "--compile", "--mode", "dlm"])
    assert "--compile applies to --mode ar" in capsys.readouterr().err
    main([*args, "--compile", "--repetition-penalty", "1.3"])  # the flag reaches every decoder
    penalized = capsys.readouterr().out
    main([*args, "--repetition-penalty", "1.3"])
    assert capsys.readouterr().out == penalized
    with pytest.raises(SystemExit):
        main([*args, "--mode", "dlm", "--repetition-penalty", "1.3"])
    assert "--repetition-penalty applies to --mode ar" in capsys.readouterr().err


def test_cli_repetition_penalty_defaults_to_the_models_generation_config(tmp_path, capsys,
                                                                           gpt2_tokenizer):
    """A `wf train` student carries its penalty in generation_config.json: `wf generate` decodes
    with it, says so on stderr, and an explicit --repetition-penalty wins (1 = plain greedy)."""
    model = convert_model_to_bitnet(tiny_llama(vocab_size=len(gpt2_tokenizer), seed=3),
                                    calibrate=False)
    model.generation_config.repetition_penalty = 3.0
    model.save_pretrained(tmp_path)
    gpt2_tokenizer.save_pretrained(tmp_path)

    def cli(*flags):
        main(["generate", str(tmp_path), "--prompt", "In the beginning", "--max-new-tokens",
              "12", *flags])
        return capsys.readouterr()

    default, explicit, plain = cli(), cli("--repetition-penalty", "3"), cli(
        "--repetition-penalty", "1")
    assert default.out == explicit.out != plain.out
    assert "repetition penalty 3 from the model's generation_config.json" in default.err
    assert "generation_config" not in explicit.err + plain.err


@pytest.mark.slow
def test_smollm2_chat_answer_streams_and_stops_at_eos():
    from wrinklefree.generate import load_for_generation

    model, tokenizer = load_for_generation("smollm2")
    ids = encode_prompt(tokenizer, "What is the capital of France?", chat=True)
    stats = DecodeStats()
    text = "".join(stream_text(tokenizer, generate_ar(
        model, ids, max_new_tokens=30, eos_token_id=eos_token_ids(model, tokenizer), stats=stats)))
    assert text.strip() == "The capital of France is Paris."
    assert stats.new_tokens < 30  # stopped at the chat end-of-turn token


def test_cli_sampling_flags_are_checked_by_name_before_any_model_loads(tmp_path, capsys):
    for flag, value in (("--repetition-penalty", "0"), ("--top-p", "0"), ("--temperature", "-1")):
        with pytest.raises(SystemExit):  # the folder does not exist: nothing was loaded
            main(["generate", str(tmp_path / "missing"), "--prompt", "x", flag, value])
        assert f"{flag} must be" in capsys.readouterr().err
