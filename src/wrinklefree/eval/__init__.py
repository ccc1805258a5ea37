"""Evaluation: perplexity, the masked-diffusion ELBO, task fine-tuning (classification,
summarization) and an lm-evaluation-harness adapter (``wrinklefree.eval.lm_eval_adapter``)."""

from wrinklefree.eval.elbo import masked_elbo
from wrinklefree.eval.perplexity import eval_windows, mean_nll, perplexity

__all__ = ["eval_windows", "masked_elbo", "mean_nll", "perplexity"]
