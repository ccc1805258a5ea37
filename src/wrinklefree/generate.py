"""Text generation: autoregressive decoding with a KV cache, and block diffusion for DLM students.

Both decoders are generators of token-id chunks, so the same loop streams to a terminal
(:func:`stream_text`) or collects the ids. They take any causal LM that accepts
``input_ids`` / ``past_key_values`` / ``use_cache`` and returns ``.logits`` (Hugging Face models,
converted BitNet models, packed models from :func:`wrinklefree.nn.packed.pack_model`).

Block diffusion follows Fast-dLLM v2 (arXiv 2509.26328) with the layout our DLM objective trains
(:mod:`wrinklefree.block_diffusion`): blocks aligned to absolute positions, committed
blocks encoded causally into a KV cache, the block being denoised attending bidirectionally to
itself and to that cache, and token shift (the logits at position i-1 predict the token at i).
Each step re-runs only the block and commits every masked position whose confidence exceeds a
threshold (at least one per step); a finished block is run once more, causally, to extend the
cache, and its last logits give the next block's first token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from transformers import DynamicCache

from wrinklefree.block_diffusion import attention_bias, model_dtype
from wrinklefree.models import load_model, load_tokenizer, resolve_source
from wrinklefree.sampling import check_sampling, eos_set, pick_token, sample, seen_tokens

NOT_DLM_HINT = "this model was not trained with the DLM objective; use --mode ar"


class NotDLMModelError(ValueError):
    """Raised when block diffusion is asked of a model that cannot fill in mask tokens."""


@dataclass
class DecodeStats:
    """What a decoder did: forward passes over the new text (the prompt pass excluded).

    Self-speculation also counts, per draft index j (0 = the first draft after the certain
    token), how often draft j was checked (every draft before it was accepted) and accepted:
    the acceptance rate each draft position reaches is what sets its tokens per forward.
    """

    new_tokens: int = 0
    model_calls: int = 0
    drafts_checked: list[int] = field(default_factory=list)
    drafts_accepted: list[int] = field(default_factory=list)

    def count_drafts(self, drafts: int, accepted: int) -> None:
        """One verification of ``drafts`` drafts, the first ``accepted`` of them accepted."""
        checked = min(accepted + 1, drafts)  # draft j is checked when draft j - 1 was accepted
        _add_counts(self.drafts_checked, [1] * checked)
        _add_counts(self.drafts_accepted, [1] * accepted + [0] * (checked - accepted))

    def add_drafts(self, other: DecodeStats) -> None:
        """Add ``other``'s draft counts to these (one tally over several prompts)."""
        _add_counts(self.drafts_checked, other.drafts_checked)
        _add_counts(self.drafts_accepted, other.drafts_accepted)


def _add_counts(total: list[int], counts: list[int]) -> None:
    """total += counts, element-wise, total grown to counts' length."""
    total.extend([0] * (len(counts) - len(total)))
    for j, count in enumerate(counts):
        total[j] += count


# ----------------------------------------------------------------------------- loading


def load_for_generation(src: str, *, packed: bool = False,
                        onednn: bool = True) -> tuple[nn.Module, object]:
    """Model (eval mode) and tokenizer from a run folder or anything ``load_model`` accepts.

    ``packed=True`` replaces every BitLinear by a :class:`PackedBitLinear` (int8 codes, int8
    activations: faster than fp32 at 4x less linear-weight memory), on oneDNN's pre-packed
    weights, or with ``onednn=False`` on ``torch._int_mm``, which ``torch.compile`` can trace
    (:mod:`wrinklefree.compiled`).
    """
    src = resolve_source(src)
    model = load_model(src)
    if packed:
        from wrinklefree.nn.packed import pack_model

        pack_model(model, onednn=onednn)
    return model, load_tokenizer(src)


def encode_prompt(tokenizer, prompt: str, *, chat: bool = False) -> torch.Tensor:
    """Prompt -> input_ids (1, L); ``chat`` wraps it as one user turn with the chat template."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat: this tokenizer has no chat template; drop --chat")
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise ValueError("the prompt is empty after tokenization; give at least one token")
    return torch.tensor([ids], dtype=torch.long)


def mask_token_id_of(model: nn.Module, tokenizer=None) -> int | None:
    """The DLM mask token id: ``config.mask_token_id`` (set by the DLM objective), else the
    tokenizer's mask token, else None."""
    token_id = getattr(model.config, "mask_token_id", None)
    if token_id is None and tokenizer is not None:
        token_id = getattr(tokenizer, "mask_token_id", None)
    return token_id


def model_repetition_penalty(model: nn.Module) -> float:
    """The repetition penalty a model recommends for itself, ``generation_config.
    repetition_penalty`` (where ``wf train`` writes its ``training.sample_repetition_penalty`` and
    transformers' ``generate()`` reads it), else 1.0 (off)."""
    theta = getattr(getattr(model, "generation_config", None), "repetition_penalty", None)
    return 1.0 if theta is None else float(theta)


def eos_token_ids(model: nn.Module, tokenizer=None) -> set[int]:
    """End-of-sequence ids: the model's generation config (may hold several, e.g. chat models)
    plus the tokenizer's EOS token."""
    config = getattr(model, "generation_config", None) or model.config
    ids = eos_set(getattr(config, "eos_token_id", None))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


# ----------------------------------------------------------------------------- autoregressive


class KVCacheSteps:
    """The plain decoding strategy: a ``DynamicCache`` and one eager forward per new token.

    A strategy gives :func:`decode_ar` the last logits of the prompt (:meth:`prefill`) and of
    each new token (:meth:`step`); :class:`wrinklefree.compiled.CompiledSteps` is the other one
    (a static cache and a compiled step)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.cache = model, DynamicCache()

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:  # (n, P) -> (n, V)
        return self.model(input_ids=prompt, past_key_values=self.cache, use_cache=True,
                          logits_to_keep=1).logits[:, -1]

    def step(self, token: torch.Tensor, index: int) -> torch.Tensor:  # (n,) -> (n, V)
        """Logits after new token number ``index`` (0-based) of every row."""
        return self.model(input_ids=token[:, None], past_key_values=self.cache,
                          use_cache=True).logits[:, -1]


@torch.no_grad()
def decode_ar(
    steps: KVCacheSteps,
    prompt: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    stats: DecodeStats | None = None,
    repetition_penalty: float = 1.0,
    on_step: Callable[[int], None] | None = None,
) -> Iterator[torch.Tensor]:
    """The one autoregressive loop: yield the next token of every row of prompt (n, P), (n,).

    ``steps`` runs the model (:class:`KVCacheSteps`, or a compiled static cache); the callers
    collect what it yields (:func:`generate_ar` streams one row, :func:`generate_batch` stacks
    rows). Each token is :func:`~wrinklefree.sampling.pick_token`'s, drawn with a generator
    seeded by ``seed`` on the prompt's device (None: the global RNG). A row that has drawn an
    end-of-sequence token repeats it from then on; the loop ends once every row has, or after
    ``max_new_tokens``. ``on_step(step)`` is called before each token (a progress bar);
    ``stats`` counts the tokens of one row and the forwards after the prompt's.
    """
    check_sampling(temperature, top_p, repetition_penalty)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=prompt.device).manual_seed(seed)
    eos = torch.tensor(sorted(eos_set(eos_token_id)), dtype=torch.long, device=prompt.device)
    stats = stats if stats is not None else DecodeStats()
    logits = steps.prefill(prompt)  # (n, V)
    seen = seen_tokens(prompt, logits.shape[-1], repetition_penalty)  # (n, V) or None
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)  # (n,)
    token = None
    for step in range(max_new_tokens):
        if on_step is not None:
            on_step(step)
        picked = pick_token(logits, seen, repetition_penalty=repetition_penalty,
                            temperature=temperature, top_p=top_p, generator=generator)  # (n,)
        token = picked if token is None else torch.where(done, token, picked)
        done |= torch.isin(token, eos)
        stats.new_tokens += 1
        yield token
        if bool(done.all()) or step == max_new_tokens - 1:
            return
        logits = steps.step(token, step)
        stats.model_calls += 1


def check_one_row(input_ids: torch.Tensor) -> None:
    """Streaming decoders take one prompt: input_ids (1, L)."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape (1, L), got {tuple(input_ids.shape)}")


def stream_row(steps: KVCacheSteps, input_ids: torch.Tensor, **options) -> Iterator[list[int]]:
    """:func:`decode_ar` (``options``: its keywords) on one prompt (1, L), each token as a
    one-element list: the chunks :func:`stream_text` turns into text."""
    check_one_row(input_ids)
    for token in decode_ar(steps, input_ids, **options):
        yield [int(token)]


@torch.no_grad()
def generate_ar(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    stats: DecodeStats | None = None,
    repetition_penalty: float = 1.0,
) -> Iterator[list[int]]:
    """Yield new tokens one at a time (as one-element lists) from input_ids (1, L).

    One forward pass over the prompt, then one per token on top of a KV cache (DynamicCache).
    Stops after ``max_new_tokens`` or after yielding an end-of-sequence token. A
    ``repetition_penalty`` != 1 lowers the tokens of the prompt and of the text so far
    (:func:`~wrinklefree.sampling.penalize_repeats`).
    """
    yield from stream_row(KVCacheSteps(model), input_ids, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, seed=seed,
                          eos_token_id=eos_token_id, stats=stats,
                          repetition_penalty=repetition_penalty)


@torch.no_grad()
def generate_batch(
    model: nn.Module,
    prompt: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | None = None,
    on_step: Callable[[int], None] | None = None,
    repetition_penalty: float = 1.0,
) -> torch.Tensor:
    """(n, P) prompts -> (n, T) continuations, T <= ``max_new_tokens``, all rows at once.

    :func:`decode_ar` on a KV cache (DynamicCache), its tokens stacked: greedy at temperature 0,
    else the top-p nucleus sampled without sorting the vocabulary (transformers' ``generate``
    sorts every row's whole vocabulary, half its time on CPU). With ``eos_token_id`` finished
    rows are padded with it and the loop stops once every row has drawn it. ``on_step(step)`` is
    called before each new token (a progress bar). ``repetition_penalty`` as in
    :func:`generate_ar`. Used by the teacher sampler, on-policy distillation and the training
    report's loop measure.
    """
    tokens = list(decode_ar(KVCacheSteps(model), prompt, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, eos_token_id=eos_token_id,
                            on_step=on_step, repetition_penalty=repetition_penalty))
    return torch.stack(tokens, dim=1) if tokens else prompt[:, :0]  # (n, T)


# ----------------------------------------------------------------------------- block diffusion


@torch.no_grad()
def generate_block_diffusion(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    mask_token_id: int | None,
    max_new_tokens: int,
    block_size: int = 32,
    threshold: float = 0.9,
    max_steps: int | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    require_dlm: bool = True,
    stats: DecodeStats | None = None,
) -> Iterator[list[int]]:
    """Yield committed blocks of new tokens, decoded as in Fast-dLLM v2 (arXiv 2509.26328).

    Blocks are aligned to absolute positions (block k = positions [kB, (k+1)B)), as in training.
    The prompt's whole blocks are encoded causally into a KV cache; its tail opens the first
    block. A block that starts after committed text gets its first token autoregressively from
    the previous block's last logits. The rest of the block starts as mask tokens and is denoised
    with the training layout (bidirectional inside the block, the cached clean prefix before
    it), committing per step every masked position whose confidence exceeds ``threshold``. The
    finished block is then encoded causally into the cache (one more forward pass, whose last
    logits give the next block's first token).

    Args:
        mask_token_id: the DLM ``<|mask|>`` id (:func:`mask_token_id_of`); None raises
            :class:`NotDLMModelError`.
        block_size: tokens per block; use the ``block_size`` the student was trained with
            (Fast-dLLM v2 uses 32). The last block is shortened so exactly ``max_new_tokens``
            come out (fewer only when an EOS token is committed).
        threshold: commit every masked position whose confidence (probability of its chosen
            token) exceeds it, at least one per step (the most confident); > 1 commits exactly
            one position per step.
        max_steps: denoising steps per block (default: its number of masked positions); each
            step commits at least ceil(masked / steps left) positions.
        temperature, top_p, seed: 0 = greedy; else each masked position samples its token from
            the top-p nucleus of softmax(logits / T); its confidence is that token's probability
            under softmax(logits / T).
        require_dlm: raise :class:`NotDLMModelError` when the model predicts the mask token at most
            masked positions (a model never trained to fill masks); False decodes anyway
            (benchmarks of speed on an untrained model).
    """
    if mask_token_id is None:
        raise NotDLMModelError(
            "no mask token: config.mask_token_id is not set and the tokenizer has none; "
            + NOT_DLM_HINT
        )
    if block_size < 2 or (max_steps is not None and max_steps < 1):
        raise ValueError(f"need block_size >= 2 and max_steps >= 1 (or None), got {block_size}, "
                         f"{max_steps}")
    check_one_row(input_ids)
    check_sampling(temperature, top_p)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    pick = _Picker(mask_token_id, temperature, top_p, generator)
    eos = eos_set(eos_token_id)
    stats = stats if stats is not None else DecodeStats()
    cache = DynamicCache()
    aligned = input_ids.shape[1] // block_size * block_size  # the prompt's whole blocks
    head = input_ids[0, aligned:].tolist()  # the prompt's tail opens the first block
    last_logits = None
    if aligned:
        out = model(input_ids=input_ids[:, :aligned], past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        last_logits = out.logits[0, -1]  # (V,) predicts the first token of the next block
    produced, first_block = 0, True
    while produced < max_new_tokens:
        fresh: list[int] = []
        if not head:  # the block's first token: an AR step on the committed text
            fresh = [int(pick(last_logits[None])[0][0])]
        n_masked = min(block_size - len(head) - len(fresh), max_new_tokens - produced - len(fresh))
        block = torch.tensor([head + fresh + [mask_token_id] * n_masked], device=input_ids.device)
        if n_masked:
            _denoise_block(model, cache, block, pick, threshold, max_steps or n_masked,
                           check_dlm=require_dlm and first_block, stats=stats)
        first_block = False
        tokens = block[0, len(head):].tolist()
        stop = next((i for i, t in enumerate(tokens) if t in eos), None)
        if stop is not None:
            tokens = tokens[: stop + 1]
        produced += len(tokens)
        stats.new_tokens += len(tokens)
        yield tokens
        if stop is not None or produced >= max_new_tokens:
            return
        # commit: encode the finished block causally (the clean view) into the cache
        out = model(input_ids=block, past_key_values=cache, use_cache=True, logits_to_keep=1)
        stats.model_calls += 1
        last_logits, head = out.logits[0, -1], []


def without_mask(logits: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """(..., V) float32 copy of the logits with the mask token ruled out (never emitted)."""
    logits = logits.float().clone()
    if mask_token_id < logits.shape[-1]:
        logits[..., mask_token_id] = -math.inf
    return logits


def greedy_fill(logits: torch.Tensor, mask_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) -> (tokens, confidence), each (...): the greedy choice of block diffusion for a
    masked position, its argmax over every token but the mask and that token's probability (the
    confidence compared with the threshold: Fast-dLLM v2's confidence-aware parallel decoding)."""
    confidence, tokens = without_mask(logits, mask_token_id).softmax(-1).max(-1)
    return tokens, confidence


class _Picker:
    """Token and confidence per row of logits (S, V): greedy (argmax, its probability) or a
    sample from the top-p nucleus of softmax(logits / T) with its probability under
    softmax(logits / T) (before the nucleus is renormalised). The mask token is never chosen."""

    def __init__(self, mask_token_id: int, temperature: float, top_p: float,
                 generator: torch.Generator | None) -> None:
        self.mask_token_id, self.temperature, self.top_p = mask_token_id, temperature, top_p
        self.generator = generator

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.temperature == 0.0:
            return greedy_fill(logits, self.mask_token_id)
        logits = without_mask(logits, self.mask_token_id)  # (S, V)
        probs = (logits / self.temperature).softmax(-1)  # (S, V)
        tokens = sample(probs, self.top_p, self.generator)  # (S,)
        # confidence before the nucleus renormalisation, so truncation does not inflate it
        return tokens, probs.gather(-1, tokens[:, None])[:, 0]


def block_attention_mask(model: nn.Module, size: int, past: int,
                         device: torch.device) -> torch.Tensor:
    """The 4D mask of a block being denoised on top of ``past`` cached tokens: every query sees
    the whole cache (the committed blocks) and the whole block (bidirectional), the training
    layout's noisy-view row. -> (1, 1, size, past + size) for the model's attention."""
    allowed = torch.ones(1, 1, size, past + size, dtype=torch.bool, device=device)
    return attention_bias(allowed, model, model_dtype(model))


def _denoise_block(
    model: nn.Module,
    cache: DynamicCache,
    block: torch.Tensor,
    pick: _Picker,
    threshold: float,
    max_steps: int,
    *,
    check_dlm: bool,
    stats: DecodeStats,
) -> None:
    """Fill the mask tokens of ``block`` (1, S) in place on top of ``cache`` (left as it was).

    block[0, 0] is always known (the prompt's tail or the block's AR first token), so token shift
    predicts position j >= 1 from the logits at j - 1, all inside the block.
    """
    size, past = block.shape[1], cache.get_seq_length()
    attention = block_attention_mask(model, size, past, block.device)
    for step in range(max_steps):
        masked = block[0] == pick.mask_token_id  # (S,)
        if not masked.any():
            return
        logits = model(input_ids=block, past_key_values=cache, use_cache=True,
                       attention_mask=attention).logits[0]  # (S, V)
        cache.crop(-size)  # drop the block's keys/values: only committed text stays cached
        stats.model_calls += 1
        pred = logits[:-1]  # (S-1, V): token shift, the logits at j - 1 predict position j
        if check_dlm and step == 0:
            _check_predicts_tokens(pred[masked[1:]].argmax(-1), pick.mask_token_id)
        tokens, confidence = pick(pred)  # (S-1,), (S-1,)
        tokens = torch.cat([block[0, :1], tokens])  # (S,) aligned with the block
        confidence = torch.cat([confidence.new_full((1,), -1.0), confidence])
        confidence = confidence.masked_fill(~masked, -1.0)
        n_masked = int(masked.sum())
        at_least = max(1, -(-n_masked // (max_steps - step)))  # ceil: finish within max_steps
        chosen = masked & (confidence > threshold)
        if int(chosen.sum()) < at_least:
            chosen = torch.zeros_like(masked)
            chosen[confidence.topk(at_least).indices] = True
        block[0, chosen] = tokens[chosen]


def _check_predicts_tokens(argmax: torch.Tensor, mask_token_id: int) -> None:
    """A model never trained with the DLM objective tends to copy the mask token it is shown."""
    if argmax.numel() and (argmax == mask_token_id).float().mean() > 0.5:
        raise NotDLMModelError(
            f"the model predicts the mask token (id {mask_token_id}) at "
            f"{int((argmax == mask_token_id).sum())}/{argmax.numel()} masked positions: "
            f"{NOT_DLM_HINT}"
        )


# ----------------------------------------------------------------------------- text


def stream_text(tokenizer, chunks: Iterable[list[int]]) -> Iterator[str]:
    """Turn token-id chunks into text pieces as they arrive; "".join(pieces) == decode(all ids).

    Decodes the whole text so far and emits what is new, holding back a trailing U+FFFD (a
    multi-byte character whose bytes have not all arrived yet).
    """
    ids: list[int] = []
    emitted = ""
    for chunk in chunks:
        ids.extend(chunk)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or len(text) == len(emitted):
            continue
        yield text[len(emitted):]
        emitted = text
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if text != emitted:
        yield text[len(emitted):]
