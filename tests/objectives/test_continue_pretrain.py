"""ContinuePretrainObjective: shifted CE with padding ignored and label smoothing, by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from wrinklefree.objectives import ContinuePretrainObjective

LN2 = math.log(2.0)


def test_shifted_ce_ignores_padding_and_last_position():
    # labels[1] = 1 is predicted at position 0, labels[3] = 2 at position 2; labels[2] = -100.
    labels = torch.tensor([[0, 1, -100, 2]])
    logits = torch.tensor(
        [
            [
                [LN2, 0.0, 0.0],  # p(1) = 1/4 -> CE ln 4
                [100.0, -100.0, 0.0],  # predicts an ignored label: unused
                [0.0, 0.0, 0.0],  # p(2) = 1/3 -> CE ln 3
                [-100.0, 100.0, 0.0],  # last position: nothing to predict
            ]
        ]
    )
    out = ContinuePretrainObjective()(SimpleNamespace(logits=logits), {"labels": labels})
    expected = (math.log(4.0) + math.log(3.0)) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["perplexity"].item() == pytest.approx(math.sqrt(12.0), rel=1e-6)
    assert out.metrics["tokens"].item() == 2


def test_label_smoothing_by_hand():
    # p = [1/2, 1/4, 1/4], target 0: (1 - 0.3)·ln 2 + 0.3·(ln 2 + ln 4 + ln 4)/3 = 1.2·ln 2.
    logits = torch.tensor([[[LN2, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[5, 0]])
    out = ContinuePretrainObjective(label_smoothing=0.3)(
        SimpleNamespace(logits=logits), {"labels": labels}
    )
    assert out.loss.item() == pytest.approx(1.2 * LN2, rel=1e-6)
    assert out.metrics["perplexity"].item() == pytest.approx(2.0, rel=1e-6)  # unsmoothed


def test_all_ignored_gives_zero_with_a_graph():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    out = ContinuePretrainObjective()(
        SimpleNamespace(logits=logits), {"labels": torch.full((1, 3), -100)}
    )
    out.loss.backward()
    assert out.loss.item() == 0.0 and logits.grad is not None


def test_bad_label_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        ContinuePretrainObjective(label_smoothing=1.0)
