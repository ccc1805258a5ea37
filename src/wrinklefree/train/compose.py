"""Compose the training config with Hydra: presets from ``configs/`` on the typed schema.

``wf train`` and ``bench/quality.py`` both start here. The presets are package data
(``wrinklefree/configs``, in a checkout a link to the repository's ``configs/``), so an installed
wheel finds them too.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wrinklefree.errors import UserInputError, did_you_mean


def config_dir() -> Path:
    """The Hydra config folder: the package's ``configs`` (the repository's ``configs/``)."""
    path = Path(__file__).resolve().parents[1] / "configs"
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(f"Hydra configs not found at {path}: this install lacks its "
                                "presets; reinstall wrinklefree (`pip install -e .` in a checkout)")
    return path


def config_groups() -> tuple[str, ...]:
    """The preset groups (``training``, ``model``, ...): the sub-folders of ``configs/``."""
    return tuple(sorted(p.name for p in config_dir().iterdir() if p.is_dir()))


def check_override_keys(overrides: list[str]) -> None:
    """Refuse overrides of keys the schema lacks, naming the closest valid key, before Hydra
    composes (Hydra would suggest ``+key``, which only adds a key the trainer then ignores)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from wrinklefree.train.config import check_override_key

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return  # a syntax error: compose reports it
    groups = config_groups()
    for override in parsed:
        key = override.key_or_group
        if key in groups and override.is_delete() is False:
            check_preset(key, override.value())
        if key in groups or key.split(".")[0] == "hydra":
            continue
        check_override_key(key, groups)


def check_preset(group: str, name) -> None:
    """Refuse a preset that ``configs/<group>/`` lacks, listing the presets and naming the
    closest (Hydra says only "Could not find 'training/demoo'")."""
    presets = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
    if isinstance(name, str) and name not in presets:
        raise UserInputError(f"unknown {group} preset '{name}'{did_you_mean(name, presets)} "
                             f"(available: {', '.join(presets)})")


def compose_train_config(overrides: list[str]) -> DictConfig:
    """The training config composed by Hydra from ``configs/train.yaml`` and ``overrides``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from wrinklefree.train.config import TrainConfig, describe_config_error

    # the typed schema is the base of train.yaml: every key exists (overridable without '+');
    # unknown keys are refused first, with the closest valid key ('+' cannot add to the schema)
    check_override_keys(overrides)
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="wf"):
            config = compose("train.yaml", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserInputError(f"bad config override: {describe_config_error(err)}") from err
    with open_dict(config):
        if config.name is None:  # default run name = the training preset
            config.name = config.hydra.runtime.choices.training
        del config["hydra"]
    return config
