"""`wf chat` (stdin turns, both backends' plumbing), the GGUF branch of `wf generate` without
llama.cpp, and the llama.cpp module's argument checks. Runs without llama-cpp-python; the
llama.cpp side is tested in tests/export/test_llamacpp_run.py."""

from __future__ import annotations

import io

import pytest
import torch
from transformers import GPT2Tokenizer, LlamaConfig, LlamaForCausalLM

from wrinklefree import llamacpp
from wrinklefree.assets import gpt2_tokenizer_dir
from wrinklefree.chat import run_chat, torch_reply
from wrinklefree.cli import main
from wrinklefree.generate import eos_token_ids, generate_ar

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


class FakeStdin(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_run_chat_streams_one_reply_per_line_with_the_history():
    seen = []

    def reply(messages):
        seen.append([m["content"] for m in messages])
        yield from ["re: ", messages[-1]["content"]]

    out = io.StringIO()
    messages = run_chat(reply, FakeStdin("hello\n\n  again \n/exit\nignored\n"), out,
                        system="be brief")
    assert out.getvalue() == "re: hello\nre: again\n"
    assert seen == [["be brief", "hello"], ["be brief", "hello", "re: hello", "again"]]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]


@pytest.fixture
def chat_model_dir(tmp_path):
    tokenizer = GPT2Tokenizer.from_pretrained(gpt2_tokenizer_dir())
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path, model, tokenizer


def test_cli_chat_pytorch_with_piped_stdin(chat_model_dir, monkeypatch, capsys):
    folder, model, tokenizer = chat_model_dir
    monkeypatch.setattr("sys.stdin", FakeStdin("Hello there\nAnd again\n"))
    main(["chat", str(folder), "--max-new-tokens", "5"])
    lines = capsys.readouterr().out.split("\n")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    first = [t for c in generate_ar(model, ids, max_new_tokens=5,
                                    eos_token_id=eos_token_ids(model, tokenizer)) for t in c]
    expected = tokenizer.decode(first, skip_special_tokens=True)
    assert expected.strip() and expected in capsys_out(lines)


def capsys_out(lines: list[str]) -> str:
    return "\n".join(lines)


def test_cli_chat_reads_a_real_pipe(chat_model_dir):
    """`printf 'hi\\nbye\\n' | wf chat DIR`: a subprocess with its stdin piped, as a user would."""
    import subprocess
    import sys

    folder, _, _ = chat_model_dir
    run = subprocess.run([sys.executable, "-m", "wrinklefree.cli", "chat", str(folder),
                          "--max-new-tokens", "3"], input="hi\nbye\n", capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "> " not in run.stdout  # no prompts when stdin is not a terminal
    assert run.stdout.count("\n") >= 2  # one reply line per turn (a reply may hold newlines)


def test_torch_reply_needs_a_chat_template():
    tokenizer = GPT2Tokenizer.from_pretrained(gpt2_tokenizer_dir())
    with pytest.raises(ValueError, match="no chat template.*wf generate"):
        torch_reply(None, tokenizer, llamacpp.Sampling())


def test_generate_gguf_without_llamacpp_says_how_to_install(tmp_path, monkeypatch, capsys):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    with pytest.raises(SystemExit):
        main(["generate", str(path), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert "WF_WITH_LLAMACPP=1 ./scripts/install.sh" in err and "--backend torch" in err
    with pytest.raises(SystemExit):
        main(["serve", str(path)])
    assert "WF_WITH_LLAMACPP=1" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_pass(host):
    assert llamacpp.check_loopback(host) == host


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_other_hosts_are_refused_with_the_reason(host):
    with pytest.raises(ValueError, match=f"--host {host}: .*loopback"):
        llamacpp.check_loopback(host)


def test_sampling_flags_map_onto_llama_cpp_and_are_checked():
    kwargs = llamacpp.Sampling(max_new_tokens=7, temperature=0.5, top_p=0.9, seed=3).kwargs()
    assert kwargs == {"max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 0,
                      "min_p": 0.0, "repeat_penalty": 1.0, "seed": 3}
    assert llamacpp.Sampling(repetition_penalty=1.2).kwargs()["repeat_penalty"] == 1.2
    for bad, match in (({"temperature": -1}, "temperature"), ({"top_p": 0.0}, "top-p"),
                       ({"max_new_tokens": 0}, "max-new-tokens"),
                       ({"repetition_penalty": 0.0}, "repetition-penalty")):
        with pytest.raises(ValueError, match=match):
            llamacpp.Sampling(**bad)
