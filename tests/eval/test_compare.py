"""`wf eval`: one table over several models, identical windows, JSON output, errors."""

from __future__ import annotations

import json
import math

import pytest

from wrinklefree.cli import main
from wrinklefree.convert import convert_model_to_bitnet
from wrinklefree.eval.compare import format_table, likelihood
from wrinklefree.eval.elbo import masked_elbo
from wrinklefree.eval.perplexity import eval_windows, mean_nll
from wrinklefree.models import load_model, load_tokenizer
from wrinklefree.objectives import add_mask_token


@pytest.fixture(scope="module")
def converted_run(tmp_path_factory, gpt2_tokenizer, save_tiny):
    """A run folder whose final/ holds the tiny model converted to BitNet."""
    run = tmp_path_factory.mktemp("run")
    model = save_tiny(run / "final", gpt2_tokenizer)
    convert_model_to_bitnet(model, calibrate=False)
    model.save_pretrained(run / "final")
    return run


@pytest.fixture(scope="module")
def dlm_folder(tmp_path_factory, gpt2_tokenizer, save_tiny):
    """The tiny model with <|mask|> added, as a DLM student would be saved."""
    folder = tmp_path_factory.mktemp("dlm")
    tokenizer = type(gpt2_tokenizer).from_pretrained(gpt2_tokenizer.name_or_path)
    model = save_tiny(folder, tokenizer, seed=1)
    add_mask_token(tokenizer, model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_perplexity_table_on_identical_windows(tiny_folder, converted_run, text_file, tmp_path,
                                               capsys):
    out = tmp_path / "ppl.json"
    main(["eval", str(tiny_folder), str(converted_run), "--text", str(text_file),
          "--seq-len", "16", "--windows", "3", "--json", str(out)])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["model", "windows", "tokens", "nll", "perplexity"]
    assert len(table) == 4  # header, rule, two models
    rows = json.loads(out.read_text())["results"]
    assert rows[0]["windows"] == rows[1]["windows"] and rows[0]["tokens"] == 3 * 15
    windows = eval_windows(load_tokenizer(str(tiny_folder)), 16, 3, text_file)
    expected = math.exp(mean_nll(load_model(str(tiny_folder)), windows))
    assert rows[0]["perplexity"] == pytest.approx(expected, rel=1e-6)
    assert rows[1]["perplexity"] != pytest.approx(expected)  # the ternary model differs


def test_elbo_for_dlm_nll_for_ar(tiny_folder, dlm_folder, text_file):
    options = dict(seq_len=16, num_windows=2, text=text_file, num_samples=2, seed=3)
    dlm = likelihood(str(dlm_folder), elbo=True, **options)
    ar = likelihood(str(tiny_folder), elbo=True, **options)
    assert (dlm["kind"], ar["kind"]) == ("dlm-elbo", "ar")
    assert dlm["windows"] == ar["windows"]  # <|mask|> does not change how text tokenizes
    model = load_model(str(dlm_folder))
    windows = eval_windows(load_tokenizer(str(dlm_folder)), 16, 2, text_file)
    expected = masked_elbo(model, windows, model.config.mask_token_id, num_samples=2, seed=3)
    assert dlm["nll"] == pytest.approx(expected, rel=1e-6)
    assert dlm["bits_per_token"] == pytest.approx(expected / math.log(2), rel=1e-6)
    assert ar["nll"] == pytest.approx(mean_nll(load_model(str(tiny_folder)), windows), rel=1e-6)


@pytest.mark.parametrize("task", ["classification", "summarization"])
def test_cli_task_wiring(task, word_folder, tmp_path, capsys):
    rows = [{"text": "the good dog", "label": 1, "article": "the dog ran", "summary": "dog"},
            {"text": "the bad dog", "label": 0, "article": "the sheep ran", "summary": "sheep"}]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out.json"
    main(["eval", str(word_folder), "--task", task, "--train", str(data), "--eval", str(data),
          "--steps", "2", "--limit-eval", "1", "--max-new-tokens", "3", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["task"] == task and result["results"][0]["eval_examples"] == 1
    metric = "accuracy" if task == "classification" else "rouge1"
    assert 0 <= result["results"][0][metric] <= (1 if task == "classification" else 100)
    assert metric in capsys.readouterr().out


def test_format_table():
    text = format_table([{"model": "a", "ppl": 31.6}, {"model": "bb", "ppl": 8e7}],
                        ("model", "ppl"))
    assert text.splitlines() == ["model      ppl", "-----  -------",
                                 "a      31.6000", "bb       8e+07"]


def test_cli_errors(tiny_folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tiny_folder), "--task", "classification"])
    assert exit_info.value.code == 2
    assert "needs --train" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_perplexity_is_sane():
    # a real pretrained model on held-out ASV: ~19 on 16 x 256 windows; short windows read higher
    row = likelihood("smollm2", seq_len=64, num_windows=2)
    assert 5 < row["perplexity"] < 100 and row["kind"] == "ar"


def test_domains_and_ratios_to_a_reference(tiny_folder, converted_run, tmp_path, capsys):
    out = tmp_path / "domains.json"
    main(["eval", str(converted_run), "--reference", str(tiny_folder), "--seq-len", "16",
          "--windows", "2", "--json", str(out)])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["model", "domain", "windows", "tokens", "nll", "perplexity",
                                "ratio"]
    rows = json.loads(out.read_text())["results"]
    assert [(r["model"], r["domain"]) for r in rows] == [
        (str(tiny_folder), "asv"), (str(tiny_folder), "english"),
        (str(converted_run), "asv"), (str(converted_run), "english")]
    assert rows[0]["ratio"] == rows[1]["ratio"] == 1.0
    for student, ref in ((rows[2], rows[0]), (rows[3], rows[1])):
        assert student["windows"] == ref["windows"]
        assert student["ratio"] == pytest.approx(student["perplexity"] / ref["perplexity"])
    assert rows[0]["windows"] != rows[1]["windows"]  # two different texts
    main(["eval", str(tiny_folder), "--domain", "english", "--seq-len", "16", "--windows", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[2].split()[1] == "english"


def test_domain_and_text_exclude_each_other(tiny_folder, text_file, capsys):
    with pytest.raises(SystemExit):
        main(["eval", str(tiny_folder), "--domain", "asv", "--text", str(text_file)])
    assert "exclude each other" in capsys.readouterr().err
