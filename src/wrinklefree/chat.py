"""``wf chat``: a multi-turn conversation with an instruct model, read line by line from stdin.

Two backends give the same loop: a GGUF file runs in llama.cpp (:mod:`wrinklefree.llamacpp`,
its stored chat template), anything else in PyTorch with the tokenizer's chat template
(``apply_chat_template``) and :func:`wrinklefree.generate.generate_ar`. Each turn re-encodes the
whole conversation, so the model sees exactly what its template produces for the history.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TextIO

from wrinklefree.errors import UserInputError
from wrinklefree.llamacpp import Sampling

Reply = Callable[[list[dict[str, str]]], Iterator[str]]
EXIT_WORDS = {"/exit", "/quit"}


def torch_reply(model, tokenizer, sampling: Sampling) -> Reply:
    """A reply function for a PyTorch model: chat template -> generate_ar -> streamed text."""
    import torch

    from wrinklefree.generate import eos_token_ids, generate_ar, stream_text

    if not getattr(tokenizer, "chat_template", None):
        raise UserInputError("this tokenizer has no chat template: it is not an instruct model; "
                             "use `wf generate` instead of `wf chat`")
    eos = eos_token_ids(model, tokenizer)

    def reply(messages: list[dict[str, str]]) -> Iterator[str]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        chunks = generate_ar(model, ids, max_new_tokens=sampling.max_new_tokens,
                             temperature=sampling.temperature, top_p=sampling.top_p,
                             seed=sampling.seed, eos_token_id=eos,
                             repetition_penalty=sampling.repetition_penalty)
        yield from stream_text(tokenizer, chunks)

    return reply


def llamacpp_reply(llm, sampling: Sampling) -> Reply:
    """A reply function for a GGUF loaded in llama.cpp (its own chat template)."""
    from wrinklefree.llamacpp import chat_reply, chat_template

    if chat_template(llm) is None:  # refuse before the first line is read
        list(chat_reply(llm, [], sampling))
    return lambda messages: chat_reply(llm, messages, sampling)


def run_chat(reply: Reply, stdin: TextIO | None = None, stdout: TextIO | None = None, *,
             system: str | None = None) -> list[dict[str, str]]:
    """Read user turns from ``stdin`` (one per line; blank lines skipped; EOF or /exit ends),
    stream each reply to ``stdout``, and return the conversation. Prompts ('> ') are shown only
    when stdin is a terminal, so piped output holds just the replies, one per line."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout  # looked up now: tests swap them
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line or line.strip() in EXIT_WORDS:
            return messages
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.strip()})
        pieces = []
        for piece in reply(messages):
            pieces.append(piece)
            stdout.write(piece)
            stdout.flush()
        stdout.write("\n")
        stdout.flush()
        messages.append({"role": "assistant", "content": "".join(pieces).strip()})
