"""Training documents sampled from a model (``kind: teacher_samples``).

Data-free QAT (LLM-QAT, Liu et al. 2023, arXiv 2305.17888, Sec. 2.1): a quantized student is
distilled best on text its teacher *generates*, because that text covers what the teacher knows,
not the style of whatever corpus is at hand (training on the ASV alone teaches Bible English and
forgets the rest). Each document starts from one token, drawn uniformly from a range of ids (as
LLM-QAT does) or the tokenizer's BOS, and continues by nucleus sampling (``top_p``,
``temperature``) for up to ``max_new_tokens`` tokens or until the model draws EOS.

Trajectories (CLLM, Kou et al. 2024, arXiv 2403.00835; dParallel, arXiv 2509.26488): with
``first_token: text`` each document starts with the first ``prompt_tokens`` tokens of a document
of real text (``prompts``) and continues with the model's own decoding, greedy at
``temperature: 0``. Sampled from the student itself, every continuation token is a deterministic
function of its prefix: what a diffusion student learns to draft in parallel for
self-speculative decoding (:mod:`wrinklefree.speculative`).

The documents become a token source like any other: :class:`~wrinklefree.data.cache.TokenStore`
calls :meth:`TeacherSampler.documents` instead of the tokenizer and writes the same ``.npy``
shards, keyed by the model, every sampling setting and the count, so a rerun reuses them; the
mixture weights mix them with real text. Generation is batched with a KV cache (our own decode
loop, :meth:`TeacherSampler._continue`); each batch is seeded from ``(seed, index of its first
document)``, so the samples are reproducible and a half-built cache resumes with exactly the
documents it would have had, and the training process's RNG is left untouched.

Speed: the progress bar shows tokens/s per batch (docs/data.md).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from wrinklefree.data.config import SamplingConfig
from wrinklefree.data.identity import tokenizer_fingerprint
from wrinklefree.data.sources import iter_documents
from wrinklefree.errors import UserInputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def text_prompts(sampling: SamplingConfig, tokenizer) -> torch.Tensor:
    """(num_docs, prompt_tokens) long: the first ``prompt_tokens`` ids (``tokenizer``'s) of the
    first ``num_docs`` documents of ``sampling.prompts`` that are at least that long."""
    length, prompts = sampling.prompt_tokens, []
    docs = iter_documents(sampling.prompt_source())
    while len(prompts) < sampling.num_docs:
        chunk = [d for _, d in zip(range(256), docs, strict=False)]
        if not chunk:
            raise UserInputError(
                f"sampling.prompts={sampling.prompts!r} has {len(prompts)} documents of at least "
                f"{length} tokens, fewer than sampling.num_docs={sampling.num_docs}; lower "
                "num_docs or prompt_tokens, or give more text")
        ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        prompts += [doc[:length] for doc in ids if len(doc) >= length]
    return torch.tensor(prompts[: sampling.num_docs], dtype=torch.long)


def batch_seed(seed: int, first_doc: int) -> int:
    """The torch seed of the batch whose first document is number ``first_doc``."""
    return int(np.random.SeedSequence([seed, first_doc]).generate_state(1)[0])


class TeacherSampler:
    """Samples documents from ``sampling.model`` and returns them as ids of ``tokenizer`` (the
    student's): the model's own ids when the two tokenizers are the same, else decoded and
    re-tokenised. The model is loaded on first use and dropped by :meth:`release`."""

    def __init__(self, sampling: SamplingConfig, tokenizer):
        self.cfg, self.tokenizer = sampling, tokenizer
        self.model, self.model_tokenizer, self.same_tokenizer = None, None, True
        self.prompts: torch.Tensor | None = None  # first_token: text, (num_docs, P)
        self.tokens_per_s: float | None = None  # of the last batch

    def _load(self) -> None:
        from wrinklefree.models import load_model, load_tokenizer

        device = self.cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(self.cfg.model, dtype=DTYPES[self.cfg.dtype]).to(device).eval()
        self.model_tokenizer = load_tokenizer(self.cfg.model)
        mine, theirs = tokenizer_fingerprint(self.tokenizer), tokenizer_fingerprint(
            self.model_tokenizer)
        self.same_tokenizer = (mine["hash"], mine["size"]) == (theirs["hash"], theirs["size"])
        if self.cfg.first_token == "text":
            self.prompts = text_prompts(self.cfg, self.model_tokenizer)

    def release(self) -> None:
        """Free the model (the cache holds everything it produced)."""
        self.model = None

    def documents(self, start: int, count: int, bar=None) -> list[list[int]]:
        """Documents ``[start, start + count)`` (clipped to ``num_docs``) as lists of ids,
        without EOS; ``bar`` (a tqdm) advances per batch and shows tokens/s."""
        count = max(0, min(count, self.cfg.num_docs - start))
        docs: list[list[int]] = []
        for first in range(start, start + count, self.cfg.batch_size):
            batch = self.sample_batch(first, min(self.cfg.batch_size, start + count - first), bar)
            docs.extend(batch)
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{self.tokens_per_s:.0f}")
        return docs

    @torch.no_grad()
    def sample_batch(self, first_doc: int, n: int, bar=None) -> list[list[int]]:
        """``n`` documents, seeded by ``(seed, first_doc)``; ``bar`` shows the decoding step."""
        if self.model is None:
            self._load()
        cfg, eos = self.cfg, self.model_tokenizer.eos_token_id
        device = next(self.model.parameters()).device
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(batch_seed(cfg.seed, first_doc))
            prompt = self._first_tokens(first_doc, n).to(device)  # (n, P)
            out = torch.cat([prompt, self._continue(prompt, eos, bar)], dim=1).cpu()  # (n, P + T)
        skip = 1 if cfg.first_token == "bos" else 0  # BOS is not document text
        # a diffusion student's <|mask|> is never text: a document ends there, as at EOS
        stops = {eos, getattr(self.model.config, "mask_token_id", None)} - {None}
        docs = [_until(row[skip:].tolist(), stops) for row in out]
        self.tokens_per_s = sum(map(len, docs)) / max(time.perf_counter() - started, 1e-9)
        if not self.same_tokenizer:
            texts = self.model_tokenizer.batch_decode(docs, skip_special_tokens=True)
            docs = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return docs  # one per sequence, even empty (EOS drawn first): the count is the key

    def _continue(self, prompt: torch.Tensor, eos: int | None, bar=None) -> torch.Tensor:
        """(n, P) first tokens -> (n, T) sampled continuations (:func:`generate_batch`)."""
        from wrinklefree.generate import generate_batch

        cfg = self.cfg

        def show(step: int) -> None:
            if bar is not None:
                bar.set_postfix(token=f"{step}/{cfg.max_new_tokens}")

        return generate_batch(self.model, prompt, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, top_p=cfg.top_p, eos_token_id=eos,
                              on_step=show)

    def _first_tokens(self, first_doc: int, n: int) -> torch.Tensor:
        """(n, P) first tokens of documents ``first_doc``..: the text prompts (P =
        prompt_tokens), or (P = 1) the BOS or uniform over the id range minus special tokens."""
        if self.prompts is not None:
            return self.prompts[first_doc : first_doc + n]
        tok = self.model_tokenizer
        if self.cfg.first_token == "bos":
            if tok.bos_token_id is None:
                raise ValueError(f"sampling.first_token=bos but {self.cfg.model}'s tokenizer has "
                                 "no BOS token; use first_token: random")
            return torch.full((n, 1), tok.bos_token_id, dtype=torch.long)
        vocab = self.model.get_input_embeddings().num_embeddings
        lo, hi = self.cfg.first_token_range or (0, min(len(tok), vocab))
        if hi > vocab:
            raise ValueError(f"sampling.first_token_range=[{lo}, {hi}) exceeds the model's "
                             f"{vocab} embeddings; use hi <= {vocab}")
        special = set(tok.all_special_ids)
        candidates = torch.tensor([i for i in range(lo, hi) if i not in special])
        if candidates.numel() == 0:
            raise ValueError(f"sampling.first_token_range=[{lo}, {hi}) holds only special "
                             "tokens; widen it")
        return candidates[torch.randint(len(candidates), (n,))].view(n, 1)


def _until(ids: list[int], stops: set[int]) -> list[int]:
    """The ids before the first stop id (generate pads finished rows with EOS)."""
    return ids[: next((i for i, t in enumerate(ids) if t in stops), len(ids))]
