"""Run EleutherAI's lm-evaluation-harness on wrinklefree models (optional: ``pip install lm-eval``).

Importing this module registers the model type ``wrinklefree``: a harness ``HFLM`` whose model
comes from :func:`wrinklefree.models.load_model`, so BitNet checkpoints, run folders, GGUF files
and the embedded ``smollm2`` load with their BitLinear layers. The harness's CLI does not import
plugins, so run it through this module::

    python -m wrinklefree.eval.lm_eval_adapter --model wrinklefree \\
        --model_args pretrained=runs/demo --tasks hellaswag --device cpu --batch_size 4

or from Python: ``lm_eval.simple_evaluate(model=WrinklefreeLM(pretrained="smollm2"), ...)``.
"""

from __future__ import annotations

import torch

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as err:  # pragma: no cover - depends on the optional package
    raise ImportError("the lm-eval adapter needs EleutherAI's harness: pip install lm-eval "
                      "(not a wrinklefree dependency)") from err

from wrinklefree.models import load_model, load_tokenizer, resolve_source


@register_model("wrinklefree")
class WrinklefreeLM(HFLM):
    """``HFLM`` over a model loaded by wrinklefree (``pretrained`` = anything ``load_model``
    accepts, or a run folder). ``dtype`` is a torch dtype name (default float32); ``device``
    moves the model there. Other arguments are the harness's (``batch_size``, ``max_length``...).
    """

    def __init__(self, pretrained: str, dtype: str | torch.dtype = "float32",
                 device: str | None = None, **kwargs) -> None:
        src = resolve_source(str(pretrained))
        model = load_model(src, dtype=_dtype(dtype))
        if device is not None and _available(device):
            model.to(device)
        super().__init__(pretrained=model, tokenizer=load_tokenizer(src), backend="causal",
                         **kwargs)
        self.source = src


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype={name!r} is not a torch dtype; use float32, bfloat16 or float16")
    return dtype


def _available(device: str) -> bool:
    """The harness defaults to ``cuda``; on a machine without it the model stays on the CPU."""
    return not device.startswith("cuda") or torch.cuda.is_available()


def main() -> None:
    """The harness CLI with the ``wrinklefree`` model type registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
