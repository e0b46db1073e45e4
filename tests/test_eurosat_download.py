"""EuroSAT's download path (evaluators/eurosat.py) against a real HTTP server on 127.0.0.1
serving a small generated archive laid out like the official zip: progress, MD5 check,
atomic unpacking, the fallback mirror, a clear and fast error offline, and two processes
that need the data at the same moment (issue 12, items 5c and 10). The real URLs stay in
the code; the tests point `ARCHIVE_URLS` (and the MD5) at the local server."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from promptclimb.agent.core.errors import PromptclimbError

TESTS = Path(__file__).resolve().parent


def make_archive(per_class: int = 2) -> bytes:
    """A zip like EuroSAT.zip: `2750/<Class>/<Class>_<n>.jpg`, 64x64 images."""
    import zipfile

    from PIL import Image

    from promptclimb.evaluators.eurosat import FOLDERS

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for c, name in enumerate(FOLDERS):
            for i in range(per_class):
                image = io.BytesIO()
                Image.new("RGB", (64, 64), (20 * c, 100 + 10 * i, 50)).save(image, format="JPEG")
                z.writestr(f"2750/{name}/{name}_{i + 1}.jpg", image.getvalue())
    return buffer.getvalue()


class ArchiveServer:
    """Serves /good.zip (the archive), /bad.zip (other bytes: a wrong MD5), /slow.zip (the
    archive, trickled over about three seconds: time for a second process to find the lock
    held on a loaded machine), /hang.zip (never answers); anything else is a 404. `hits`
    counts requests per path."""

    def __init__(self, archive: bytes):
        self.archive = archive
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def __enter__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path == "/hang.zip":
                    server.stop.wait(30)
                    return
                body = {"/good.zip": server.archive, "/slow.zip": server.archive,
                        "/bad.zip": b"PK not the archive" * 100}.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                step = max(1, len(body) // 10)
                for start in range(0, len(body), step):
                    self.wfile.write(body[start:start + step])
                    if self.path == "/slow.zip":
                        time.sleep(0.3)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/EuroSAT.zip"  # nobody listens there: connection refused


@pytest.fixture(scope="module")
def archive() -> bytes:
    return make_archive()


@pytest.fixture
def server(archive):
    with ArchiveServer(archive) as running:
        yield running


@pytest.fixture
def sources(monkeypatch, archive):
    """Point the download at the given URLs, with the generated archive's MD5."""
    import promptclimb.evaluators.eurosat as eurosat

    monkeypatch.setattr(eurosat, "ARCHIVE_MD5", hashlib.md5(archive).hexdigest())

    def use(*urls):
        monkeypatch.setattr(eurosat, "ARCHIVE_URLS", tuple(urls))

    return use


def leftovers(home: Path) -> list[str]:
    folder = home / "datasets"
    return sorted(p.name for p in folder.iterdir() if p.name not in ("eurosat", ".eurosat.lock")) if folder.exists() else []


def test_download_shows_progress_checks_md5_and_unpacks_once(server, sources, isolated_home, capfd):
    from promptclimb.evaluators.datasets import load_dataset

    sources(server.url("/good.zip"))
    data = load_dataset("eurosat")
    assert len(data.classnames) == 10 and sum(len(v) for v in data.splits.values()) == 20
    assert data.load_image(data.splits["train"][0][0]).size == (64, 64)
    err = capfd.readouterr().err
    assert f"downloading EuroSAT from {server.url('/good.zip')}" in err and "EuroSAT.zip" in err and "100%" in err
    assert (isolated_home / "datasets" / "eurosat" / "2750" / "Forest").is_dir()
    assert leftovers(isolated_home) == []  # no archive, no temp folder
    load_dataset("eurosat")  # the second use reads the cache
    assert server.hits == {"/good.zip": 1}


def test_a_wrong_md5_is_refused_and_the_mirror_used(server, sources, isolated_home):
    from promptclimb.evaluators.datasets import load_dataset

    sources(server.url("/bad.zip"))
    with pytest.raises(PromptclimbError) as info:
        load_dataset("eurosat")
    assert "unexpected md5" in str(info.value) and server.url("/bad.zip") in str(info.value)
    assert leftovers(isolated_home) == [] and not (isolated_home / "datasets" / "eurosat").exists()

    sources(server.url("/bad.zip"), server.url("/good.zip"))
    assert len(load_dataset("eurosat").classnames) == 10
    assert server.hits == {"/bad.zip": 2, "/good.zip": 1}


def test_an_unreachable_or_missing_source_falls_back_to_the_mirror(server, sources, isolated_home):
    from promptclimb.evaluators.datasets import load_dataset

    sources(closed_port_url(), server.url("/gone.zip"), server.url("/good.zip"))
    assert len(load_dataset("eurosat").classnames) == 10
    assert server.hits == {"/gone.zip": 1, "/good.zip": 1}


def test_offline_is_a_clear_fast_error(sources, isolated_home, monkeypatch):
    """No mock of the download: sources that refuse connections or do not resolve. The name's
    lookup is answered at once: a slow DNS server on the machine running the tests is not
    what this times."""
    import promptclimb.evaluators.eurosat as eurosat
    from promptclimb.evaluators.datasets import load_dataset

    lookup = socket.getaddrinfo

    def no_such_host(host, *args, **kwargs):
        if host == "eurosat.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    sources(closed_port_url(), "http://eurosat.invalid/EuroSAT.zip")
    started = time.monotonic()
    with pytest.raises(PromptclimbError) as info:
        load_dataset("eurosat")
    assert time.monotonic() - started < 8
    message = str(info.value)
    assert "download failed" in message and "eurosat.invalid" in message and "refused" in message.lower()
    assert str(isolated_home / "datasets" / "eurosat") in message  # where it looked, where to put the data
    assert f"download {eurosat.ARCHIVE_URLS[0]} and unzip it" in message  # how to fetch it by hand
    assert "--dataset fashion-mnist" in message
    assert leftovers(isolated_home) == []


def test_a_server_that_never_answers_is_given_up_on(server, sources, isolated_home, monkeypatch):
    import promptclimb.evaluators.eurosat as eurosat
    from promptclimb.evaluators.datasets import load_dataset

    monkeypatch.setattr(eurosat, "DOWNLOAD_TIMEOUT_S", 1)
    sources(server.url("/hang.zip"))
    started = time.monotonic()
    with pytest.raises(PromptclimbError, match="timed out"):
        load_dataset("eurosat")
    assert time.monotonic() - started < 8 and leftovers(isolated_home) == []


def test_the_real_sources_stay_in_the_code():
    import promptclimb.evaluators.eurosat as eurosat

    assert eurosat.ARCHIVE_URLS[0] == "https://madm.dfki.de/files/sentinel/EuroSAT.zip"
    assert eurosat.ARCHIVE_URLS[1].startswith("https://huggingface.co/datasets/torchgeo/eurosat/")
    assert eurosat.ARCHIVE_MD5 == "c8fa014336c82ac7804f0398fcb19387"


FIRST_USE = r"""
import sys
sys.path.insert(0, sys.argv[1])
import promptclimb.evaluators.eurosat as eurosat
from promptclimb.evaluators.datasets import load_dataset
eurosat.ARCHIVE_URLS = tuple(sys.argv[3:])
eurosat.ARCHIVE_MD5 = sys.argv[2]
data = load_dataset("eurosat")
print("classes", len(data.classnames), "images", sum(len(v) for v in data.splits.values()))
"""


def test_two_processes_using_eurosat_first_both_get_it(server, archive, isolated_home):
    """Both start before either has the data; the slow download makes them overlap."""
    env = {**os.environ, "PROMPTCLIMB_HOME": str(isolated_home)}
    command = [sys.executable, "-c", FIRST_USE, str(TESTS), hashlib.md5(archive).hexdigest(),
               server.url("/slow.zip"), server.url("/good.zip")]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
        assert "classes 10 images 20" in out and "download failed" not in err
    assert sum(server.hits.values()) == 1  # one downloaded, the other waited for it and used its copy
    assert any("waiting for another promptclimb process" in err for _, err in outputs)
    assert leftovers(isolated_home) == []
