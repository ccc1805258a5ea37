"""Run exported GGUF files where users run them: llama.cpp through llama-cpp-python.

``wf generate x.gguf``, ``wf chat x.gguf`` and ``wf serve x.gguf`` call into this module. The
binding is optional (``requirements-llamacpp.txt``, built from source); every entry point raises
:class:`~wrinklefree.errors.UserInputError` with the install command when it is missing.

Sampling follows ``wf generate``'s PyTorch decoder (``wrinklefree.sampling.next_token``): greedy
at temperature 0, else softmax(logits / T) restricted to the top-p nucleus. llama.cpp's extra
samplers are switched off (top_k = 0, min_p = 0, no repeat penalty) so the same flags mean the
same distribution.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrinklefree.errors import UserInputError, check_positions

DEFAULT_N_CTX = 2048  # wf chat / wf serve --n-ctx; the least wf generate opens
INSTALL_HINT = (
    "llama.cpp is not installed: run `WF_WITH_LLAMACPP=1 ./scripts/install.sh` (builds "
    "llama-cpp-python from source, ~10 minutes) or `.venv/bin/pip install -r "
    "requirements-llamacpp.txt`"
)
SERVER_HINT = (
    "the llama-cpp-python server extras (fastapi, uvicorn, sse-starlette, starlette-context, "
    "pydantic-settings) are not installed: run `.venv/bin/pip install -r "
    "requirements-llamacpp.txt`"
)


@dataclass(frozen=True)
class Sampling:
    """wf's sampling flags; :meth:`kwargs` maps them onto llama-cpp-python's arguments."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0  # llama.cpp applies it to the last 64 tokens only

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserInputError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UserInputError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserInputError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise UserInputError(f"--repetition-penalty must be > 0 (1 = off, 1.2 = CTRL's), got "
                                 f"{self.repetition_penalty}")

    def kwargs(self) -> dict[str, Any]:
        # top_k = 0 and min_p = 0 disable those samplers: only temperature and top-p remain
        return {"max_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": 0, "min_p": 0.0,
                "repeat_penalty": self.repetition_penalty,
                "seed": self.seed}


def is_gguf(src: str | Path) -> bool:
    """A path to a .gguf file (what llama.cpp runs); names like 'smollm2' are not."""
    return str(src).endswith(".gguf") and Path(src).is_file()


def adapter_path(model_path: str | Path) -> Path:
    """Where ``wf export`` writes a model's LoRA adapter (its LRC correction): ``x.gguf`` ->
    ``x.lora.gguf`` beside it."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.lora.gguf")


def find_adapter(model_path: str | Path, lora: str | None = None) -> Path | None:
    """The LoRA adapter to load with ``model_path``: ``lora`` (a path, or ``none`` for the base
    alone), else the one beside the model (:func:`adapter_path`) if it exists."""
    if lora is not None:
        if lora == "none":
            return None
        if not Path(lora).is_file():
            raise FileNotFoundError(f"--lora {lora}: no such adapter file; pass the .lora.gguf "
                                    "that `wf export` wrote, or --lora none")
        return Path(lora)
    beside = adapter_path(model_path)
    return beside if beside.is_file() else None


def adapter_note(adapter: Path) -> str:
    """The one line `wf generate / chat / serve` print when an adapter is loaded."""
    return (f"[LoRA adapter {adapter} applied (the model's low-rank correction); --lora none "
            "runs the base alone]")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send the process's stderr (file descriptor 2) to /dev/null while llama.cpp loads a LoRA
    adapter: on a base whose weights it repacks (Q4_0 on AVX2) it prints one warning per adapter
    tensor ("cannot use buft 'CPU_REPACK', fallback to CPU", ~200 lines for SmolLM2) past
    llama-cpp-python's ``verbose=False``. Failures still raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_gguf(path: str | Path) -> None:
    """Refuse a path that is not a GGUF file (missing, a folder, another file), naming it, before
    llama.cpp or a server starts on it."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{path} is a folder, not a .gguf file; pass the file `wf export` "
                             "writes (e.g. `wf export RUN_DIR model.gguf`)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file; export one with `wf export`")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserInputError(f"{path} is not a GGUF file (it does not start with GGUF's "
                                 "magic bytes); export one with `wf export`")


def available() -> bool:
    """Whether llama-cpp-python is importable."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def load(path: str | Path, *, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None,
         seed: int | None = None, lora: str | Path | None = None, **llama_kwargs):
    """A ``llama_cpp.Llama`` for the GGUF at ``path`` with the LoRA adapter ``lora`` applied at
    scale 1 (quiet; raises with the install hint). ``llama_kwargs`` go to ``Llama`` as they are
    (e.g. ``logits_all``, ``n_batch``)."""
    if not available():
        raise UserInputError(INSTALL_HINT)
    check_gguf(path)
    from llama_cpp import Llama

    kwargs: dict[str, Any] = {"model_path": str(path), "n_ctx": n_ctx, "verbose": False,
                              **llama_kwargs}
    if n_threads is not None:
        kwargs |= {"n_threads": n_threads, "n_threads_batch": n_threads}
    if seed is not None:
        kwargs["seed"] = seed
    if lora is None:
        return Llama(**kwargs)
    with native_stderr_silenced():
        return Llama(**kwargs, lora_path=str(lora), lora_scale=1.0)


CHAT_TEMPLATE_SLACK = 256  # tokens a chat template may wrap around one message


def context_for(path: str | Path, prompt: str, max_new_tokens: int, *, chat: bool = False,
                ) -> int:
    """The context to open ``path`` with for one generation: :data:`DEFAULT_N_CTX`, more when
    the prompt's tokens and ``max_new_tokens`` (and room for a chat template) need it, never
    more than the model's own context (``<arch>.context_length``): a prompt that does not fit
    is refused with the fix. Reads the vocabulary and metadata only (no weights: ~0.4 s)."""
    if not available():
        raise UserInputError(INSTALL_HINT)
    check_gguf(path)
    import llama_cpp

    # llama-cpp-python's model wrapper (pinned in requirements-llamacpp.txt): Llama() would
    # also create a context, and warn about it, for a vocabulary-only load
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    vocab = LlamaModel(path_model=str(path), params=params, verbose=False)
    try:
        metadata = vocab.metadata()
        tokens = len(vocab.tokenize(prompt.encode(), add_bos=True, special=True))
    finally:
        vocab.close()
    key = f"{metadata.get('general.architecture')}.context_length"
    limit = int(metadata[key]) if key in metadata else None
    check_positions(tokens + max_new_tokens, limit,
                    f"the prompt ({tokens}) + --max-new-tokens ({max_new_tokens})",
                    "shorten the prompt or lower --max-new-tokens", key)
    # room beyond the need: llama-cpp-python decodes past max_tokens to finish a UTF-8 character
    n_ctx = max(DEFAULT_N_CTX, tokens + max_new_tokens + (CHAT_TEMPLATE_SLACK if chat else 0))
    return n_ctx if limit is None else min(n_ctx, limit)


def generate(llm, prompt: str, sampling: Sampling) -> Iterator[str]:
    """Stream the continuation of ``prompt`` as text pieces (llama.cpp adds BOS as configured)."""
    if not prompt:
        raise UserInputError("the prompt is empty; give at least one token")
    for chunk in llm.create_completion(prompt, stream=True, **sampling.kwargs()):
        piece = chunk["choices"][0]["text"]
        if piece:
            yield piece


def chat_template(llm) -> str | None:
    """The chat template stored in the GGUF (``tokenizer.chat_template``), if any."""
    return llm.metadata.get("tokenizer.chat_template")


def chat_reply(llm, messages: list[dict[str, str]], sampling: Sampling) -> Iterator[str]:
    """Stream the assistant's reply to ``messages`` with the GGUF's own chat template."""
    if chat_template(llm) is None:
        raise UserInputError("this GGUF has no chat template (tokenizer.chat_template); it is "
                             "not an instruct model: use `wf generate` instead of `wf chat`")
    stream = llm.create_chat_completion(messages=messages, stream=True, **sampling.kwargs())
    for chunk in stream:
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            yield piece


# ----------------------------------------------------------------------------- server


def check_loopback(host: str) -> str:
    """``host`` when it is a loopback address (127.0.0.0/8, ::1, localhost), else refuse: the
    server has no authentication, so it listens on this machine only."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UserInputError(
            f"--host {host}: wf serve listens on loopback addresses only (127.0.0.1, ::1, "
            "localhost); it has no authentication. Put a reverse proxy in front to expose it."
        )
    return host


def server_app(path: str | Path, *, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None,
               alias: str | None = None, lora: Path | None = None):
    """The OpenAI-compatible FastAPI app of llama-cpp-python's server for one GGUF (and its LoRA
    adapter ``lora``): ``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``, streaming
    via SSE."""
    if not available():
        raise UserInputError(INSTALL_HINT)
    check_gguf(path)
    try:
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as err:
        raise UserInputError(f"{SERVER_HINT} ({err})") from err
    _validation_errors_as_422()
    model: dict[str, Any] = {"model": str(path), "model_alias": alias or Path(path).stem,
                             "n_ctx": n_ctx, "verbose": False}
    if n_threads is not None:
        model |= {"n_threads": n_threads, "n_threads_batch": n_threads}
    if lora is None:
        app = create_app(server_settings=ServerSettings(),
                         model_settings=[ModelSettings(**model)])
    else:
        with native_stderr_silenced():  # the app loads the model (and the adapter) here
            app = create_app(server_settings=ServerSettings(),
                             model_settings=[ModelSettings(**model, lora_path=str(lora))])
    app.add_middleware(JsonObjectBodies)
    return app


def invalid_request(message: str) -> dict[str, Any]:
    """An OpenAI-style error body (``invalid_request_error``)."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": None}}


class JsonObjectBodies:
    """ASGI middleware: a POST whose body is not a JSON object is answered 400, naming the
    problem. llama-cpp-python 0.3.36's route handler parses the body again in its own error path
    and answers malformed JSON with a 500 and a server traceback."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        import json

        from starlette.responses import JSONResponse

        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:  # requests are small: read the whole body, then hand it on
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False) and message["type"] == "http.request"
        body = b"".join(chunks)
        try:
            parsed = json.loads(body)
            problem = None if isinstance(parsed, dict) else (
                f"the request body is a JSON {type(parsed).__name__}, not an object")
        except ValueError as err:
            problem = f"the request body is not valid JSON ({err})"
        if problem is not None:
            await JSONResponse(invalid_request(problem), status_code=400)(scope, receive, send)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # e.g. http.disconnect while streaming
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _validation_errors_as_422() -> None:
    """llama-cpp-python 0.3.36's route handler (server/errors.py, RouteErrorHandler) turns every
    exception into a 500, a malformed request included. Answer that one as a 422 naming the bad
    fields (OpenAI's ``invalid_request_error``); every other error keeps the library's handling."""
    from fastapi.exceptions import RequestValidationError
    from llama_cpp.server.errors import ErrorResponse, RouteErrorHandler

    original = RouteErrorHandler.error_message_wrapper
    if getattr(original, "wf_validation_422", False):
        return

    def wrapper(self, error: Exception, body=None):
        if not isinstance(error, RequestValidationError):
            return original(self, error, body)
        problems = [(".".join(str(p) for p in e["loc"][1:]), e["msg"]) for e in error.errors()]
        message = "; ".join(f"{field}: {msg}" for field, msg in problems)
        return 422, ErrorResponse(message=message, type="invalid_request_error",
                                  param=problems[0][0] if problems else None, code=None)

    wrapper.wf_validation_422 = True
    RouteErrorHandler.error_message_wrapper = wrapper


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on, before the model loads (uvicorn would exit
    with only its errno line)."""
    import errno
    import socket

    if not 0 < port < 65536:
        raise UserInputError(f"--port must be in 1..65535, got {port}")
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            raise UserInputError(f"--port {port}: {host}:{port} is already in use; pass another "
                                 "--port, or stop the process listening there") from None


def serve(path: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None,
          lora: Path | None = None) -> None:
    """Serve one GGUF over HTTP on ``host:port`` (loopback only) until interrupted. Everything
    is checked (address, port, file, model) before the "serving" line is printed."""
    check_loopback(host)
    check_port_free(host, port)
    app = server_app(path, n_ctx=n_ctx, n_threads=n_threads, lora=lora)
    import uvicorn

    print(f"serving {path} on http://{host}:{port}/v1 (OpenAI API; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
