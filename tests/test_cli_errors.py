"""Expected failures end in one line, ``wf <cmd>: error: ...``, naming the input and the fix
(issue 15 items 6-10); unexpected ones keep their traceback."""

from __future__ import annotations

import errno
import time

import lightning  # noqa: F401  before any capsys: its log handler keeps the stderr of its import
import pytest
import torch
from tiny_models import tiny_model

from wrinklefree.cli import main
from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.errors import UserInputError
from wrinklefree.train.compose import compose_train_config
from wrinklefree.train.config import validate


def _error_of(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


# ---------------------------------------------------------------- 6: unknown keys


@pytest.mark.parametrize("override", ["training.max_stepz=3", "+training.max_stepz=3",
                                      "++training.max_stepz=3"])
def test_unknown_key_names_the_closest_valid_key(override):
    with pytest.raises(UserInputError, match="training.max_stepz.*did you mean "
                       "'training.max_steps'") as info:
        compose_train_config([override])
    assert "+training" not in str(info.value)  # no advice to add the key


def test_unknown_key_added_from_python_is_refused():
    config = compose_train_config([])
    config = {**dict(config), "training": {"max_stepz": 3}}
    with pytest.raises(UserInputError, match="did you mean 'training.max_steps'"):
        validate(config)


def test_typo_in_a_group_and_in_data_is_named():
    with pytest.raises(UserInputError, match="did you mean 'training.max_steps'"):
        compose_train_config(["trainig.max_steps=3"])
    with pytest.raises(UserInputError, match="did you mean 'data.seq_len'"):
        compose_train_config(["data.seq_lne=3"])


def test_open_mappings_still_accept_new_keys():
    config = compose_train_config(["+objectives.ce.extra=1"])
    assert config.objectives.ce.extra == 1


# ---------------------------------------------------------------- 7: types and ranges


@pytest.mark.parametrize(("override", "fix"), [
    ("training.checkpoint_every=0", "integer >= 1"),
    ("training.val_every=0", "integer >= 1"),
    ("training.grad_accum=0", "integer >= 1"),
    ("training.max_steps=-1", "integer >= 0"),
    ("training.lr=0", "number > 0"),
    ("training.lr=-0.001", "number > 0"),
    ("data.seq_len=1", "integer >= 2"),
    ("training.quant_lambda.end=2", "in \\[0, 1\\]"),
])
def test_out_of_range_values_name_key_value_and_fix(override, fix):
    key, value = override.split("=")
    with pytest.raises(UserInputError, match=f"{key}={value}.*{fix}.*e.g. {key}="):
        validate(compose_train_config([override]))


@pytest.mark.parametrize("override", ["training.max_steps=abc", "data.seq_len=abc"])
def test_wrong_types_name_the_key_and_the_reason(override):
    key = override.split("=")[0]

    def check():
        validate(compose_train_config([override]))

    with pytest.raises(UserInputError, match=f"'{key}'.*'abc'.*could not be converted"):
        check()


def test_config_errors_come_before_any_model_loads(capsys, tmp_path, monkeypatch):
    import wrinklefree.train.run as run

    def never(*args, **kwargs):
        raise AssertionError("the model must not load before the config is validated")

    monkeypatch.setattr(run, "load_model", never)
    monkeypatch.setattr(run, "load_tokenizer", never)
    start = time.perf_counter()
    err = _error_of(capsys, ["train", f"run_dir={tmp_path / 'run'}",
                             "training.checkpoint_every=0"])
    assert err.startswith("wf train: error: training.checkpoint_every=0")
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_eval_seq_len_1_is_refused_at_parse_time(capsys):
    err = _error_of(capsys, ["eval", "smollm2", "--seq-len", "1"])
    assert "--seq-len" in err and ">= 2" in err


def test_generate_negative_max_new_tokens_is_refused(capsys):
    err = _error_of(capsys, ["generate", "smollm2", "--max-new-tokens", "-5"])
    assert "--max-new-tokens" in err and ">= 1" in err


# ---------------------------------------------------------------- 8: the CLI boundary


def _tiny_folder(tmp_path):
    folder = tmp_path / "tiny"
    convert_model_to_bitnet(tiny_model(), calibrate=False).save_pretrained(folder)
    return folder


def test_full_disk_on_eval_json_is_one_line(capsys, tmp_path, monkeypatch):
    import wrinklefree.eval.compare as compare

    monkeypatch.setattr(compare, "evaluate_models", lambda *a, **k: [{"model": "m"}])
    err = _error_of(capsys, ["eval", "m", "--json", "/dev/full"])
    assert err == ("wf eval: error: cannot write /dev/full: no space left on device; free disk "
                   "space or write to another disk")


def _failing(monkeypatch, command: str, error: BaseException) -> None:
    """Make ``wf <command>`` raise ``error`` (as the library would) inside main()."""
    import wrinklefree.cli as cli

    def fail(args):
        raise error

    parser = cli.build_parser()
    parser._subparsers._group_actions[0].choices[command].set_defaults(func=fail)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)


@pytest.mark.parametrize("error", [
    PermissionError(errno.EACCES, "Permission denied", "/ro/out"),
    OSError(errno.EROFS, "Read-only file system", "/ro/out"),
    RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                 "Read-only file system"),
])
def test_unwritable_output_of_convert_is_one_line(capsys, monkeypatch, error):
    _failing(monkeypatch, "convert", error)
    err = _error_of(capsys, ["convert", "smollm2", "/ro/out"])
    assert err.startswith("wf convert: error: cannot write /ro/out: ")
    assert err.endswith("choose a writable location (or fix its permissions)")


def test_full_disk_in_train_names_the_run_folder(capsys, monkeypatch, tmp_path):
    _failing(monkeypatch, "train",
             RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2"))
    err = _error_of(capsys, ["train", f"run_dir={tmp_path}"])
    assert err == (f"wf train: error: cannot write {tmp_path}: no space left on device; free "
                   "disk space or write to another disk")


def test_full_disk_in_plot_and_export(capsys, monkeypatch):
    _failing(monkeypatch, "plot", OSError(errno.ENOSPC, "No space left on device"))
    assert _error_of(capsys, ["plot", "runs/a"]).startswith(
        "wf plot: error: cannot write runs/a/loss.png: no space left on device")


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    _failing(monkeypatch, "plot", KeyError("a bug"))
    with pytest.raises(KeyError):
        main(["plot", "somewhere"])


def test_foreign_and_malicious_resume_files_are_refused(tmp_path, capsys):
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(UserInputError, match="not a wrinklefree/Lightning checkpoint"):
        validate(compose_train_config([f"resume={text}"]))

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": Payload(), "loops": {}}, evil)
    with pytest.raises(UserInputError, match="not a wrinklefree/Lightning checkpoint.*not "
                       "unpickled"):
        validate(compose_train_config([f"resume={evil}"]))
    assert "payload ran" not in capsys.readouterr().out
    plain = tmp_path / "weights.ckpt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(UserInputError, match="no state_dict/loops"):
        validate(compose_train_config([f"resume={plain}"]))


# ---------------------------------------------------------------- 9: local paths are not hub ids


@pytest.mark.parametrize("command", [["generate", "runs/typo", "--prompt", "x"],
                                     ["eval", "runs/typo"], ["export", "runs/typo", "o.gguf"],
                                     ["info", "runs/typo"]])
def test_mistyped_run_folder_is_not_sent_to_the_hub(capsys, tmp_path, monkeypatch, command):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("a local typo must not reach the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    err = _error_of(capsys, command)
    assert err == (f"wf {command[0]}: error: model path runs/typo does not exist (not a model "
                   "folder, run folder or .gguf file here, and not a Hugging Face hub id); "
                   "check the path")


def test_unreachable_hub_id_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    err = _error_of(capsys, ["info", "no-such-org/no-such-model"])
    assert "no-such-org/no-such-model is not a local model and could not be loaded" in err


# ---------------------------------------------------------------- 10: context lengths


def test_prompt_beyond_the_context_is_refused(capsys, tmp_path):
    from transformers import GPT2Tokenizer

    from wrinklefree import assets

    folder = _tiny_folder(tmp_path)
    GPT2Tokenizer.from_pretrained(assets.gpt2_tokenizer_dir(tmp_path / "vocab")) \
        .save_pretrained(folder)
    err = _error_of(capsys, ["generate", str(folder), "--prompt", "word " * 300,
                             "--max-new-tokens", "4"])
    assert "exceeds the model's context of 256 positions" in err
    err = _error_of(capsys, ["generate", str(folder), "--prompt", "word " * 200,
                             "--max-new-tokens", "100"])
    assert "lower --max-new-tokens" in err
    err = _error_of(capsys, ["eval", str(folder), "--seq-len", "512"])
    assert "--seq-len" in err and "256 positions" in err


def test_more_windows_than_the_text_has_is_refused(capsys, tmp_path):
    from transformers import GPT2Tokenizer

    from wrinklefree import assets

    folder = _tiny_folder(tmp_path)
    GPT2Tokenizer.from_pretrained(assets.gpt2_tokenizer_dir(tmp_path / "vocab")) \
        .save_pretrained(folder)
    text = tmp_path / "short.txt"
    text.write_text("a short text of a few words.\n\nand one more paragraph.")
    err = _error_of(capsys, ["eval", str(folder), "--text", str(text), "--seq-len", "4",
                             "--windows", "1000"])
    assert "--windows 1000: the text has only" in err and "pass --windows" in err


# ---------------------------------------------------------------- issue 31: damaged weights


@pytest.mark.parametrize("command", ["info", "generate", "train", "bitnet"])
def test_a_truncated_weights_file_is_named_as_damaged(capsys, tmp_path, tiny_source,
                                                      tiny_overrides, command):
    import shutil

    folder = tmp_path / "model"
    if command == "bitnet":  # a converted model (a run's final/) loads through load_bitnet
        _tiny_folder(tmp_path).rename(folder)
        command = "info"
    else:
        shutil.copytree(tiny_source, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    argv = {"info": ["info", str(folder)],
            "generate": ["generate", str(folder), "--prompt", "x"],
            "train": ["train", *tiny_overrides(f"model.source={folder}",
                                               f"run_dir={tmp_path / 'run'}")]}[command]
    err = _error_of(capsys, argv)
    assert err.startswith(f"wf {command}: error: {weights} is damaged (")
    assert err.endswith("incomplete or corrupt (e.g. cut short by a kill or a full disk); write "
                        "the model again (`wf convert`, `wf train`) or restore the file from a "
                        "copy")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- issue 31: window lengths, text


def _tiny_folder_with_tokenizer(tmp_path):
    from transformers import GPT2Tokenizer

    from wrinklefree import assets

    folder = _tiny_folder(tmp_path)
    GPT2Tokenizer.from_pretrained(assets.gpt2_tokenizer_dir(tmp_path / "vocab")) \
        .save_pretrained(folder)
    return folder


def test_train_refuses_a_seq_len_beyond_the_model_or_the_text(capsys, tmp_path, tiny_source,
                                                              tiny_overrides):
    import json
    import shutil

    run_dir = tmp_path / "run"
    err = _error_of(capsys, ["train", *tiny_overrides("data.seq_len=512",
                                                      f"run_dir={run_dir}")])
    assert err == ("wf train: error: data.seq_len = 512 tokens exceeds the model's context of 256 "
                   "positions (max_position_embeddings); lower data.seq_len to at most the "
                   "model's context")  # as wf eval and wf generate refuse it
    long_context = tmp_path / "long"
    shutil.copytree(tiny_source, long_context)
    config = json.loads((long_context / "config.json").read_text())
    (long_context / "config.json").write_text(json.dumps(
        {**config, "max_position_embeddings": 1_000_000}))
    words = tmp_path / "words.txt"  # 40k tokens: 0.6 window of 60000, 1.3 of 30000
    words.write_text("\n\n".join(f"The {i}th shepherd fed his flock." for i in range(4000)))
    long_run = [f"model.source={long_context}", "model.teacher=null", f"run_dir={run_dir}",
                f"data.sources=[{{name: words, path: '{words}'}}]"]
    err = _error_of(capsys, ["train", *tiny_overrides(*long_run, "data.seq_len=60000")])
    assert err.startswith(f"wf train: error: source 'words' ({words}) has ")
    assert err.endswith("tokens, fewer than one window of data.seq_len=60000 per rank (1); add "
                        "text to it or lower data.seq_len")
    err = _error_of(capsys, ["train", *tiny_overrides(*long_run, "data.seq_len=30000")])
    assert err.startswith("wf train: error: data.seq_len=30000: not enough text for one window "
                          "of 30000 tokens (the text has ")  # the held-out validation text
    assert err.endswith("); lower data.seq_len")
    assert not run_dir.exists()


def test_an_empty_data_file_is_named(capsys, tmp_path, tiny_overrides):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    err = _error_of(capsys, ["train", *tiny_overrides(
        f"data.sources=[{{name: mine, path: '{empty}'}}]", "model.teacher=null")])
    assert err == (f"wf train: error: source 'mine' ({empty}) has no documents: it holds no text; "
                   "add text to it, or drop it from data.sources")


def test_eval_text_that_is_not_utf8_empty_or_short_is_named(capsys, tmp_path):
    folder = _tiny_folder_with_tokenizer(tmp_path)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("first line\n\ncaf\xe9 au lait".encode("latin-1"))
    err = _error_of(capsys, ["eval", str(folder), "--text", str(latin1)])
    assert err.startswith(f"wf eval: error: {latin1}:3 is not valid UTF-8 (")
    assert err.endswith("convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it "
                        "out")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    err = _error_of(capsys, ["eval", str(folder), "--text", str(empty)])
    assert err == (f"wf eval: error: --text {empty} holds no text; pass a UTF-8 text file with "
                   "documents separated by blank lines")
    short = tmp_path / "short.txt"
    short.write_text("a few words")
    err = _error_of(capsys, ["eval", str(folder), "--text", str(short), "--seq-len", "200"])
    assert err.startswith("wf eval: error: --seq-len 200: not enough text for one window of 200 "
                          "tokens (the text has ")
    assert err.endswith(f"pass a shorter --seq-len or a longer --text than {short}")


# ---------------------------------------------------------------- issue 31: presets


def test_an_unknown_preset_lists_the_presets_and_the_closest():
    with pytest.raises(UserInputError, match=r"unknown training preset 'demoo'; did you mean "
                       r"'demo'\? \(available: cpu_hour, demo, dlm_demo, .*stage1_subln"):
        compose_train_config(["training=demoo"])
    with pytest.raises(UserInputError, match=r"unknown objectives preset 'nonexistent' "
                       r"\(available: bitdistill, ce, .*\)"):
        compose_train_config(["objectives=nonexistent"])
    assert compose_train_config(["training=stage1_subln"]).training.max_steps == 0
