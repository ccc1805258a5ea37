"""Every YAML under configs/ composes and validates: a preset that cannot parse (a flow mapping
with ``???``, issue 15 item 11) fails here instead of in a user's first command."""

from pathlib import Path

import pytest

from wrinklefree.errors import UserInputError
from wrinklefree.train.compose import compose_train_config, config_dir
from wrinklefree.train.config import validate

# presets that need a value only the user can give, and a stand-in for it
REQUIRED = {("data", "local_files"): ["data.sources.0.path=corpus/*.txt"]}


def _presets() -> list[tuple[str, str]]:
    return sorted((p.parent.name, p.stem) for p in config_dir().glob("*/*.yaml"))


@pytest.mark.parametrize(("group", "name"), _presets())
def test_every_preset_composes_and_validates(group, name):
    extra = REQUIRED.get((group, name), [])
    config = compose_train_config([f"{group}={name}", *extra])
    assert validate(config).training.max_steps is not None or config.training.max_tokens


@pytest.mark.parametrize("training", [n for g, n in _presets() if g == "training"])
def test_every_training_preset_composes_with_local_files(training):
    config = compose_train_config([f"training={training}", "data=local_files",
                                   "data.sources.0.path=corpus/*.txt"])
    assert validate(config).data["sources"][0]["path"] == "corpus/*.txt"


def test_local_files_without_a_path_names_the_key():
    with pytest.raises(UserInputError, match=r"'mine' has neither path.*data\.sources\.0\.path="):
        validate(compose_train_config(["data=local_files"]))


def test_the_presets_found_are_all_there():
    groups = {g for g, _ in _presets()}
    assert {"data", "model", "objectives", "trainer", "training"} <= groups
    assert Path(config_dir() / "data" / "local_files.yaml").is_file()
