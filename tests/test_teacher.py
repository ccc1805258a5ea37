"""Teacher: frozen and in eval mode, no gradients, padded logits trimmed, tokenizer checked."""

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from wrinklefree.objectives import Requirements
from wrinklefree.teacher import Teacher, check_same_tokenizer


def tiny(vocab: int = 40) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)


def tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(words)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token=words[0]))
    )


WORDS = ["<unk>"] + [f"w{i}" for i in range(31)]  # 32 tokens; the models pad to 40 rows
BATCH = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "position_ids": torch.arange(4)[None]}


def test_frozen_eval_no_grad_and_trimmed():
    model = tiny().train()
    teacher = Teacher(model, tokenizer=tokenizer(WORDS))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    out = teacher(BATCH, Requirements(hidden_states=True))
    assert out.logits.shape == (1, 4, 32) and not out.logits.requires_grad
    with torch.no_grad():
        full = model(input_ids=BATCH["input_ids"]).logits
    assert torch.allclose(out.logits, full[..., :32], atol=1e-6)
    assert len(out.hidden_states) == 2


def test_dtype_cast_and_to():
    teacher = Teacher(tiny(), dtype=torch.bfloat16)
    assert next(teacher.model.parameters()).dtype == torch.bfloat16
    assert teacher.to(torch.float32) is teacher
    assert next(teacher.model.parameters()).dtype == torch.float32


def test_tokenizers_must_agree():
    student_tok = tokenizer([*WORDS, "<|mask|>"])  # an extra student token is fine
    check_same_tokenizer(tokenizer(WORDS), student_tok)
    other = tokenizer(["<unk>"] + [f"x{i}" for i in range(31)])
    with pytest.raises(ValueError, match="tokenizers differ: 31 of 32"):
        Teacher(tiny(), tokenizer=other, student_tokenizer=student_tok)
