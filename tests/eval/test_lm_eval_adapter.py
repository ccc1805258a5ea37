"""The lm-evaluation-harness adapter (requirements-extras.txt; skipped without it outside CI, where
``WF_WITH_EXTRAS=1`` makes a missing harness an error): registration,
log-likelihoods equal to the model's own, and a whole harness run on a local toy task."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

if os.environ.get("WF_WITH_EXTRAS") != "1":  # CI installs requirements-extras.txt: never skip
    pytest.importorskip("lm_eval", reason="optional: pip install -r requirements-extras.txt")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from wrinklefree.convert import convert_model_to_bitnet  # noqa: E402
from wrinklefree.eval.lm_eval_adapter import WrinklefreeLM  # noqa: E402
from wrinklefree.models import load_model  # noqa: E402
from wrinklefree.nn import BitLinear  # noqa: E402

TASK_YAML = """task: wf_toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def bitnet_folder(tmp_path_factory, gpt2_tokenizer, save_tiny):
    folder = tmp_path_factory.mktemp("bitnet")
    model = save_tiny(folder, gpt2_tokenizer)
    convert_model_to_bitnet(model, calibrate=False)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    rows = [{"question": "The shepherd fed his", "choices": [" flock", " car"], "answer": 0},
            {"question": "The river ran to the", "choices": [" sea", " sky"], "answer": 0}]
    (folder / "toy.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (folder / "wf_toy.yaml").write_text(TASK_YAML.format(data=folder / "toy.jsonl"))
    return folder


def test_registered_by_name():
    assert get_model("wrinklefree") is WrinklefreeLM


def test_loglikelihood_is_the_models(bitnet_folder, gpt2_tokenizer):
    lm = WrinklefreeLM(pretrained=str(bitnet_folder), device="cpu", batch_size=2)
    assert isinstance(lm.model.model.layers[0].mlp.down_proj, BitLinear)
    context, continuation = "The shepherd fed", " his flock"
    request = Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation),
                       idx=0)
    (loglik, _), = lm.loglikelihood([request])
    ctx = gpt2_tokenizer(context)["input_ids"]
    cont = gpt2_tokenizer(continuation)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = load_model(str(bitnet_folder))(input_ids=ids).logits.log_softmax(-1)[0]
    # token j of the continuation is predicted by the logits one position before it
    expected = sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont))
    assert loglik == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow  # indexing the harness's task registry takes ~15 s
def test_simple_evaluate_on_a_local_task(bitnet_folder, toy_task):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(model="wrinklefree", model_args=f"pretrained={bitnet_folder}",
                              tasks=["wf_toy"], device="cpu", batch_size=2,
                              task_manager=TaskManager(include_path=str(toy_task)))
    assert 0.0 <= results["results"]["wf_toy"]["acc,none"] <= 1.0
    assert results["config"]["model"] == "wrinklefree"


@pytest.mark.slow  # a fresh interpreter imports the harness (~20 s)
def test_harness_cli_runs_a_local_task(bitnet_folder, toy_task, tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "wrinklefree.eval.lm_eval_adapter", "--model", "wrinklefree",
           "--model_args", f"pretrained={bitnet_folder}", "--tasks", "wf_toy",
           "--include_path", str(toy_task), "--device", "cpu", "--batch_size", "2",
           "--output_path", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(next(out.rglob("results*.json")).read_text())
    assert 0.0 <= results["results"]["wf_toy"]["acc,none"] <= 1.0
