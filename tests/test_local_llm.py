"""Fast tests of the embedded local LLM plumbing: model assembly from (fake) chunk packages
and the server child process's lifecycle (with a tiny stand-in server, not llama.cpp)."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from promptclimb.agent.core import chunks
from promptclimb.agent.llm import local as local_llm
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.llm.local import ModelSpec, ensure_model, find_parts, local_server

CHUNKS = [b"GGUF" + b"a" * 3000, b"b" * 2500, b"c" * 17]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def install_fake_parts(site: Path, name: str, chunks, version="0.2.0", skip=()):
    """Lay out installed distributions `name-part1..N` the way pip does (dist-info with
    METADATA and RECORD, data file inside the package). Their `__init__.py` raises, so a
    test fails if anything imports them."""
    for i, chunk in enumerate(chunks, start=1):
        if i in skip:
            continue
        pkg = f"{name}_part{i}"
        data = site / pkg / "data"
        data.mkdir(parents=True)
        (site / pkg / "__init__.py").write_text("raise ImportError('part packages must not be imported')\n")
        (data / f"part{i:02d}.bin").write_bytes(chunk)
        info = site / f"{pkg}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-part{i}\nVersion: {version}\n")
        (info / "RECORD").write_text(
            f"{pkg}/__init__.py,,\n{pkg}/data/part{i:02d}.bin,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n"
        )
    importlib.invalidate_caches()


def make_spec(name, chunks, sha=None):
    return ModelSpec(
        filename=f"{name}.gguf",
        sha256=sha or hashlib.sha256(b"".join(chunks)).hexdigest(),
        package=name + "-part{}",
        version="0.2.0",
        n_parts=len(chunks),
    )


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_assembles_verifies_and_reuses_the_model(home, fake_site, monkeypatch):
    install_fake_parts(fake_site, "fakemodel", CHUNKS)
    spec = make_spec("fakemodel", CHUNKS)

    path = ensure_model(spec=spec)

    assert path == home / "models" / "fakemodel.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert json.loads((path.parent / "fakemodel.gguf.verified.json").read_text())["sha256"] == spec.sha256
    assert leftovers(path.parent) == []
    assert not any(m.startswith("fakemodel_part") for m in sys.modules)

    # The second call trusts the sidecar: no parts, no hashing.
    monkeypatch.setattr(chunks, "find_parts", lambda spec: pytest.fail("reassembled"))
    monkeypatch.setattr(chunks, "sha256_of", lambda path: pytest.fail("re-hashed"))
    assert ensure_model(spec=spec) == path


def test_a_changed_cached_file_is_not_trusted(home, fake_site):
    install_fake_parts(fake_site, "fakemodel", CHUNKS)
    spec = make_spec("fakemodel", CHUNKS)
    path = ensure_model(spec=spec)
    with open(path, "ab") as f:  # e.g. a disk hiccup or a user's edit
        f.write(b"junk")
    assert ensure_model(spec=spec).read_bytes() == b"".join(CHUNKS)


def test_wrong_hash_leaves_nothing_in_the_cache(home, fake_site):
    install_fake_parts(fake_site, "fakemodel", CHUNKS)
    spec = make_spec("fakemodel", CHUNKS, sha="0" * 64)

    with pytest.raises(PromptclimbError, match="SHA-256.*expected 0000") as err:
        ensure_model(spec=spec)

    assert "pip install" in str(err.value) and "--llm-model" in str(err.value)
    assert sorted(p.name for p in (home / "models").iterdir()) == []


def test_missing_and_wrong_version_parts_are_named(home, fake_site):
    install_fake_parts(fake_site, "fakemodel", CHUNKS[:2], skip={2})
    install_fake_parts(fake_site, "fakemodel", [b"", b"", CHUNKS[2]], version="0.1.9", skip={1, 2})
    spec = make_spec("fakemodel", CHUNKS)

    with pytest.raises(PromptclimbError) as err:
        ensure_model(spec=spec)

    message = str(err.value)
    assert "fakemodel-part2 is not installed" in message
    assert "fakemodel-part3 is version 0.1.9, expected 0.2.0" in message
    assert "fakemodel-part1" not in message
    assert 'pip install "promptclimb[local]"' in message
    assert list((home / "models").iterdir()) == []


def test_parts_are_found_in_order(fake_site):
    install_fake_parts(fake_site, "fakemodel", CHUNKS)
    parts = find_parts(make_spec("fakemodel", CHUNKS))
    assert [p.name for p in parts] == ["part01.bin", "part02.bin", "part03.bin"]


def test_interrupted_assembly_leaves_no_file(home, fake_site, monkeypatch):
    install_fake_parts(fake_site, "fakemodel", CHUNKS)
    spec = make_spec("fakemodel", CHUNKS)
    monkeypatch.setattr(chunks, "_CHUNK", 1000)
    real_open = open
    reads = {"n": 0}

    class Interrupting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n):
            reads["n"] += 1
            if reads["n"] == 3:  # part-way through: Ctrl-C while copying
                raise KeyboardInterrupt
            return self.f.read(n)

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Interrupting(f) if str(path).endswith(".bin") else f

    monkeypatch.setattr(chunks, "open", fake_open, raising=False)
    with pytest.raises(KeyboardInterrupt):
        ensure_model(spec=spec)
    assert list((home / "models").iterdir()) == []

    monkeypatch.undo()  # the next run assembles it properly
    monkeypatch.setenv("PROMPTCLIMB_HOME", str(home))
    monkeypatch.syspath_prepend(str(fake_site))
    assert ensure_model(spec=spec).read_bytes() == b"".join(CHUNKS)


def test_user_model_path_is_checked(tmp_path):
    with pytest.raises(PromptclimbError, match="no such file"):
        ensure_model(tmp_path / "nope.gguf")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(PromptclimbError, match="not a GGUF"):
        ensure_model(other)
    (tmp_path / "folder.gguf").mkdir()
    with pytest.raises(PromptclimbError, match="folder.gguf: a folder, not a GGUF file"):
        ensure_model(tmp_path / "folder.gguf")  # it said "no such file"
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(PromptclimbError, match="empty.gguf: the file is empty"):
        ensure_model(tmp_path / "empty.gguf")
    good = tmp_path / "mine.gguf"
    good.write_bytes(b"GGUF rest")
    assert ensure_model(good) == good
    assert local_llm.local_model_name(good) == "mine"
    assert local_llm.local_model_name(None) == local_llm.LOCAL_MODEL_NAME


# ---------------------------------------------------------------------------------------
# Server lifecycle, with a stand-in for llama.cpp's server

STAND_IN = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    delay = float(sys.argv[2])
    alias = sys.argv[3] if len(sys.argv) > 3 else "stand-in"  # what llama.cpp's --model_alias names
    if delay == -2:  # as llama-cpp-python's server on a cut-short GGUF
        print("llama_model_load: error loading model: tensor data is not within the file bounds", flush=True)
        try:
            raise OSError("bad file")
        except OSError:
            raise ValueError("Failed to load model from file: trunc.gguf")
    if delay in (-1, -2):
        print("error loading model: not enough memory", flush=True)
        sys.exit(3)
    time.sleep(max(delay, 0))  # like loading a model

    class Handler(BaseHTTPRequestHandler):
        def _send(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send({"object": "list", "data": [{"id": alias, "object": "model"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if delay == -3:  # as a llama.cpp build for instructions the CPU traps, on its first answer
                os.kill(os.getpid(), signal.SIGILL)
            self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "stand-in",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": "OK"}}]})

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


@pytest.fixture
def stand_in(tmp_path):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)

    def command(port, delay=0.3, alias=None):
        return [sys.executable, str(script), str(port), str(delay), *([alias] if alias else [])]

    return command


def spawned(monkeypatch):
    """Record the processes local_server starts."""
    procs = []
    real = subprocess.Popen

    def recording(*args, **kwargs):
        proc = real(*args, **kwargs)
        procs.append(proc)
        return proc

    monkeypatch.setattr(local_llm.subprocess, "Popen", recording)
    return procs


def test_server_answers_and_is_stopped(home, stand_in, monkeypatch):
    procs = spawned(monkeypatch)
    port = local_llm.free_port()
    with local_server(port=port, command=stand_in(port), echo=lambda m: None) as url:
        assert url == f"http://127.0.0.1:{port}/v1"
        with urllib.request.urlopen(f"{url}/models", timeout=5) as r:
            assert json.loads(r.read())["data"][0]["id"] == "stand-in"
        assert procs[0].poll() is None
    assert procs[0].poll() is not None


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_server_is_stopped_on_errors_and_ctrl_c(home, stand_in, monkeypatch, error):
    procs = spawned(monkeypatch)
    port = local_llm.free_port()
    with pytest.raises(error):
        with local_server(port=port, command=stand_in(port), echo=lambda m: None):
            raise error()
    assert procs[0].poll() is not None


def test_a_port_in_use_is_refused_before_a_second_server_starts(home, stand_in, monkeypatch):
    """The second server died at once, while the first answered its readiness check: it
    said "ready ... serving" with nothing of its own behind it."""
    port = local_llm.free_port()
    with local_server(port=port, command=stand_in(port), echo=lambda m: None):
        procs = spawned(monkeypatch)
        with pytest.raises(PromptclimbError, match=rf"port {port} on 127.0.0.1 is in use .*give another --port"):
            with local_server(port=port, command=stand_in(port), echo=lambda m: None):
                pass
        assert procs == []  # nothing was started


def test_a_port_another_serve_is_taking_is_refused_while_its_server_loads(home, stand_in, monkeypatch):
    """Two `llm serve --port P` started together both passed the port check (neither server
    listened yet), both said they served, and the one whose server died on the busy port
    went on saying so."""
    port = local_llm.free_port()
    with local_llm.port_claimed(port):  # the other serve, its server still loading
        procs = spawned(monkeypatch)
        with pytest.raises(PromptclimbError, match=rf"port {port} is being taken by another promptclimb process "
                                                   rf"\(pid {os.getpid()}\): give another --port"):
            with local_server(port=port, command=stand_in(port), echo=lambda m: None):
                pass
        assert procs == []
    with local_server(port=port, command=stand_in(port), echo=lambda m: None):  # let go: taken
        pass


def test_server_logs_do_not_pile_up(home):
    logs = local_llm.cache_dir("logs")
    for i in range(local_llm.LOGS_KEPT + 5):
        (logs / f"llama-server-{1000 + i}.log").write_text("x")
        os.utime(logs / f"llama-server-{1000 + i}.log", (i, i))
    local_llm.prune_logs(logs)
    kept = sorted(p.name for p in logs.glob("llama-server-*.log"))
    assert len(kept) == local_llm.LOGS_KEPT and "llama-server-1000.log" not in kept
    assert f"llama-server-{1000 + local_llm.LOGS_KEPT + 4}.log" in kept


@pytest.mark.parametrize("option", [["--port", "70000"], ["--port", "-1"], ["--threads", "0"], ["--n-ctx", "5"]])
def test_llm_serve_refuses_a_bad_number_before_anything_loads(option):
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    result = CliRunner().invoke(cli, ["llm", "serve", *option])
    assert result.exit_code == 2 and "is not in the range" in result.output


def test_a_server_that_dies_shows_its_log(home, stand_in):
    port = local_llm.free_port()
    with pytest.raises(PromptclimbError, match="exited with code 3") as err:
        with local_server(port=port, command=stand_in(port, delay=-1), echo=lambda m: None):
            pass
    assert "error loading model: not enough memory" in str(err.value)


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_a_server_killed_by_an_illegal_instruction_on_its_first_answer_says_how_to_rebuild(home, stand_in):
    """Seen on a virtual machine whose /proc/cpuinfo lists AMX: llama.cpp built with it died of
    SIGILL on the warm-up, and the search showed a RemoteDisconnected traceback."""
    port = local_llm.free_port()
    with pytest.raises(PromptclimbError, match="was killed by SIGILL on its first answer") as err:
        with local_server(port=port, command=stand_in(port, delay=-3), echo=lambda m: None):
            pass
    assert "-mno-amx-tile" in str(err.value) and "pip install --force-reinstall" in str(err.value)


def test_a_server_that_dies_of_a_python_exception_shows_it_without_the_traceback(home, stand_in):
    port = local_llm.free_port()
    with pytest.raises(PromptclimbError, match="exited with code 1") as err:
        with local_server(port=port, command=stand_in(port, delay=-2), echo=lambda m: None):
            pass
    said = str(err.value)
    assert "error loading model: tensor data is not within the file bounds" in said
    # the exception and the one it was raised from, one line each
    assert said.endswith("\nOSError: bad file\nValueError: Failed to load model from file: trunc.gguf")
    assert "Traceback" not in said and 'File "' not in said and "During handling" not in said


def test_a_server_that_never_answers_is_stopped(home, stand_in, monkeypatch):
    procs = spawned(monkeypatch)
    port = local_llm.free_port()
    started = time.monotonic()
    with pytest.raises(PromptclimbError, match="did not answer within"):
        with local_server(port=port, command=stand_in(port, delay=60), ready_timeout=1, echo=lambda m: None):
            pass
    assert time.monotonic() - started < 30
    assert procs[0].poll() is not None


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, start_new_session=True,
    )
    proc.stdout.readline()  # its handler is installed
    local_llm.stop_process(proc, grace=0.5)
    assert proc.returncode is not None and proc.returncode < 0


IGNORES_SIGTERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
                   "time.sleep(60)")  # as a server answering a request: SIGTERM waits for the answer


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"  # ended, not yet reaped
    except FileNotFoundError:
        return True


def test_a_server_finishing_an_answer_is_killed_after_a_short_grace(tmp_path):
    """Ctrl-C on a search while the local LLM answers: it waited the server's answer out
    (10 s of grace, then SIGKILL) with nothing to say; the server has nothing to save."""
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, start_new_session=True)
    proc.stdout.readline()
    started = time.monotonic()
    local_llm.stop_process(proc)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - started < 8


def test_a_second_ctrl_c_while_the_server_stops_kills_it(tmp_path):
    """Ctrl-C, then Ctrl-C again during the grace period (a server mid-answer takes it
    whole): the second interrupt ended the wait before the SIGKILL, and the server ran on
    without its owner until its answer was done."""
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, start_new_session=True)
    proc.stdout.readline()

    def second_ctrl_c(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, second_ctrl_c)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            local_llm.stop_process(proc, grace=30)
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        proc.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_mid_answer_ends_with_a_killed_promptclimb(tmp_path):
    """kill -9 of a search while the local server answered: the SIGTERM Linux sent it on
    the parent's death waited for the answer, and the server ran on, owned by no one."""
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        from promptclimb.agent.llm import local
        child = subprocess.Popen([sys.executable, "-c", {IGNORES_SIGTERM!r}], stdout=subprocess.PIPE,
                                 start_new_session=True, preexec_fn=local._die_with_parent)
        child.stdout.readline()
        print(child.pid, flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not gone(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the server outlived the promptclimb that started it")


def test_missing_llama_cpp_says_how_to_install(home, monkeypatch):
    monkeypatch.setattr(local_llm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PromptclimbError, match=r'promptclimb\[local\]'):
        with local_server(echo=lambda m: None):
            pass


def test_server_command_uses_the_gguf_chat_template_and_local_host(tmp_path):
    cmd = local_llm.server_command(tmp_path / "m.gguf", 1234, n_threads=2)
    assert cmd[1:3] == ["-m", "llama_cpp.server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "1234"
    assert "--chat_format" not in cmd


# ---------------------------------------------------------------------------------------
# The served model's identity: the server lists its GGUF's name and SHA-256 at /v1/models


def test_model_hash_is_computed_once_per_file_version(home, tmp_path, monkeypatch):
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF one")
    hashed = []
    from promptclimb.agent.core import files

    real = files.sha256_of
    monkeypatch.setattr(files, "sha256_of", lambda p: hashed.append(p) or real(p))
    first = local_llm.model_sha256(gguf)
    assert first == hashlib.sha256(b"GGUF one").hexdigest()
    assert local_llm.model_sha256(gguf) == first and len(hashed) == 1  # remembered
    gguf.write_bytes(b"GGUF two, longer")  # replaced under the same name
    assert local_llm.model_sha256(gguf) == hashlib.sha256(b"GGUF two, longer").hexdigest() and len(hashed) == 2


def test_the_embedded_model_hash_comes_from_its_sidecar(home, monkeypatch):
    target = home / "models" / local_llm.DEFAULT_MODEL.filename
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF pretend")
    (target.parent / (target.name + ".verified.json")).write_text(
        json.dumps({"sha256": local_llm.DEFAULT_MODEL.sha256, "size": target.stat().st_size}))
    from promptclimb.agent.core import files

    monkeypatch.setattr(files, "sha256_of", lambda p: pytest.fail("a verified model is not hashed again"))
    assert local_llm.model_sha256(target) == local_llm.DEFAULT_MODEL.sha256


def test_the_server_lists_the_gguf_name_and_hash(home, tmp_path, stand_in, monkeypatch):
    """The alias given to the server is what it lists at /models, and what a search that
    is pointed at it (--base-url) recognises as the local LLM, by the GGUF's name."""
    from promptclimb.agent.llm.client import LLMClient, local_model_served_at

    gguf = tmp_path / "other-model.gguf"
    gguf.write_bytes(b"GGUF other weights")
    monkeypatch.setattr(local_llm, "_require_llama_cpp", lambda: None)
    monkeypatch.setattr(local_llm, "server_command", lambda model, port, **kwargs: stand_in(
        port, alias=kwargs["model_alias"]))
    with local_server(gguf, echo=lambda m: None, warmup=False) as base_url:
        listed = LLMClient("local", base_url, "local", use_cache=False).served_model()
        assert local_model_served_at(base_url) == "other-model"
    sha = hashlib.sha256(b"GGUF other weights").hexdigest()
    assert listed == f"promptclimb-local/other-model@sha256:{sha}"
    assert local_llm.parse_local_model_id(listed) == ("other-model", sha)
    assert local_llm.parse_local_model_id("other-model") is None
    assert local_llm.parse_local_model_id("promptclimb-local/x@sha256:abc") is None


def serving_child(home, stand_in):
    """`promptclimb llm serve` (the stand-in behind it) in a child process, and its port, started as from a
    terminal: SIGINT at its default in the child, as a terminal's Ctrl-C (a suite run in the
    background inherits it ignored); its own session, so a signal sent reaches it alone."""
    import os
    import signal
    import subprocess
    import sys

    port = local_llm.free_port()
    child_code = (
        "import functools\n"
        "from promptclimb.agent.llm import local\n"
        "from promptclimb.agent import cli\n"
        f"local.local_server = functools.partial(local.local_server, command={stand_in(port)!r})\n"
        f"cli.main(['llm', 'serve', '--port', '{port}'])\n")
    return subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PROMPTCLIMB_HOME": str(home)}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)), port


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_llm_serve_stopped_exits_130_or_143_and_stops_its_server(home, stand_in, sig, code):
    """`promptclimb llm serve` (the stand-in behind it) stopped with Ctrl-C exited 0; every
    command exits 130 on Ctrl-C and 143 on SIGTERM (README, Exit codes)."""
    import signal

    child, port = serving_child(home, stand_in)
    try:
        said = []
        for line in child.stdout:
            said.append(line)
            if line.startswith("serving"):
                break
        assert said and said[-1].startswith("serving"), "".join(said)
        assert f"http://127.0.0.1:{port}/v1\n" in said
        child.send_signal(getattr(signal, sig))
        output = "".join(said) + child.communicate(timeout=60)[0]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == code, (child.returncode, output)
    assert "stopping the local LLM server" in output and "Traceback" not in output and "Aborted" not in output
    with pytest.raises(OSError):  # the server went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
