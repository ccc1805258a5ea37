"""Plain dataclasses describing the training data (Hydra structured-config friendly).

A run trains on a *mixture* of sources. Each source is a local file / folder / glob, a Hugging Face
dataset name, the embedded ASV text (``name: asv`` or ``path: asv://``), or documents sampled from
a full-precision model (``kind: teacher_samples``, see ``data/generated.py``), and carries a
sampling weight. Everything that changes the tokens on disk (format, text field, shard size) is
part of the cache key; everything that only changes the order they are read in (seed, weights) is
not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wrinklefree.errors import UserInputError, at_least, check_ranges

ASV_NAME = "asv"
ASV_PATH = "asv://"
FORMATS = ("auto", "text", "jsonl", "parquet")
KINDS = ("text", "teacher_samples")
FIRST_TOKENS = ("random", "bos", "text")


@dataclass
class SamplingConfig:
    """How a ``kind: teacher_samples`` source draws documents from a model: the full-precision
    teacher (data-free QAT, LLM-QAT arXiv 2305.17888 Sec. 2.1), or the student itself continuing
    prompts of real text greedily (its own decoding trajectories, CLLM arXiv 2403.00835).
    Every field is part of the cache key."""

    model: str | None = None  # anything load_model accepts; the presets use ${model.source}
    num_docs: int = 512  # documents to sample (the source's size)
    max_new_tokens: int = 128  # tokens per document after the first (shorter if EOS is drawn)
    temperature: float = 1.0  # 0 = greedy (the model's own decoding)
    top_p: float = 0.95  # nucleus sampling; 1.0 = the full distribution
    # random: uniform over first_token_range (LLM-QAT) | bos | text: the first prompt_tokens
    # tokens of a document of `prompts`, which the document keeps
    first_token: str = "random"
    first_token_range: list[int] | None = None  # [lo, hi) of random first ids; None = vocab
    prompts: str | None = None  # first_token: text: asv, or a file, folder or glob of text
    prompt_tokens: int = 32  # first_token: text: prompt length (shorter documents are skipped)
    batch_size: int = 16  # sequences generated together (KV cache)
    seed: int = 0
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N

    def prompt_source(self) -> SourceConfig:
        """The text source of ``prompts``: ``asv`` (the embedded ASV train split) or a file,
        folder or glob read like a ``path`` source."""
        if self.prompts in (ASV_NAME, ASV_PATH):
            return SourceConfig(name=ASV_NAME)
        return SourceConfig(name="prompts", path=self.prompts)

    def validate(self, name: str) -> None:
        where = f"source '{name}' (kind: teacher_samples)"
        if not self.model:
            raise ValueError(f"{where} needs sampling.model: the model to sample from (e.g. "
                             "smollm2, or ${{model.source}} in a preset)")
        if self.first_token not in FIRST_TOKENS:
            raise ValueError(f"{where}: sampling.first_token={self.first_token!r}, expected one "
                             f"of {FIRST_TOKENS}")
        for key in ("num_docs", "max_new_tokens", "batch_size", "prompt_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}: sampling.{key}={getattr(self, key)} must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"{where}: sampling needs temperature >= 0 (0 = greedy) and "
                             f"0 < top_p <= 1, got temperature={self.temperature}, "
                             f"top_p={self.top_p}")
        if (self.first_token == "text") != (self.prompts is not None):
            raise ValueError(f"{where}: sampling.first_token=text and sampling.prompts go "
                             f"together (got first_token={self.first_token!r}, prompts="
                             f"{self.prompts!r}); set both (e.g. prompts: asv) or neither")
        rng = self.first_token_range
        if rng is not None and (len(rng) != 2 or not 0 <= rng[0] < rng[1]):
            raise ValueError(f"{where}: sampling.first_token_range={rng} must be [lo, hi) with "
                             "0 <= lo < hi")


@dataclass
class SourceConfig:
    """One data source. Give ``path`` *or* ``hf_name``; ``name: asv`` alone is the embedded ASV."""

    name: str = ASV_NAME
    path: str | None = None  # file, folder (recursive) or glob; "asv://" = embedded ASV train split
    hf_name: str | None = None  # Hugging Face dataset name (streamed) or a local dataset folder
    hf_config: str | None = None
    split: str = "train"
    text_field: str = "text"  # jsonl / parquet / HF column holding the document text
    format: str = "auto"  # auto (by file extension) | text | jsonl | parquet
    weight: float = 1.0
    kind: str = "text"  # text (path / hf_name / asv) | teacher_samples (sampled from a model)
    sampling: SamplingConfig | None = None  # kind: teacher_samples only

    def __post_init__(self) -> None:
        if isinstance(self.sampling, dict):
            self.sampling = SamplingConfig(**self.sampling)
        if self.kind == "teacher_samples" and self.sampling is None:
            self.sampling = SamplingConfig()

    @property
    def is_asv(self) -> bool:
        if self.kind != "text":
            return False
        if self.path == ASV_PATH:
            return True
        return self.name == ASV_NAME and not self.path and not self.hf_name

    @property
    def is_generated(self) -> bool:
        """Sampled from a model (``kind: teacher_samples``) rather than read from text."""
        return self.kind == "teacher_samples"

    def validate(self, key: str = "") -> None:
        """Check the source; ``key`` is where it sits in a config (``data.sources.0.``)."""
        if self.kind not in KINDS:
            raise ValueError(f"source '{self.name}': kind={self.kind!r}, expected one of {KINDS}")
        if self.weight < 0:
            raise ValueError(f"source '{self.name}': weight={self.weight} must be >= 0")
        if self.is_generated:
            if self.path or self.hf_name:
                raise ValueError(f"source '{self.name}' (kind: teacher_samples) is sampled from "
                                 "sampling.model; remove path / hf_name")
            self.sampling.validate(self.name)
            return
        if self.path and self.hf_name:
            raise ValueError(
                f"source '{self.name}' sets both path={self.path!r} and hf_name={self.hf_name!r}; "
                "give exactly one of them"
            )
        if not self.is_asv and not self.path and not self.hf_name:
            raise ValueError(
                f"source '{self.name}' has neither path nor hf_name; set one of them (e.g. "
                f"{key}path=corpus/*.txt, or name it '{ASV_NAME}' / path '{ASV_PATH}' for the "
                "embedded ASV text)"
            )
        if self.format not in FORMATS:
            raise ValueError(
                f"source '{self.name}': format={self.format!r}, expected one of {FORMATS}"
            )


@dataclass
class RemixConfig:
    """Influence-based remixing of the mixture weights (see ``wrinklefree.data.influence``)."""

    enabled: bool = False
    every_steps: int = 200  # re-estimate influence every N optimizer steps
    step_size: float = 1.0  # eta of the exponentiated-gradient step on the weights
    min_weight: float = 0.05
    max_weight: float = 0.95
    windows_per_source: int = 4  # windows drawn from each source to estimate its gradient
    probe_windows: int = 8  # held-out ASV windows whose loss it should reduce (build_probe_batch)
    params: str = "last_layer"  # cheap parameter subset: last_layer | norms


@dataclass
class DataConfig:
    """The training data: sources + packing settings. Defaults = the embedded ASV train split."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    seq_len: int = field(default=256, metadata=at_least(2, "(tokens per training window)"))
    cache_dir: str = "~/.cache/wrinklefree/tokens"
    seed: int = 0
    # documents per cached token shard
    shard_docs: int = field(default=256, metadata=at_least(1))
    remix: RemixConfig = field(default_factory=RemixConfig)

    @classmethod
    def from_dict(cls, data: Mapping) -> DataConfig:
        """A DataConfig from a mapping (parsed YAML, an OmegaConf node): typed by this schema,
        an unknown key or a wrong type refused by name."""
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))
        except OmegaConfBaseException as err:
            raise UserInputError(f"bad data config: {str(err).splitlines()[0]}") from err

    def validate(self, prefix: str = "") -> None:
        """Every check of the data section: the field ranges (named ``prefix`` + key), then the
        sources and their weights."""
        check_ranges(self, prefix=prefix)
        if not self.sources:
            raise ValueError("DataConfig.sources is empty; add a source (e.g. name: asv)")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        for i, s in enumerate(self.sources):
            s.validate(f"{prefix}sources.{i}.")
        if sum(s.weight for s in self.sources) <= 0:
            raise ValueError(f"all source weights are zero ({names}); give one a positive weight")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()
