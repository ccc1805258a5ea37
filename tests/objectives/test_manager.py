"""ObjectiveManager and create_objective_manager: the weight-0 regression, requirements,
metrics, config validation and checkpoint state."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from wrinklefree.objectives import (
    ContinuePretrainObjective,
    DLMObjective,
    Objective,
    ObjectiveManager,
    ObjectiveOutput,
    create_objective_manager,
)

CURRICULUM_CONFIG = {
    "objectives": {
        "continue_pretrain": {"weight": 1.0},
        "dlm": {
            "weight": 0.0,
            "mask_token_id": 127,
            "mask_prob": 0.5,
            "allow_vocab_mask_token": True,
        },
        "tcs": {"top_k": 4},
    },
    "curriculum": {
        "interpolation": "step",
        "phases": [
            {"name": "warmup", "end_ratio": 0.5, "objective_weights": {"continue_pretrain": 1.0}},
            {
                "name": "dlm",
                "end_ratio": 1.0,
                "objective_weights": {"continue_pretrain": 1.0, "dlm": 0.5, "tcs": 1.0},
                "data_config": "mixed",
            },
        ],
    },
}


class Exploding(Objective):
    """Fails if the manager ever touches it."""

    name = "exploding"
    modifies_input = True

    def preprocess_batch(self, batch):
        raise AssertionError("preprocess_batch ran at weight 0")

    def forward(self, model_outputs, batch, teacher_outputs=None):
        raise AssertionError("forward ran at weight 0")


def test_weight_zero_dlm_leaves_the_batch_identical_and_not_doubled(make_batch):
    batch = make_batch(batch=2, length=8)
    snapshot = {k: v.clone() for k, v in batch.items()}
    dlm = DLMObjective(mask_token_id=127, mask_prob=0.5, allow_vocab_mask_token=True)
    manager = ObjectiveManager([ContinuePretrainObjective(), dlm], {"dlm": 0.0})
    out = manager.preprocess_batch(batch)
    assert out is batch and set(out) == set(snapshot)
    assert all(torch.equal(out[k], snapshot[k]) for k in snapshot)
    active = ObjectiveManager([ContinuePretrainObjective(), dlm], {"dlm": 0.5})
    prepared = active.preprocess_batch(batch)
    assert prepared["input_ids"] is batch["input_ids"]  # the clean window, not doubled
    assert prepared["dlm_noisy_ids"].shape == (4, 8) and prepared["dlm_mask"].any()
    assert (prepared["dlm_noisy_ids"] == 127).sum() == prepared["dlm_mask"].sum()


def test_ar_objectives_never_read_masked_or_doubled_input(make_batch):
    """Second guard, whatever the weights: the manager refuses to hand CE a masked batch."""
    batch = make_batch(batch=2, length=8)
    dlm = DLMObjective(mask_token_id=127, mask_prob=0.5, allow_vocab_mask_token=True)
    manager = ObjectiveManager([ContinuePretrainObjective(), dlm], {"dlm": 0.0})
    masked = {**batch, "input_ids": batch["input_ids"].masked_fill(
        torch.rand(2, 8, generator=torch.Generator().manual_seed(0)) < 0.5, 127)}
    with pytest.raises(ValueError, match="contains the DLM mask token 127"):
        manager(SimpleNamespace(logits=torch.zeros(2, 8, 128)), masked)
    with pytest.raises(ValueError, match="do not match the clean window"):
        manager(SimpleNamespace(logits=torch.zeros(4, 8, 128)), batch)
    assert manager(SimpleNamespace(logits=torch.zeros(2, 8, 128)), batch).loss.item() > 0


def test_weight_zero_objective_is_never_called():
    manager = ObjectiveManager([ContinuePretrainObjective(), Exploding()], {"exploding": 0.0})
    batch = {"labels": torch.tensor([[1, 2, 3]])}
    assert manager.preprocess_batch(batch) is batch
    result = manager(SimpleNamespace(logits=torch.zeros(1, 3, 4)), batch)
    assert set(result.objective_outputs) == {"continue_pretrain"}
    assert result.weights_used == {"continue_pretrain": 1.0, "exploding": 0.0}


def test_curriculum_turns_dlm_on_only_in_its_phase(make_batch):
    manager = create_objective_manager(CURRICULUM_CONFIG, total_steps=4)
    batch = make_batch(batch=2, length=8)
    assert manager.requirements().teacher is False
    assert manager.preprocess_batch(batch) is batch  # warm-up: CE only
    manager.step()
    manager.step()
    assert manager.current_phase.name == "dlm" and manager.current_phase.data_config == "mixed"
    assert manager.requirements().teacher is True
    assert manager.preprocess_batch(batch)["dlm_noisy_ids"].shape == (4, 8)


def test_loss_is_the_weighted_sum_and_metrics_are_flat_floats():
    class Constant(Objective):
        def __init__(self, name, value):
            self.name, self.value = name, value

        def forward(self, model_outputs, batch, teacher_outputs=None):
            return ObjectiveOutput(torch.tensor(self.value), {"extra": torch.tensor(7.0)})

    manager = ObjectiveManager([Constant("a", 2.0), Constant("b", 3.0)], {"a": 0.5, "b": 2.0})
    result = manager(None, {})
    assert result.loss.item() == pytest.approx(0.5 * 2.0 + 2.0 * 3.0)
    metrics = manager.metrics()
    assert metrics == {
        "loss": 7.0,
        "a/loss": 2.0,
        "a/extra": 7.0,
        "b/loss": 3.0,
        "b/extra": 7.0,
        "weight/a": 0.5,
        "weight/b": 2.0,
        "curriculum/phase": 0.0,
    }
    assert all(isinstance(v, float) for v in metrics.values())


def test_requirements_count_only_active_objectives():
    config = {
        "objectives": {
            "continue_pretrain": {},
            "attention_distill": {"weight": 0.0, "layer": -2},
            "layerwise_distill": {"weight": 0.1},
        }
    }
    needs = create_objective_manager(config).requirements()
    assert needs.teacher and needs.hidden_states and needs.qkv_layers == []
    config["objectives"]["attention_distill"]["weight"] = 1.0
    assert create_objective_manager(config).requirements().qkv_layers == [-2]


def test_no_active_objective_is_an_error():
    manager = ObjectiveManager([ContinuePretrainObjective()], {"continue_pretrain": 0.0})
    with pytest.raises(ValueError, match="no objective has weight > 0"):
        manager(SimpleNamespace(logits=torch.zeros(1, 2, 3)), {"labels": torch.zeros(1, 2)})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"objectives": {"cross_entropy": {}}},
            r"unknown objective 'cross_entropy'.*continue_pretrain",
        ),
        ({"objectives": {"tcs": {"topk": 5}}}, r"unknown key\(s\) \['topk'\].*'top_k'"),
        ({"objectives": {}}, "no objectives"),
        (
            {
                "objectives": {"continue_pretrain": {}},
                "curriculum": {
                    "phases": [{"name": "a", "end_ratio": 1.0, "objective_weights": {"dlm": 1.0}}]
                },
            },
            r"unknown objective\(s\) \['dlm'\]",
        ),
        (
            {
                "objectives": {"continue_pretrain": {}},
                "curriculum": {"phases": [{"name": "a", "end_ratio": 1.0, "weights": {}}]},
            },
            r"unknown key\(s\) \['weights'\] in curriculum phase 0",
        ),
    ],
)
def test_config_errors_name_the_bad_key(config, message):
    with pytest.raises(ValueError, match=message):
        create_objective_manager(config, total_steps=10)


def test_curriculum_needs_total_steps():
    with pytest.raises(ValueError, match="total_steps"):
        create_objective_manager(CURRICULUM_CONFIG)


def test_dictconfig_and_state_dict_round_trip():
    manager = create_objective_manager(OmegaConf.create(CURRICULUM_CONFIG), total_steps=4)
    for _ in range(3):
        manager.step()
    resumed = create_objective_manager(CURRICULUM_CONFIG, total_steps=4)
    resumed.load_state_dict(manager.state_dict())
    assert resumed.step_count == 3 and resumed.current_phase.name == "dlm"
    plain = ObjectiveManager([ContinuePretrainObjective()])
    with pytest.raises(ValueError, match="curriculum"):
        plain.load_state_dict(manager.state_dict())
    assert plain.current_phase.name == "constant"


def test_tokenizer_lets_dlm_find_and_check_the_mask_token(model, tokenizer):
    from wrinklefree.objectives import add_mask_token

    mask_id = add_mask_token(tokenizer, model)
    config = {"objectives": {"dlm": {"mask_prob": 0.3}}}
    manager = create_objective_manager(config, tokenizer=tokenizer)
    assert manager.objectives["dlm"].mask_token_id == mask_id
    with pytest.raises(ValueError, match="not a dedicated mask token"):
        create_objective_manager({"objectives": {"dlm": {"mask_token_id": 3}}}, tokenizer=tokenizer)


def test_block_size_is_the_masking_objectives_one():
    dlm = DLMObjective(mask_token_id=127, block_size=8, allow_vocab_mask_token=True)
    assert ObjectiveManager([ContinuePretrainObjective(), dlm]).block_size() == 8
    assert ObjectiveManager([ContinuePretrainObjective()]).block_size() is None
