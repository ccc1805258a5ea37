"""The TCS weight of every preset that uses it, pinned to the documented recipe.

docs/objectives.md (tcs): the system's DLM recipe is L = L_CE + λ·L_TCS + γ·L_BlockAttn with
λ = 1.0 and T = 5 on the teacher's top-100 tokens; the seed shipped λ = 0.1 (far too weak: TCS is
a KL·T² per position, on CE's scale at λ = 1) and no test noticed. Every preset that turns TCS on
must carry λ = 1.0 wherever it is active, T = 5 and k = 100.
"""

from __future__ import annotations

import pytest

from wrinklefree.train.compose import compose_train_config, config_dir

TCS_WEIGHT = 1.0  # λ (docs/objectives.md, "tcs"; the TCS recipe's corrected value)
TCS_OPTIONS = {"top_k": 100, "temperature": 5.0}
# the presets known to use TCS: a preset that silently drops it fails the discovery test below
KNOWN = {("objectives", "tcs"), ("objectives", "dlm_tcs"), ("objectives", "lrc_dlm"),
         ("training", "tcs"), ("training", "dlm_distill")}


def _composed(group: str, name: str):
    return compose_train_config([f"{group}={name}"])


def _uses_tcs(group: str, name: str) -> bool:
    return "tcs" in (_composed(group, name).objectives or {})


def _tcs_presets() -> list[tuple[str, str]]:
    found = sorted((p.parent.name, p.stem) for p in config_dir().glob("*/*.yaml")
                   if p.parent.name in ("objectives", "training"))
    return [preset for preset in found if _uses_tcs(*preset)]


def test_every_known_tcs_preset_is_found():
    assert KNOWN <= set(_tcs_presets())


@pytest.mark.parametrize(("group", "name"), _tcs_presets())
def test_tcs_weight_is_the_documented_lambda(group, name):
    config = _composed(group, name)
    tcs = config.objectives["tcs"]
    for key, value in TCS_OPTIONS.items():
        assert tcs[key] == value, (key, tcs[key])
    phases = (config.curriculum or {}).get("phases") or []
    if not phases:  # fixed weights
        assert tcs.get("weight", 1.0) == TCS_WEIGHT
        return
    # with a curriculum the phases' weights are absolute: 0 where a phase omits TCS, λ where on
    active = [phase["objective_weights"].get("tcs", 0.0) for phase in phases]
    assert set(active) <= {0.0, TCS_WEIGHT}, active
    assert active[-1] == TCS_WEIGHT, "TCS must be on at the end of training"
