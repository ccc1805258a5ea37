"""Packed windows: position ids restart per document and give per-document logits."""

from __future__ import annotations

import torch

from wrinklefree.data.packing import collate, make_window, packed_position_ids


def test_position_ids_restart_after_each_eos():
    eos = 0
    ids = torch.tensor([5, 6, 0, 7, 0, 8, 9])
    assert packed_position_ids(ids, eos).tolist() == [0, 1, 2, 0, 1, 0, 1]
    starts_with_eos = torch.tensor([[0, 3, 4, 0], [3, 4, 5, 6]])  # batched (B, L)
    assert packed_position_ids(starts_with_eos, eos).tolist() == [[0, 0, 1, 2], [0, 1, 2, 3]]


def test_window_and_collate():
    window = make_window(torch.tensor([4, 2, 9]).numpy().astype("uint16"), eos=2)
    assert window["input_ids"].dtype == torch.long
    assert window["labels"].tolist() == [4, 2, 9]  # labels = input_ids; the objective shifts
    assert window["position_ids"].tolist() == [0, 1, 0]
    batch = collate([window, make_window(torch.tensor([1, 1, 1]), eos=2)])
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "input_ids": (2, 3), "labels": (2, 3), "position_ids": (2, 3)}


def test_packed_window_logits_equal_each_document_alone(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    eos = tokenizer.eos_token_id
    docs = ["In the beginning God created", "the heavens and the earth.", "Let there be light"]
    pieces = [tokenizer(d, add_special_tokens=False)["input_ids"] + [eos] for d in docs]
    window = make_window(torch.tensor(sum(pieces, [])), eos)
    with torch.no_grad():
        packed = model(input_ids=window["input_ids"][None],
                       position_ids=window["position_ids"][None],
                       attention_mask=None, use_cache=False).logits[0]  # (L, V)
        plain_causal = model(input_ids=window["input_ids"][None], use_cache=False).logits[0]
        start = 0
        for piece in pieces:
            alone = model(input_ids=torch.tensor([piece]), use_cache=False).logits[0]  # (l, V)
            torch.testing.assert_close(packed[start:start + len(piece)], alone, atol=1e-5, rtol=0)
            start += len(piece)
    assert start == len(window["input_ids"])
    # the comparison has teeth: without position ids the later documents see the earlier ones
    assert not torch.allclose(plain_causal[len(pieces[0]):], packed[len(pieces[0]):], atol=1e-3)


def test_a_batch_of_two_packed_windows_gives_each_document_its_own_logits():
    """Two collated windows with different document boundaries in one (2, L) forward: every
    document's logits equal those of the document run alone (batch size > 1: the position ids
    of each row drive that row's document-aware mask)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval().double()
    eos = 1
    rows = [[[5, 6, 7, eos], [8, 9, eos], [10, 11, 12]],  # documents of 4, 3 and 3 tokens
            [[20, eos], [21, 22, 23, 24, 25, 26, eos], [27]]]  # 2, 7 and 1
    batch = collate([make_window(torch.tensor(sum(docs, [])), eos) for docs in rows])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2],
                                              [0, 1, 0, 1, 2, 3, 4, 5, 6, 0]]
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=None, use_cache=False).logits  # (2, L, V)
        for row, docs in enumerate(rows):
            start = 0
            for doc in docs:
                alone = model(input_ids=torch.tensor([doc]), use_cache=False).logits[0]
                torch.testing.assert_close(packed[row, start:start + len(doc)], alone,
                                           atol=1e-9, rtol=0)
                start += len(doc)
