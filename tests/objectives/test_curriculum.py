"""CurriculumScheduler: phase boundaries, step / linear / cosine weights, checkpointing."""

import math

import pytest

from wrinklefree.objectives import CurriculumPhase, CurriculumScheduler

PHASES = [
    CurriculumPhase("warmup", 0.3, {"ce": 1.0}, data_config="pretrain"),
    CurriculumPhase("main", 1.0, {"ce": 1.0, "dlm": 0.5}, data_config="mixed"),
]


def at(scheduler: CurriculumScheduler, step: int) -> CurriculumScheduler:
    scheduler.load_state_dict({"current_step": step})
    return scheduler


def test_step_interpolation_switches_at_the_boundary():
    s = CurriculumScheduler(PHASES, total_steps=10)
    assert at(s, 2).current_phase.name == "warmup"
    assert at(s, 2).weights() == {"ce": 1.0, "dlm": 0.0}  # unnamed in the phase -> 0
    assert at(s, 3).current_phase.data_config == "mixed"
    assert at(s, 3).weights() == {"ce": 1.0, "dlm": 0.5}
    assert at(s, 25).phase_index == 1  # past the end: last phase


def test_linear_and_cosine_reach_the_phase_weights_at_its_end():
    linear = CurriculumScheduler(PHASES, total_steps=10, interpolation="linear")
    assert at(linear, 3).weights()["dlm"] == 0.0  # phase start: previous weights
    assert at(linear, 6).weights()["dlm"] == pytest.approx(0.5 * (0.6 - 0.3) / 0.7)
    cosine = CurriculumScheduler(PHASES, total_steps=10, interpolation="cosine")
    f = 0.5 * (1 - math.cos(math.pi * (0.6 - 0.3) / 0.7))
    assert at(cosine, 6).weights()["dlm"] == pytest.approx(0.5 * f)
    assert at(cosine, 10).weights()["dlm"] == 0.5


def test_step_advances_and_state_round_trips():
    s = CurriculumScheduler(PHASES, total_steps=10)
    for _ in range(4):
        s.step()
    other = CurriculumScheduler(PHASES, total_steps=10)
    other.load_state_dict(s.state_dict())
    assert other.current_step == 4 and other.current_phase.name == "main"


@pytest.mark.parametrize(
    ("phases", "message"),
    [
        ([], "at least one phase"),
        ([CurriculumPhase("a", 0.5, {}), CurriculumPhase("b", 0.4, {})], "increase strictly"),
        ([CurriculumPhase("a", 0.5, {})], "last must be 1.0"),
        ([CurriculumPhase("a", 1.0, {"ce": -1.0})], "negative"),
    ],
)
def test_invalid_phases(phases, message):
    with pytest.raises(ValueError, match=message):
        CurriculumScheduler(phases, total_steps=10)


def test_invalid_interpolation_and_steps():
    with pytest.raises(ValueError, match="interpolation"):
        CurriculumScheduler(PHASES, 10, interpolation="exp")
    with pytest.raises(ValueError, match="total_steps"):
        CurriculumScheduler(PHASES, 0)
