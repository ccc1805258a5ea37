"""Running exports in llama.cpp: `wf generate x.gguf`, `wf chat x.gguf` and `wf serve x.gguf`
over real HTTP on 127.0.0.1 (optional llama-cpp-python + server extras; CI sets
WF_WITH_LLAMACPP=1). The server process is always terminated by the fixture."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from llamacpp_probe import require_llamacpp
from tiny_bitnet import save_tiny
from transformers import AutoTokenizer

from wrinklefree.cli import main
from wrinklefree.export.gguf import export_gguf
from wrinklefree.models import load_model

llama_cpp = require_llamacpp()  # skips, with the reason, where it is missing or crashes
pytestmark = pytest.mark.llamacpp

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def chat_gguf(tmp_path_factory) -> Path:
    """A tiny ternary GGUF whose tokenizer carries a chat template."""
    folder = save_tiny(tmp_path_factory.mktemp("chat") / "model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    path = folder.parent / "m.gguf"
    # F16 embeddings: the random model's greedy bytes (incomplete UTF-8 characters that
    # llama-cpp-python completes past max_tokens) are those the server test's bound was set for
    export_gguf(load_model(str(folder)), path, folder, embed_type="f16")
    return path


def test_generate_gguf_runs_llamacpp_greedy_and_seeded(chat_gguf, capsys):
    args = ["generate", str(chat_gguf), "--prompt", "And God said", "--max-new-tokens", "6"]
    main(args)
    out = capsys.readouterr()
    assert "llama.cpp]" in out.err
    llm = llama_cpp.Llama(model_path=str(chat_gguf), verbose=False)
    try:
        expected = llm.create_completion("And God said", max_tokens=6, temperature=0.0)
    finally:
        llm.close()
    assert out.out.rstrip("\n") == expected["choices"][0]["text"]
    sampled = args + ["--temperature", "1.0", "--top-p", "0.9", "--seed", "5"]
    main(sampled)
    first = capsys.readouterr().out
    main(sampled)
    assert capsys.readouterr().out == first  # same seed, same sample


def test_generate_applies_the_lora_adapter_beside_the_gguf(tmp_path, capsys):
    from wrinklefree import llamacpp
    from wrinklefree.llamacpp import adapter_path

    folder = save_tiny(tmp_path / "lrc", lrc_rank=8)
    path = tmp_path / "m.gguf"
    export_gguf(load_model(str(folder)), path, folder)
    args = ["generate", str(path), "--prompt", "And God said", "--max-new-tokens", "6"]
    main(args)
    out = capsys.readouterr()
    assert f"[LoRA adapter {adapter_path(path)} applied" in out.err
    llm = llamacpp.load(path, lora=adapter_path(path))  # the same stream, adapter applied
    try:
        expected = "".join(llamacpp.generate(llm, "And God said", llamacpp.Sampling(6)))
    finally:
        llm.close()
    assert out.out.rstrip("\n") == expected
    main(args + ["--lora", "none"])
    assert "LoRA adapter" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args + ["--lora", str(tmp_path / "missing.lora.gguf")])
    assert "--lora none" in capsys.readouterr().err


def test_chat_gguf_uses_its_template_with_piped_stdin(chat_gguf):
    run = subprocess.run([sys.executable, "-m", "wrinklefree.cli", "chat", str(chat_gguf),
                          "--max-new-tokens", "4", "--threads", "1"], input="hello\nagain\n",
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("\n") >= 2


def test_chat_refuses_a_gguf_without_template(tiny_dir, tmp_path, capsys):
    path = tmp_path / "plain.gguf"
    export_gguf(load_model(str(tiny_dir)), path, tiny_dir)
    with pytest.raises(SystemExit):
        main(["chat", str(path)])
    assert "no chat template" in capsys.readouterr().err


# ----------------------------------------------------------------------------- HTTP server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 60.0):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=timeout)


@pytest.fixture(scope="module")
def server(chat_gguf):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wrinklefree.cli", "serve", str(chat_gguf),
                             "--host", "127.0.0.1", "--port", str(port), "--n-ctx", "512",
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"wf serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("wf serve did not answer within 120 s")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_server_completion(server):
    with _post(server + "/v1/completions", {"prompt": "And God said", "max_tokens": 6,
                                            "temperature": 0}) as r:
        body = json.loads(r.read())
    assert r.status == 200 and isinstance(body["choices"][0]["text"], str)
    assert 0 < body["usage"]["completion_tokens"] <= 6 + 4  # see the concurrent test


def test_server_streams_server_sent_events(server):
    events = []
    with _post(server + "/v1/completions", {"prompt": "And God said", "max_tokens": 5,
                                            "temperature": 0, "stream": True}) as r:
        for line in r:
            line = line.decode().strip()
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]" and len(events) >= 3
    pieces = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert "".join(pieces)


def test_server_rejects_a_bad_request_with_a_message(server):
    with pytest.raises(urllib.error.HTTPError) as info:
        _post(server + "/v1/completions", {"prompt": "x", "max_tokens": "many"})
    assert 400 <= info.value.code < 500
    assert "max_tokens" in info.value.read().decode()


def test_server_answers_concurrent_requests_in_bounded_time(server):
    def one(i: int) -> int:
        with _post(server + "/v1/completions", {"prompt": f"Request {i}", "max_tokens": 8,
                                                "temperature": 0}, timeout=120) as r:
            return json.loads(r.read())["usage"]["completion_tokens"]

    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(one, range(4)))
    # llama-cpp-python finishes an incomplete UTF-8 character past max_tokens (byte tokens of the
    # tiny tokenizer: up to 3 more) and counts one more token when it stops on length
    assert all(0 < c <= 8 + 4 for c in counts), counts
    assert time.monotonic() - start < 120


def test_generate_gguf_opens_the_context_the_prompt_needs(tmp_path, capsys):
    folder = save_tiny(tmp_path / "model", max_position_embeddings=4096)
    path = tmp_path / "long.gguf"
    export_gguf(load_model(str(folder)), path, folder)
    # > 2048 tokens (the old fixed context); the random model's greedy reply to it is plain ASCII
    prompt = "In the beginning God created the heaven and the earth. " * 184
    n_prompt = len(AutoTokenizer.from_pretrained(folder)(prompt)["input_ids"])
    assert 2048 < n_prompt < 4096 - 4
    main(["generate", str(path), "--prompt", prompt, "--max-new-tokens", "4"])
    assert "llama.cpp]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(path), "--prompt", prompt * 2, "--max-new-tokens", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wf generate: error: the prompt (")
    assert err.endswith("exceeds the model's context of 4096 positions (bitnet.context_length); "
                        "shorten the prompt or lower --max-new-tokens")


def _post_raw(url: str, data: bytes):
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=60)


@pytest.mark.parametrize(("body", "problem"), [
    (b'{"prompt": "x", "max_tokens": 4', "not valid JSON"),
    (b'["a", "list"]', "a JSON list, not an object"),
])
def test_server_answers_a_malformed_body_with_400(server, body, problem):
    with pytest.raises(urllib.error.HTTPError) as info:
        _post_raw(server + "/v1/completions", body)
    assert info.value.code == 400
    error = json.loads(info.value.read())["error"]
    assert error["type"] == "invalid_request_error" and problem in error["message"]
    with _post(server + "/v1/completions", {"prompt": "x", "max_tokens": 2}) as r:
        assert r.status == 200  # the server goes on


def test_serve_refuses_before_it_says_it_serves(chat_gguf, tmp_path, capsys):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = {
            "--host 0.0.0.0": ([str(chat_gguf), "--host", "0.0.0.0"], "loopback addresses only"),
            "a run folder": ([str(tmp_path)], f"{tmp_path} is a folder, not a .gguf file"),
            "another file": ([str(not_gguf)], f"{not_gguf} is not a GGUF file"),
            "a busy port": ([str(chat_gguf), "--port", str(port)],
                            f"--port {port}: 127.0.0.1:{port} is already in use; pass another "
                            "--port"),
        }
        for case, (argv, message) in cases.items():
            with pytest.raises(SystemExit) as exit_info:
                main(["serve", *argv])
            assert exit_info.value.code == 2, case
            err = capsys.readouterr().err.strip()
            assert "serving" not in err and len(err.splitlines()) == 1, (case, err)
            assert err.startswith("wf serve: error: ") and message in err, (case, err)
