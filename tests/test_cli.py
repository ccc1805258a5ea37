import pytest

from wrinklefree.cli import main


def test_bench_lists_the_benchmarks(capsys):
    main(["bench"])
    out = capsys.readouterr().out
    assert "train_speed" in out and "inference" in out


def test_unknown_bench_is_named(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "nope"])
    err = capsys.readouterr().err
    assert "nope" in err and "train_speed" in err


def test_bench_passes_its_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "train_speed", "--help"])
    assert exit_info.value.code == 0
    assert "--model" in capsys.readouterr().out



def test_train_help_lists_every_training_and_data_preset(capsys):
    """The help names presets by hand: a preset added to configs/ must be added there too."""
    from wrinklefree.train.compose import config_dir

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for group in ("training", "data"):
        for preset in sorted((config_dir() / group).glob("*.yaml")):
            assert preset.stem in out, f"wf train --help lacks {group}={preset.stem}"
    assert "overwrite=true" in out and "resume=auto" in out and "report.json" in out

def test_convert_missing_path_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["info", str(tmp_path / "missing" / "model")])
    assert "does not exist" in capsys.readouterr().err


def test_convert_keeps_the_named_layers_in_full_precision(tiny_source, tmp_path, capsys):
    from wrinklefree.convert import load_bitnet
    from wrinklefree.nn import BitLinear

    main(["convert", str(tiny_source), str(tmp_path / "out"), "--fp-layers", "-1",
          "--calibration-batches", "1"])
    model = load_bitnet(tmp_path / "out")
    first, last = model.model.layers
    assert model.config.bitnet["fp_layers"] == [-1]
    assert isinstance(first.mlp.down_proj, BitLinear)
    assert not any(isinstance(m, BitLinear) for m in last.modules())
    capsys.readouterr()
    main(["info", str(tmp_path / "out"), "--fp-type", "q4_0"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines if "full-precision decoder layers" in line] == ["1"]
    stored = [line for line in lines if line.startswith("stored: ")]
    exported = [line for line in lines if line.startswith("GGUF (")]
    assert stored and "bits per decoder-linear weight" in stored[0]
    assert exported and "fp q4_0" in exported[0] and "fp_layers_subln=true" in lines[-1]


def test_convert_fp_layers_subln_makes_them_exportable(tiny_source, tmp_path, capsys):
    from wrinklefree.convert import load_bitnet
    from wrinklefree.nn import SubLNLinear

    main(["convert", str(tiny_source), str(tmp_path / "out"), "--fp-layers", "-1",
          "--fp-layers-subln", "--calibration-batches", "1"])
    model = load_bitnet(tmp_path / "out")
    assert model.config.bitnet["fp_layers_subln"] is True
    assert isinstance(model.model.layers[-1].mlp.down_proj, SubLNLinear)
    assert "wf export refuses" not in capsys.readouterr().out
