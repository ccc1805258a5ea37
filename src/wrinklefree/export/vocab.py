"""Tokenizer metadata for GGUF files: the vocabulary, merges, special ids and pre-tokenizer name.

llama.cpp re-implements each BPE pre-tokenizer (the regex that splits text before merges) under a
name stored in ``tokenizer.ggml.pre``. llama.cpp's own converter identifies it by encoding a fixed
probe string and hashing the token ids (``get_vocab_base_pre`` in ``convert_hf_to_gguf.py``); we
do the same with the probe string copied from there and the hashes of the families wrinklefree
exports (Llama-style byte-level BPE). Special ids, merges and the chat template are read by
gguf-py's own :class:`gguf.SpecialVocab`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import gguf

# Probe text of llama.cpp's convert_hf_to_gguf.py (get_vocab_base_pre), character for character.
CHKTXT = (
    '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) '
    '\U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) \u2705 '
    '\U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 3.3 '
    '3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7'
    '\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 '
    '?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= '
    '\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 '
    '\'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(token ids of CHKTXT)) -> llama.cpp pre-tokenizer name (from convert_hf_to_gguf.py).
PRE_TOKENIZER_HASHES = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM(2)
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5/2
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3
}


def _is_byte_level(tokenizer_json: dict) -> bool:
    """A BPE model whose pre-tokenizer (alone or inside a Sequence) is ByteLevel (GPT-2 style)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return tokenizer_json.get("model", {}).get("type") == "BPE" and any(
        p.get("type") == "ByteLevel" for p in parts
    )


def _plain_gpt2_split(tokenizer_json: dict) -> bool:
    """The pre-tokenizer is exactly ByteLevel with its built-in GPT-2 regex."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True)


def tokenizer_pre(tokenizer, tokenizer_json: dict) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer (``tokenizer.ggml.pre``)."""
    ids = tokenizer.encode(CHKTXT, add_special_tokens=False)
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    if digest in PRE_TOKENIZER_HASHES:
        return PRE_TOKENIZER_HASHES[digest]
    if _plain_gpt2_split(tokenizer_json):
        return "gpt-2"  # a custom byte-level BPE trained with the stock GPT-2 split
    warnings.warn(
        f"unknown BPE pre-tokenizer (probe hash {digest}); writing 'default', so llama.cpp may "
        "split some text differently from transformers. Add the hash to "
        "wrinklefree.export.vocab.PRE_TOKENIZER_HASHES with llama.cpp's name for it.",
        stacklevel=2,
    )
    return "default"


def add_tokenizer(
    writer: gguf.GGUFWriter, tokenizer_dir: str | Path, vocab_size: int,
    mask_token_id: int | None = None,
) -> None:
    """Write a byte-level BPE tokenizer (``tokenizer.json`` in ``tokenizer_dir``) as GGUF metadata.

    Ids without a token (the model's vocab padded past the tokenizer) become ``[PAD<id>]`` of type
    UNUSED, as llama.cpp's converter does. ``mask_token_id`` (diffusion students) is written as
    ``tokenizer.ggml.mask_token_id``.
    """
    from transformers import AutoTokenizer

    tokenizer_dir = Path(tokenizer_dir)
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{tokenizer_dir} has no tokenizer.json; save the tokenizer next to the model "
            "(`wf convert` does) or pass tokenizer_dir"
        )
    tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
    if not _is_byte_level(tokenizer_json):
        raise ValueError(
            f"{path}: only byte-level BPE tokenizers (GPT-2 style: SmolLM, Llama 3, Qwen) can be "
            "exported to GGUF by wrinklefree; this one is not"
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = tokenizer.get_vocab()  # token -> id, added tokens included
    if max(vocab.values()) >= vocab_size:
        raise ValueError(
            f"tokenizer has ids up to {max(vocab.values())} but the model's vocab_size is "
            f"{vocab_size}; the tokenizer does not belong to this model"
        )
    by_id = {i: tok for tok, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(tokenizer_pre(tokenizer, tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    if mask_token_id is not None:
        special.special_token_ids["mask"] = int(mask_token_id)
    special.add_to_gguf(writer, quiet=True)
