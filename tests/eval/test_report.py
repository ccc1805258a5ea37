"""The training report: per-domain perplexity, ratios to the teacher, samples, the table."""

from __future__ import annotations

import pytest
import torch

from wrinklefree.eval.report import (
    NO_TEACHER,
    evaluate_model,
    format_report,
    held_out_prompts,
    ratios_to_teacher,
)


def _row(asv: float, english: float, rep4: float = 0.0) -> dict:
    return {"perplexity": asv, "domains": {"asv": asv, "english": english},
            "degeneration": {"asv": {"rep4": rep4}, "english": {"rep4": rep4 / 2}},
            "distinct2": 1.0, "samples": [{"prompt": "And God said,", "text": " x"}]}


def test_ratios_and_table_by_hand():
    report = {"teacher": _row(20.0, 60.0), "converted": _row(2e7, 3e7),
              "trained": _row(100.0, 600.0, rep4=0.5)}
    ratios = ratios_to_teacher(report)
    assert ratios == {"converted": {"asv": 1e6, "english": 5e5},
                      "trained": {"asv": pytest.approx(5.0), "english": pytest.approx(10.0)}}
    table = format_report(report)
    lines = table.splitlines()
    assert lines[0].split() == ["model", "asv", "ppl", "english", "ppl", "asv", "/teacher",
                                "english", "/teacher", "asv", "rep-4", "english", "rep-4",
                                "distinct-2"]
    assert lines[4].split() == ["trained", "100.00", "600.00", "5.00", "10.00", "0.50", "0.25",
                                "1.00"]
    assert "2e+07" in lines[3] and NO_TEACHER not in table
    report["windows"] = {"test": {"asv": [64, 128], "english": [64, 128]},
                         "validation": {"asv": [8, 128], "english": [8, 128]}}
    assert ("perplexity on the test windows: asv 64 x 128 tokens, english 64 x 128 tokens"
            in format_report(report).splitlines())
    assert "trained   'And God said,' -> ' x'" in table
    report["seconds"] = {"teacher eval": 41.6, "training": 548.4}
    assert "time: teacher eval 42 s, training 9 min 08 s" in format_report(report).splitlines()


def test_held_out_prompts_open_equal_chunks_of_the_windows_text():
    windows = torch.arange(32).view(2, 16)
    assert held_out_prompts(windows, count=4, length=3).tolist() == [
        [0, 1, 2], [8, 9, 10], [16, 17, 18], [24, 25, 26]]
    # 8 windows x 128 tokens: the opening of every quarter window, the prompts of earlier reports
    prompts = held_out_prompts(torch.arange(8 * 128).view(8, 128))
    assert prompts.shape == (32, 12) and prompts[:, 0].tolist() == list(range(0, 1024, 32))
    # 64 windows cost no more generation: 32 prompts spread over all of them
    prompts = held_out_prompts(torch.arange(64 * 128).view(64, 128))
    assert prompts.shape == (32, 12) and prompts[:, 0].tolist() == list(range(0, 8192, 256))
    # too little text for count x length: fewer prompts, never shorter ones
    assert held_out_prompts(torch.arange(30).view(1, 30), count=4, length=12).tolist() == [
        list(range(12)), list(range(15, 27))]


def test_without_teacher_it_says_so():
    report = {"trained": _row(100.0, 600.0)}
    assert ratios_to_teacher(report) is None
    table = format_report(report)
    assert NO_TEACHER in table and "trained" in table


def test_evaluate_model_on_a_tiny_model(tiny_folder):
    from wrinklefree.generate import load_for_generation

    model, tokenizer = load_for_generation(str(tiny_folder))
    windows = {"asv": torch.randint(0, 100, (2, 16)), "english": torch.randint(0, 100, (2, 16))}
    validation = {"asv": torch.randint(0, 100, (1, 16))}
    result = evaluate_model(model, tokenizer, windows, ["And God said,", "The city"], 6,
                            validation=validation)
    assert set(result["domains"]) == {"asv", "english"}
    assert set(result["validation"]) == {"asv"} and result["validation"]["asv"] > 1
    assert result["perplexity"] == result["domains"]["asv"]
    assert [s["prompt"] for s in result["samples"]] == ["And God said,", "The city"]
    assert result["sample"] == result["samples"][0]["text"]
    assert set(result["degeneration"]) == {"asv", "english"}
    loops = [d["rep4"] for d in result["degeneration"].values()]
    assert result["rep4"] == pytest.approx(sum(loops) / 2)
    assert 0.0 <= result["rep4"] <= 1.0 and 0.0 < result["distinct2"] <= 1.0


def test_penalized_loop_column_and_samples_header():
    report = {"teacher": _row(20.0, 60.0), "trained": _row(100.0, 600.0, rep4=0.5)}
    for row in report.values():
        row.update(repetition_penalty=1.2, rep4_penalized=0.05)
    lines = format_report(report).splitlines()
    assert lines[0].endswith("distinct-2  rep-4 θ=1.2")
    assert lines[3].split()[-3:] == ["0.25", "1.00", "0.05"]  # raw rep-4 stays beside it
    assert "greedy samples (repetition penalty 1.2):" in lines


def test_evaluate_model_measures_plain_greedy_loops_beside_the_penalized(tiny_folder):
    from wrinklefree.generate import load_for_generation

    model, tokenizer = load_for_generation(str(tiny_folder))
    windows = {"asv": torch.randint(0, 100, (2, 16))}
    plain = evaluate_model(model, tokenizer, windows, ["The city"], 6)
    penalized = evaluate_model(model, tokenizer, windows, ["The city"], 6, repetition_penalty=1.5)
    assert "rep4_penalized" not in plain
    assert penalized["degeneration"] == plain["degeneration"]  # the model's own loops
    assert set(penalized["degeneration_penalized"]) == {"asv"}
    assert penalized["rep4_penalized"] == penalized["degeneration_penalized"]["asv"]["rep4"]
