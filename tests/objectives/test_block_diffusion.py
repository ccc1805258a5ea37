"""The Fast-dLLM v2 block layout: which position sees which (by hand), the clean view equals a
plain causal forward, noisy blocks see only their block and earlier clean blocks, run_model's
views, unsupported attention is refused, and the block ELBO by hand."""

from types import SimpleNamespace

import pytest
import torch
from tiny_models import tiny_model

from wrinklefree.block_diffusion import (
    block_diffusion_forward,
    block_diffusion_mask,
    check_layout_support,
    document_ids,
)
from wrinklefree.objectives import DLMObjective, Requirements, run_model


def rows(text: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row.split()[1]] for row in text.strip().splitlines()])


def test_two_block_layout_by_hand():
    # one document of 4 tokens, blocks {0, 1} and {2, 3}; input [clean c0..c3 | noisy n0..n3]
    expected = rows("""
        c0 10000000
        c1 11000000
        c2 11100000
        c3 11110000
        n0 00001100
        n1 00001100
        n2 11000011
        n3 11000011
    """)
    got = block_diffusion_mask(torch.tensor([[0, 1, 2, 3]]), block_size=2, copies=1)
    assert got.shape == (1, 1, 8, 8)
    assert torch.equal(got[0, 0], expected)


def test_packed_documents_never_see_each_other():
    # two documents of 2 tokens each (positions restart), blocks of 2: one block per document
    expected = rows("""
        c0 10000000
        c1 11000000
        c2 00100000
        c3 00110000
        n0 00001100
        n1 00001100
        n2 00000011
        n3 00000011
    """)
    got = block_diffusion_mask(torch.tensor([[0, 1, 0, 1]]), block_size=2, copies=1)
    assert torch.equal(got[0, 0], expected)
    assert document_ids(torch.tensor([[0, 1, 0, 1, 2, 0]])).tolist() == [[1, 1, 2, 2, 2, 3]]


def test_two_noisy_copies_share_the_clean_copy_and_ignore_each_other():
    got = block_diffusion_mask(torch.tensor([[0, 1, 2, 3]]), block_size=2, copies=2)[0, 0]
    assert got.shape == (12, 12)
    assert torch.equal(got[4:8, :4], got[8:12, :4])  # the same clean keys
    assert not got[4:8, 8:12].any() and not got[8:12, 4:8].any()
    assert not got[:4, 4:].any()  # clean queries never see noisy keys


def test_padding_keys_are_hidden_and_no_row_is_empty():
    valid = torch.tensor([[True, True, True, False]])
    got = block_diffusion_mask(torch.tensor([[0, 1, 2, 3]]), 2, copies=1, key_valid=valid)[0, 0]
    assert not got[:3, 3].any() and not got[4:, 3].any() and not got[4:7, 7].any()
    assert got.any(-1).all()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_clean_view_equals_a_plain_causal_forward(arch, attention):
    model = tiny_model(arch)
    model.set_attn_implementation(attention)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 120, (2, 12), generator=generator)
    positions = torch.tensor([list(range(12)), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])
    noisy = ids.repeat(2, 1).masked_fill(torch.rand(4, 12, generator=generator) < 0.5, 127)
    with torch.no_grad():
        out = block_diffusion_forward(model, ids, noisy, 4, position_ids=positions)
        plain = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert out.logits.shape == (2, 12, 128) and out.dlm_logits.shape == (4, 12, 128)
    torch.testing.assert_close(out.logits, plain, atol=1e-5, rtol=0)


def test_a_noisy_block_sees_its_block_and_the_earlier_clean_blocks_only():
    model = tiny_model()
    clean = torch.randint(0, 120, (1, 12), generator=torch.Generator().manual_seed(1))
    noisy = clean.clone()
    noisy[0, 5:7] = 127

    def block_1(clean_ids, noisy_ids):  # positions 4..7
        with torch.no_grad():
            return block_diffusion_forward(model, clean_ids, noisy_ids, 4).dlm_logits[0, 4:8]

    reference = block_1(clean, noisy)
    later_clean, later_noisy, earlier_clean = clean.clone(), noisy.clone(), clean.clone()
    later_clean[0, 4:] = 3  # the clean copy of this block and after: invisible
    later_noisy[0, 8:] = 3  # the noisy copy of the next block: invisible
    earlier_clean[0, 1] = 3  # the clean copy of block 0: visible
    torch.testing.assert_close(block_1(later_clean, noisy), reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(block_1(clean, later_noisy), reference, atol=1e-6, rtol=0)
    assert not torch.allclose(block_1(earlier_clean, noisy), reference, atol=1e-4)
    inside = noisy.clone()
    inside[0, 7] = 127  # a later position of the same block: visible (bidirectional)
    assert not torch.allclose(block_1(clean, inside)[:3], reference[:3], atol=1e-4)


def test_run_model_returns_the_clean_view_and_the_noisy_views(make_batch):
    model = tiny_model()
    batch = make_batch(batch=2, length=8)
    dlm = DLMObjective(mask_token_id=127, mask_prob=0.5, block_size=4,
                       allow_vocab_mask_token=True)
    prepared = dlm.preprocess_batch(batch)
    req = Requirements(hidden_states=True, qkv_layers=[0])
    with torch.no_grad():
        out = run_model(model, prepared, req)
        plain = run_model(model, batch, req)
        teacher = run_model(model, prepared, req, teacher=True)
    assert out.dlm_logits.shape == (4, 8, 128) and out.dlm_qkv[0][0].shape == (4, 4, 8, 16)
    for got in (out, teacher):
        torch.testing.assert_close(got.logits, plain.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.hidden_states[-1], plain.hidden_states[-1], atol=1e-5,
                                   rtol=0)
        torch.testing.assert_close(got.qkv[0][2], plain.qkv[0][2], atol=1e-5, rtol=0)
    assert not hasattr(teacher, "dlm_logits")


def test_unsupported_attention_is_refused_with_the_fix():
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        check_layout_support(flash)
    window = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa",
                                                    sliding_window=8))
    check_layout_support(window, 8)
    with pytest.raises(ValueError, match="at most 8 tokens"):
        check_layout_support(window, 9)
