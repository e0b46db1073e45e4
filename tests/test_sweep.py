"""`promptclimb sweep` on Ray and `promptclimb sweep-report`, end to end: a 2 x 2 grid (shots
x seeds) of real searches on a generated ImageFolder with the tiny open_clip model, against
the fake LLM on 127.0.0.1. Each sweep runs as its own `promptclimb` process (a local Ray
started in-process, 2 CPUs, or a `ray start --head` cluster), as a user would run it."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from fake_llm import FakeLLM

ray = pytest.importorskip("ray")
from promptclimb.agent.runs.store import ANSWER_KINDS  # noqa: E402
from promptclimb.agent.sweep import cell as sweep_cell  # noqa: E402
from promptclimb.agent.sweep import driver as sweeps  # noqa: E402
from promptclimb.agent.sweep import reaper  # noqa: E402

RAY_DIR = os.path.dirname(ray.__file__)

CELLS = {f"imagefolder-pc-tiny-vit-{shots}shot-seed{seed}": (shots, seed) for shots in (1, 2) for seed in (1, 2)}
NAMES = list(CELLS)
WORDS = ["photo", "clothing", "grayscale", "product", "garment", "studio", "blurry", "tiny", "dark", "bright"]
# A local Ray and a test cluster listen on the loopback only, and trust each other.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def responder(body: dict) -> str:
    h = int(hashlib.sha256(json.dumps([body["messages"], body["seed"]]).encode()).hexdigest(), 16)
    return "\n".join(f"a {WORDS[(h >> 4 * i) % 10]} {WORDS[(h >> 4 * i + 24) % 10]} image of a {{}}." for i in range(4))


@pytest.fixture
def sweep(tmp_path, tiny_clip_config, tiny_clip_weights, image_folder):
    """`sweep(name, base_url, *args)` -> the `promptclimb sweep NAME --runs-dir RUNS ...` command
    line of a 2 x 2 grid, on a local Ray with 2 CPUs or the cluster at `address`; `env` is
    what its process runs with."""
    runs = tmp_path / "runs"
    env = {**os.environ, **RAY_ENV}

    def command(name: str, base_url: str | None, *extra: str, grid: bool = True,
                address: str | None = None) -> list[str]:
        """base_url None: `--llm local`, the LLM the sweep starts for its cells."""
        axes = ["--dataset", "imagefolder", "--shots", "1", "--shots", "2", "--seeds", "1-2"] if grid else []
        ray = ["--address", address] if address else ["--num-cpus", "2"]
        llm = ["--llm", "fake", "--base-url", base_url] if base_url else ["--llm", "local"]
        return [sys.executable, "-m", "promptclimb.agent.cli", "sweep", name, "--runs-dir", str(runs), *axes, *ray,
                "--data-root", str(image_folder), "--backbone", tiny_clip_config, "--weights", str(tiny_clip_weights),
                *llm, "--device", "cpu",
                "--resets", "1", "--iterations", "2", "--proposals", "3", "--pool-sample", "6", *extra]

    command.runs, command.env = runs, env
    return command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ray_head(env: dict):
    """`ray start --head --block` on 127.0.0.1 (2 CPUs), in a session of its own: yields its
    address. Ended by id, never by name (`ray stop` would stop every Ray cluster of the user
    on this machine): the head's process group, then each Ray process that descended from it
    (workers run in process groups of their own), SIGTERM then SIGKILL."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="pcray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    log = Path(temp) / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--port",
                                 str(port), "--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--include-dashboard",
                                 "false", "--disable-usage-stats", "--temp-dir", temp],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    seen: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        while "block forever" not in log.read_text() and time.monotonic() < deadline and head.poll() is None:
            time.sleep(0.2)
        assert "block forever" in log.read_text(), log.read_text()
        seen.update(reaper.ray_processes_under(head.pid, RAY_DIR))
        yield f"127.0.0.1:{port}", lambda: seen.update(reaper.ray_processes_under(head.pid, RAY_DIR))
    finally:
        seen.update(reaper.ray_processes_under(head.pid, RAY_DIR))
        end_process_group(head)
        reaper.end_processes(seen)
        assert not [pid for pid, start in seen.items() if reaper._alive(pid, start)]
        shutil.rmtree(temp, ignore_errors=True)


def end_process_group(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to the process group `process` leads (started with start_new_session), then
    SIGKILL to what is left of it."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def report(runs: Path, name: str, fmt: str) -> str:
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    result = CliRunner().invoke(cli, ["sweep-report", name, "--runs-dir", str(runs), "--format", fmt])
    assert result.exit_code == 0, result.output
    return result.stdout


def summaries(sweep_dir: Path) -> dict:
    return {n: json.loads((sweep_dir / n / "summary.json").read_text()) for n in NAMES}


def wait_until_no_cell_is_written(sweep_dir: Path, timeout_s: float = 60) -> None:
    """Until every cell's run lock is free: a search holds its run's flock until its process
    dies, so a free lock means no process (an orphaned Ray worker included) still writes it."""
    import fcntl

    deadline = time.monotonic() + timeout_s
    while True:
        held = []
        for lock in sweep_dir.glob("*/.lock"):
            with open(lock, "a") as handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held.append(lock.parent.name)
        if not held:
            return
        assert time.monotonic() < deadline, f"cells still written {timeout_s:.0f} s after the kill: {held}"
        time.sleep(0.2)


def test_a_2x2_sweep_on_a_local_ray_and_its_report(sweep):
    with FakeLLM(responder=responder) as fake:
        started = time.monotonic()
        run = subprocess.run(sweep("grid", fake.base_url, "--adapter", "cache"), env=sweep.env,
                             capture_output=True, text=True, timeout=600)
        print(f"2 x 2 sweep on a local Ray: {time.monotonic() - started:.1f} s")
        assert run.returncode == 0, run.stderr
    sweep_dir = sweep.runs / "grid"
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(NAMES)
    assert "Ray: local, 2 CPUs" in run.stderr and "sweep grid: 4/4 cells finished" in run.stderr
    assert "2 running" in run.stderr and "one after another" not in run.stderr  # 2 CPUs: two cells at a time
    done = summaries(sweep_dir)
    for name, summary in done.items():  # each cell is an ordinary run of its own grid point
        config = json.loads((sweep_dir / name / "config.json").read_text())
        assert (config["evaluator_args"]["shots"], config["evaluator_args"]["seed"]) == CELLS[name]
        assert summary["counts"]["llm_answers"] == 2 and "adapter" in summary
    # one endpoint for all cells; answers one cell already asked for come from the shared cache
    assert sum(s["ledger"]["calls"] for s in done.values()) == len(fake.requests) <= 4 * 2

    groups = json.loads(report(sweep.runs, "grid", "json"))["groups"]
    assert [(g["shots"], g["seeds"], g["failed"]) for g in groups] == [(1, 2, 0), (2, 2, 0)]
    for g in groups:
        cells = [done[f"imagefolder-pc-tiny-vit-{g['shots']}shot-seed{seed}"] for seed in (1, 2)]
        best = [c["best"]["accuracy"]["test"] for c in cells]
        adapter = [c["adapter"]["accuracy"]["test"] for c in cells]
        assert g["best_mean"] == pytest.approx(sum(best) / 2)
        assert g["best_sd"] == pytest.approx(abs(best[0] - best[1]) / math.sqrt(2))
        assert g["adapter_mean"] == pytest.approx(sum(adapter) / 2)
        assert g["llm_calls_mean"] == pytest.approx(sum(c["ledger"]["calls"] for c in cells) / 2)
    table = report(sweep.runs, "grid", "table")
    assert "best (test %)" in table and "±" in table and "Plot:" in table
    # requests made, not answers (`runs` counts those, cached or not): the header and a line say so
    assert "LLM requests" in table.splitlines()[0] and "(answers from the cache not counted)" in table
    assert "seeds done" in table.splitlines()[0]  # a count: 0 had read as seed 0
    assert report(sweep.runs, "grid", "markdown").startswith("| dataset")
    assert report(sweep.runs, "grid", "csv").splitlines()[0].startswith("dataset,backbone,shots,seeds")
    assert (sweep_dir / "report.png").stat().st_size > 1000


def test_cells_run_one_after_another_on_the_local_llm(sweep):
    """An endpoint that is promptclimb's local LLM (it lists its GGUF at /models, as `llm serve`
    and the server a sweep starts do) answers one request at a time: cells side by side would
    take turns at it and reprocess their conversations, so they run one after another."""
    local_id = "promptclimb-local/qwen2.5-coder-1.5b-instruct-q4_k_m@sha256:" + "ab" * 32
    with FakeLLM(responder=responder, models=[local_id]) as fake:
        run = subprocess.run(sweep("one", fake.base_url, "--seeds", "1", grid=False) + ["--dataset", "imagefolder",
                             "--shots", "1", "--seeds", "2"], env=sweep.env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr
    assert "the local LLM answers one request at a time: the cells run one after another" in run.stderr
    assert "sweep one: 2/2 cells finished" in run.stderr and "2 running" not in run.stderr, run.stderr


# Every Python process of the sweep (the driver, Ray's workers) gets this stand-in for the
# local LLM server: each start is a line in $PC_LLM_STARTS, and it serves the fake LLM.
COUNTING_LOCAL_SERVER = """
import os
import platform
if os.environ.get("PC_LLM_STARTS"):
    from contextlib import contextmanager
    from promptclimb.agent.llm import local

    @contextmanager
    def local_server(model_path=None, **ignored):
        with open(os.environ["PC_LLM_STARTS"], "a") as starts:
            starts.write(f"{os.getpid()} {model_path}\\n")
        yield os.environ["PC_FAKE_LLM_URL"]

    local.local_server = local_server
"""


def counting_local_server_env(sweep, tmp_path, fake: FakeLLM) -> tuple[dict, Path]:
    """(the environment of a sweep or search whose local LLM is the stand-in above, serving
    `fake`; the file its starts are counted in)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(COUNTING_LOCAL_SERVER)
    starts = tmp_path / "starts.txt"
    env = {k: v for k, v in sweep.env.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env |= {"PC_LLM_STARTS": str(starts), "PC_FAKE_LLM_URL": fake.base_url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))}
    return env, starts


def request_keys(run_dir: Path) -> list[str]:
    events = (json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines())
    return [e["request_key"] for e in events if e.get("request_key")]


def test_the_cells_share_one_local_llm_and_ask_it_as_a_standalone_search_does(sweep, tmp_path):
    """`--llm local` without an endpoint: the sweep starts the local LLM once, for the whole
    sweep, and every cell's search talks to that one server. A cell records the LLM settings
    and sends the requests of a standalone search of its grid point (the served model's name,
    as a search asking its own server): `search --resume CELL` can continue a killed cell,
    and the two share the LLM's cache."""
    from promptclimb.agent.llm.local import served_model_id

    # it lists the model as a started local server does: a search knows that id before starting it
    with FakeLLM(responder=responder, models=[served_model_id()]) as fake:
        env, starts = counting_local_server_env(sweep, tmp_path, fake)
        command = sweep("shared", None, grid=False) + ["--dataset", "imagefolder", "--shots", "1", "--seeds", "1-2"]
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        assert "sweep shared: 2/2 cells finished" in run.stderr, run.stderr
        assert len(starts.read_text().splitlines()) == 1, starts.read_text()
        asked = len(fake.requests)
        # the same search as the seed-2 cell, on its own: it starts its own (stand-in) server
        search = command[:command.index("sweep")] + [
            "search", "--name", "alone", "--runs-dir", str(sweep.runs), "--dataset", "imagefolder", "--shots", "1",
            "--seed", "2", *command[command.index("--num-cpus") + 2:command.index("--dataset")]]
        alone = subprocess.run(search, env=env, capture_output=True, text=True, timeout=600)
        assert alone.returncode == 0, alone.stderr
    cells = sorted(p for p in (sweep.runs / "shared").iterdir() if (p / "config.json").exists())
    recorded = [json.loads((cell / "config.json").read_text())["llm"] for cell in cells]
    standalone = json.loads((sweep.runs / "alone" / "config.json").read_text())["llm"]
    assert len(cells) == 2 and recorded == [standalone] * 2, (recorded, standalone)
    assert standalone["local"] and standalone["base_url"] is None
    assert {r["model"] for r in fake.requests} == {"qwen2.5-coder-1.5b-instruct-q4_k_m"} and asked >= 2
    seed2 = sweep.runs / "shared" / "imagefolder-pc-tiny-vit-1shot-seed2"
    assert request_keys(sweep.runs / "alone") == request_keys(seed2) != []
    assert len(fake.requests) == asked  # every answer of the search came from the cells' cache
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (sweep.runs / "alone", seed2))
    assert ours["best"]["template"] == theirs["best"]["template"]


def test_a_soft_prompt_sweep_starts_no_llm_runs_cells_side_by_side_and_resumes_them(sweep, tmp_path):
    """--optimizer craft asks no LLM: the sweep starts none (the cells would otherwise run one
    after another, for the local LLM's sake), and a killed cell resumes (its search was
    refused: `--llm local (the run's: None)`, a soft-prompt run records no LLM)."""
    with FakeLLM(responder=responder) as fake:
        env, starts = counting_local_server_env(sweep, tmp_path, fake)
        command = sweep("soft", None, "--optimizer", "craft", "--queries", "40", "--craft-popsize", "20",
                        "--craft-intrinsic-dim", "16", grid=False) + ["--dataset", "imagefolder", "--shots", "1",
                                                                      "--seeds", "1-2"]
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        assert "sweep soft: 2/2 cells finished" in run.stderr and "2 running" in run.stderr, run.stderr
        assert "one after another" not in run.stderr and not starts.exists() and not fake.requests
        killed = sweep.runs / "soft" / "imagefolder-pc-tiny-vit-1shot-seed1"
        (killed / "summary.json").unlink()  # started, not finished: the rerun resumes it
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 finished, 1 to resume" in rerun.stderr and "sweep soft: 2/2 cells finished" in rerun.stderr
    assert "resuming" in (killed / "search.log").read_text().split("--- ")[-1]
    assert (killed / "summary.json").exists() and not starts.exists()


def test_the_same_sweep_on_a_ray_cluster_with_token_auth_and_failed_cells(sweep, tmp_path):
    """`ray start --head` on 127.0.0.1 with token authentication, reached with --address.
    A driver with a stale ~/.ray/auth_token is told that the cluster refused its token; one
    with the cluster's token in RAY_AUTH_TOKEN runs the grid. Half its cells fail (coop data
    that is not there, found only when the cell loads it): the others finish, the errors are
    in the report, and the exit status is 3."""
    token = "a3" * 16
    cluster_env = {**sweep.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    with ray_head(cluster_env) as (address, _), FakeLLM(responder=responder) as fake:
        grid = tmp_path / "grid.toml"
        grid.write_text('[grid]\ndataset = ["imagefolder", "coop"]\nshots = [1, 2]\nseeds = "1-2"\n'
                        '[search]\nensemble = 2\n')
        command = sweep("cluster", fake.base_url, "--grid", str(grid), grid=False, address=address)

        stale_home = tmp_path / "stale-home"
        (stale_home / ".ray").mkdir(parents=True)
        (stale_home / ".ray" / "auth_token").write_text("b7" * 16)  # left by an earlier cluster
        stale_env = {k: v for k, v in sweep.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        started = time.monotonic()
        refused = subprocess.run(command, env={**stale_env, "HOME": str(stale_home)}, capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode == 1 and time.monotonic() - started < 60, refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "refused this machine's Ray token" in errors[0], refused.stderr
        assert "RAY_AUTH_TOKEN" in errors[0] and "gcs_client" not in refused.stderr  # Ray's retries kept out

        started = time.monotonic()
        run = subprocess.run(command, env=cluster_env, capture_output=True, text=True, timeout=600)
        print(f"2 x 2 sweep + 4 failing cells on a `ray start` cluster: {time.monotonic() - started:.1f} s")
    assert run.returncode == 3, run.stderr
    assert f"Ray: {address}, 2 CPUs" in run.stderr
    assert "sweep cluster: 4/8 cells finished, 4 failed" in run.stderr
    sweep_dir = sweep.runs / "cluster"
    assert all(summary["ensemble"] for summary in summaries(sweep_dir).values())
    failed = sweep_dir / "coop-pc-tiny-vit-1shot-seed1"
    assert "split" in (failed / "error.txt").read_text() and not (failed / "summary.json").exists()
    table = report(sweep.runs, "cluster", "table")
    assert "4 failed cell(s):" in table and "coop-pc-tiny-vit-2shot-seed2: " in table


@contextmanager
def silent_peer(listener: socket.socket) -> Iterator[list[float]]:
    """`listener` accepts every connection and never answers one, nor closes one before the
    block ends: yields the times (time.monotonic) the connections came, as they come."""
    import threading

    listener.listen(8)
    listener.settimeout(0.1)  # accept wakes at once for a connection, and every 0.1 s to see `stop`
    came, kept, stop = [], [], threading.Event()

    def accept_all() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            came.append(time.monotonic())
            kept.append(connection)

    thread = threading.Thread(target=accept_all, daemon=True)
    thread.start()
    try:
        yield came
    finally:
        stop.set()
        thread.join()
        for connection in kept:
            connection.close()


@pytest.mark.parametrize("peer", ["nothing", "silent"])
def test_an_unreachable_address_is_one_line_within_30_s(peer, sweep):
    """Nothing listening (Ray alone retried for minutes), or a port that accepts and never
    answers (Ray's C++ connect blocks): one line, exit status 1, within 30 s of its first try to
    connect. The interpreter's and Ray's start before that try are no part of the promise, and
    on a loaded machine take seconds of their own: a silent port's wait is timed from the
    first connection it accepts (a refused one takes no time: the whole command is timed)."""
    with socket.socket() as port_socket, ExitStack() as stack:
        port_socket.bind(("127.0.0.1", 0))
        came = stack.enter_context(silent_peer(port_socket)) if peer == "silent" else None
        port = port_socket.getsockname()[1]
        started = time.monotonic()
        run = subprocess.run(sweep("away", "http://127.0.0.1:9/v1", address=f"127.0.0.1:{port}"),
                             env=sweep.env, capture_output=True, text=True, timeout=120)
        ended = time.monotonic()
        assert came is None or came, f"no connection came to the silent port: {run.stderr}"
        waited = ended - (came[0] if came else started)
    print(f"--address with {peer} at the port: {ended - started:.1f} s in all, {waited:.1f} s from its first try")
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert run.returncode == 1 and waited < 30, (waited, run.stderr)
    assert len(errors) == 1 and f"cannot reach Ray at 127.0.0.1:{port}: " in errors[0], run.stderr
    assert ("Connection refused" if peer == "nothing" else "no answer within") in errors[0], run.stderr
    assert "Traceback" not in run.stderr and "gcs_client" not in run.stderr


def test_killing_the_driver_mid_sweep_then_the_rerun_completes_the_rest(sweep):
    """The driver and its local Ray are killed (SIGKILL to its process group) while one cell
    is finished and another is half-way; the rerun resumes that one from its history,
    runs the ones never started, and leaves the finished ones alone."""
    sweep_dir = sweep.runs / "killed"
    with FakeLLM(responder=responder, latency_s=1.0) as fake:
        command = sweep("killed", fake.base_url, "--iterations", "4")

        def answers(name) -> int:  # LLM answers of every kind (template, names, guard) in a cell's history
            history = sweep_dir / name / "history.jsonl"
            text = history.read_text() if history.exists() else ""
            return sum(text.count(f'"{kind}"') for kind in ANSWER_KINDS)

        def states():
            finished = [n for n in NAMES if (sweep_dir / n / "summary.json").exists()]
            half_way = [n for n in NAMES if n not in finished and answers(n)]
            return finished, half_way

        def kill_now():
            # a cell finished, and another one only one answer in: the kill cannot race its end
            # (two cells run side by side and would otherwise finish within a poll of each other)
            finished, half_way = states()
            return finished and any(answers(n) == 1 for n in half_way)

        driver = subprocess.Popen(command, env=sweep.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and driver.poll() is None and not kill_now():
                time.sleep(0.2)
        finally:
            ended_first = driver.poll() is not None
            if not ended_first:
                os.killpg(driver.pid, signal.SIGKILL)  # the driver, its Ray and the cells, at once
            driver.wait(timeout=60)
        assert not ended_first, f"the sweep ended before the kill: {driver.stderr.read()}"
        # Ray's workers are the raylet's children, not in the driver's process group: they die
        # with it, but a cell may still write its last files meanwhile. Count once none can.
        wait_until_no_cell_is_written(sweep_dir)
        finished, half_way = states()
        assert finished and half_way, driver.stderr.read()
        finished_before = {n: (sweep_dir / n / "history.jsonl").read_bytes() for n in finished}
        started = time.monotonic()
        rerun = subprocess.run(command, env=sweep.env, capture_output=True, text=True, timeout=600)
        print(f"rerun of the killed 2 x 2 sweep: {time.monotonic() - started:.1f} s")
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(finished)} finished" in rerun.stderr and "4/4 cells finished" in rerun.stderr
    for name in finished:  # not run again
        assert (sweep_dir / name / "history.jsonl").read_bytes() == finished_before[name]
        assert (sweep_dir / name / "search.log").read_text().count("--- ") == 1
    for name in half_way:
        assert "resuming" in (sweep_dir / name / "search.log").read_text().split("--- ")[-1]
    assert all(s["counts"]["llm_answers"] == 4 for s in summaries(sweep_dir).values())


def stopped_by_sigterm(driver: subprocess.Popen, sweep, name: str, timeout_s: float) -> None:
    """The sweep `driver`, sent SIGTERM, ends with status 143 and says how to continue, with no
    traceback and no Ray crash-handler noise."""
    try:
        _, stderr = driver.communicate(timeout=timeout_s)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 143, stderr
    assert f"Continue with:\n  promptclimb sweep {name} --runs-dir {sweep.runs} --num-cpus 2\n" in stderr
    assert "SIGTERM received" not in stderr and "PC: @" not in stderr and "Traceback" not in stderr, stderr


def test_sigterm_stops_a_sweep_cleanly_and_says_how_to_continue(sweep):
    """SIGTERM while cells run: every cell that started ends with the line that says how to
    continue it, said by its own search (the driver stops the cells through their own
    interrupt path before Ray goes: leaving Ray ends their workers within a millisecond, and
    on a loaded machine a cell's line was often lost in that race, at times every cell's)."""
    sweep_dir = sweep.runs / "stopped"
    with FakeLLM(responder=responder, latency_s=2.0) as fake:
        driver = subprocess.Popen(sweep("stopped", fake.base_url), env=sweep.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not fake.requests:
            time.sleep(0.2)
        driver.send_signal(signal.SIGTERM)
        stopped_by_sigterm(driver, sweep, "stopped", timeout_s=120)
    started = [sweep_dir / n for n in NAMES if (sweep_dir / n / "search.log").exists()]
    assert started
    for cell in started:
        said = (cell / "search.log").read_text().splitlines()
        assert said[-1] == f"interrupted; continue with: promptclimb search --resume {cell}", said
    # the running searches were stopped through their own Ctrl-C path, not only recorded by the driver
    assert any("written by the sweep's driver" not in (cell / "search.log").read_text() for cell in started)
    with pytest.raises(ProcessLookupError):  # nothing of the sweep is left running
        os.killpg(driver.pid, 0)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, lambda: SystemExit(1)], ids=["ray-cancel", "sigterm"])
@pytest.mark.parametrize("search_said_it", [True, False], ids=["said-by-search", "before-the-search-said"])
def test_an_interrupted_cell_says_how_to_continue_and_ends_its_task(stop, search_said_it, tmp_path, monkeypatch):
    """Stopped (SIGTERM of its worker: Ray's handler raises SystemExit(1); Ray's cancel:
    KeyboardInterrupt), a cell's search.log ends with how to continue, said once, and its
    task ends with "interrupted": a worker left with SystemExit would be retried by Ray."""
    cell_dir = tmp_path / "sweep" / "imagefolder-pc-tiny-vit-1shot-seed1"
    cell_dir.mkdir(parents=True)

    def interrupted_search(cell_dir, opts, echo):
        (cell_dir / "config.json").write_text("{}")
        if search_said_it:
            echo(f"interrupted; continue with: promptclimb search --resume {cell_dir}")
        raise stop()

    monkeypatch.setattr(sweep_cell, "search_when_free", interrupted_search)
    try:
        ended = sweep_cell.run_cell(str(cell_dir), {})
    except BaseException as exc:  # noqa: BLE001 - a KeyboardInterrupt let through would stop pytest itself
        pytest.fail(f"the interruption left the cell's task: {exc!r}")
    assert ended == {"state": "interrupted"}
    said = (cell_dir / "search.log").read_text().splitlines()
    assert said[-1] == f"interrupted; continue with: promptclimb search --resume {cell_dir}"
    assert sum(line.startswith("interrupted") for line in said) == 1 and not (cell_dir / "error.txt").exists()


def test_a_stopped_sweep_writes_the_line_a_cell_ended_without(tmp_path):
    """After a stopped sweep has left Ray, a cell that started in this run and ended without
    saying so (its worker ended first) gets its line from the driver; a cell that said it,
    finished, failed, or did not start in this run is left as it is."""
    sweep_dir = tmp_path / "s"
    logs = {}
    for name, lines, files in [
        ("cut", ["--- old", "interrupted; continue with: x", "--- new", "run folder: ..."], ["config.json"]),
        ("said", ["--- new", "interrupted; continue with: y"], ["config.json"]),
        ("early", ["--- new"], []),
        ("finished", ["--- new", "done"], ["config.json", "summary.json"]),
        ("failed", ["--- new", "failed: no"], ["config.json", "error.txt"]),
        ("idle", ["--- old"], ["config.json"]),
    ]:
        (sweep_dir / name).mkdir(parents=True)
        for file in files:
            (sweep_dir / name / file).write_text('{"best": {}}' if file == "summary.json" else "{}")
        (sweep_dir / name / "search.log").write_text("\n".join(lines) + "\n")
        logs[name] = (sweep_dir / name / "search.log").read_text()
    before = {n: len(text.split("--- new")[0].encode()) if "--- new" in text else len(text.encode())
              for n, text in logs.items()}
    before["never"] = 0  # no search.log at all
    assert sweeps.record_interruptions(sweep_dir, before, adapter_wanted=False) == ["cut", "early"]
    cut = (sweep_dir / "cut" / "search.log").read_text().splitlines()
    assert cut[-1] == f"interrupted; continue with: promptclimb search --resume {sweep_dir / 'cut'}"
    assert "written by the sweep's driver" in cut[-2]
    assert (sweep_dir / "early" / "search.log").read_text().splitlines()[-1] == \
        "interrupted before its run began; the sweep starts it again when rerun"
    for name in ("said", "finished", "failed", "idle"):
        assert (sweep_dir / name / "search.log").read_text() == logs[name]


# A SIGTERM the moment ray.init has put its own handler in place (sys.exit(15)); in the seconds
# a local Ray takes to start, a kill lands there.
SIGTERM_IN_RAY_INIT = """
import os, signal
import ray._private.utils as ray_utils
set_handler = ray_utils.set_sigterm_handler
def set_and_signal(handler):
    set_handler(handler)
    os.kill(os.getpid(), signal.SIGTERM)
ray_utils.set_sigterm_handler = set_and_signal
from promptclimb.agent.cli import main
main()
"""


def test_sigterm_while_ray_starts_ends_with_143_and_says_how_to_continue(sweep):
    command = sweep("early", "http://127.0.0.1:9")  # never asked: the sweep stops before any cell
    command = [sys.executable, "-c", SIGTERM_IN_RAY_INIT, *command[command.index("sweep"):]]
    driver = subprocess.Popen(command, env=sweep.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    stopped_by_sigterm(driver, sweep, "early", timeout_s=300)
    with pytest.raises(ProcessLookupError):  # nothing of the sweep is left running
        os.killpg(driver.pid, 0)


def test_a_driver_killed_with_sigkill_leaves_no_ray_process_behind(sweep):
    """kill -9 of the driver alone (not its process group): its local Ray's processes end
    too, the raylet's DashboardAgent and RuntimeEnvAgent included, which outlived it before
    (agent/sweep/reaper.py: a watchdog in a session of its own ends them by id)."""
    with FakeLLM(responder=responder, latency_s=2.0) as fake:
        driver = subprocess.Popen(sweep("orphans", fake.base_url), env=sweep.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        ours: dict[int, int] = {}
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and driver.poll() is None and not fake.requests:
                ours.update(reaper.ray_processes_under(driver.pid, RAY_DIR))
                time.sleep(0.2)
            ours.update(reaper.ray_processes_under(driver.pid, RAY_DIR))
            names = {(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]).decode() for pid in ours
                     if reaper._alive(pid, ours[pid])}
            assert "ray::DashboardAgent" in names and "ray::RuntimeEnvAgent" in names, names
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(timeout=60)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(reaper._alive(pid, start) for pid, start in ours.items()):
                time.sleep(0.5)
            left = [pid for pid, start in ours.items() if reaper._alive(pid, start)]
            assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes()[:60] for pid in left]
        finally:
            reaper.end_processes(ours, grace_s=1)  # whatever the assertion found, by id
            end_process_group(driver, grace_s=1)


def test_a_refused_sweep_removes_the_runs_dir_it_created_and_nothing_else(tmp_path, monkeypatch):
    """Refused once sweep.json was written (a cluster that does not answer), a new sweep
    removed its sweep.json and folder but left the --runs-dir it had created, empty. A
    --runs-dir that existed stays, and so does one where something else wrote meanwhile."""
    from contextlib import contextmanager

    from click.testing import CliRunner

    from promptclimb.agent.cli import cli
    from promptclimb.agent.core.errors import PromptclimbError

    def refused(runs: Path) -> str:
        run = CliRunner().invoke(cli, ["sweep", "v2", "--dataset", "fashion-mnist", "--optimizer", "craft",
                                       "--queries", "200", "--runs-dir", str(runs), "--address", "127.0.0.1:1"])
        errors = [line for line in run.output.splitlines() if line.startswith("Error:")]
        assert run.exit_code == 1 and len(errors) == 1, run.output
        return errors[0]

    assert "cannot reach Ray at 127.0.0.1:1" in refused(tmp_path / "new" / "runs")
    assert not (tmp_path / "new").exists()
    (tmp_path / "existing").mkdir()
    refused(tmp_path / "existing")
    assert (tmp_path / "existing").is_dir() and not list((tmp_path / "existing").iterdir())

    runs = tmp_path / "shared" / "runs"

    @contextmanager
    def ray_refusing_after_another_wrote(address, echo, num_cpus=None):
        (runs / "notes.txt").write_text("another command's")
        raise PromptclimbError("cannot start a local Ray: refused for the test")
        yield

    monkeypatch.setattr(sweeps, "ray_session", ray_refusing_after_another_wrote)
    with pytest.raises(PromptclimbError, match="refused for the test"):
        sweeps.run_sweep("v2", runs, {"dataset": ["fashion-mnist"]}, {"optimizer": "craft", "queries": 200},
                         echo=lambda message: None)
    assert sorted(p.name for p in runs.iterdir()) == ["notes.txt"]


class InProcessRay:
    """Ray as `run_sweep` uses it, running each cell's task in this process, one after another."""
    def cluster_resources(self):
        return {"CPU": 2}

    def remote(self, **_):
        return lambda fn: type("Task", (), {"options": lambda task, **__: task,
                                            "remote": lambda task, *args: iter(fn(*args))})()

    def wait(self, pending, num_returns=1, timeout=None):
        return pending[:1], pending[1:]

    def get(self, message):
        return message


@pytest.mark.parametrize("unseen", [(), ("seed1",), ("seed1", "seed2")], ids=["none", "one", "both"])
def test_the_last_line_points_at_error_txt_only_for_cells_that_wrote_one(unseen, tmp_path, monkeypatch):
    """A cell whose node cannot see the sweep folder fails with no error.txt (none can be
    written there, and sweep-report does not list it as failed); the sweep's last line had
    said "see their error.txt" for it all the same. Ray here runs the cells in this process
    (the cells' own `run_cell`), a cell in `unseen` as a node that does not see the folder."""
    from contextlib import contextmanager

    from click.testing import CliRunner

    from promptclimb.agent.cli import cli
    from promptclimb.agent.core.errors import PromptclimbError

    def cell_task(cell_dir, opts):
        yield {"state": "running", "node": "n2"}
        seen_from_n2 = tmp_path / "n2" / Path(cell_dir).name if cell_dir.endswith(unseen) else cell_dir
        yield sweep_cell.run_cell(str(seen_from_n2), opts)

    def failing_search(cell_dir, opts, echo):
        raise PromptclimbError("no split for the test")

    monkeypatch.setattr(sweeps, "ray_session", contextmanager(lambda *a, **k: (yield InProcessRay())))
    monkeypatch.setattr(sweeps, "cell_task", cell_task)
    monkeypatch.setattr(sweep_cell, "search_when_free", failing_search)
    runs = tmp_path / "runs"
    run = CliRunner().invoke(cli, ["sweep", "s", "--dataset", "fashion-mnist", "--seeds", "1-2", "--optimizer", "craft",
                                   "--queries", "200", "--runs-dir", str(runs)])
    assert run.exit_code == 3, run.output
    last = run.output.strip().splitlines()[-1]
    unseen_error = f"{tmp_path / 'n2'} does not exist on node {platform.node()}: a sweep folder must be on storage"
    report = f"promptclimb sweep-report s --runs-dir {runs}"
    written = [n for n in ("seed1", "seed2") if n not in unseen]
    assert all((runs / "s" / f"fashion-mnist-demo-1shot-{n}" / "error.txt").exists() == (n in written)
               for n in ("seed1", "seed2"))
    if not unseen:
        assert last == f"sweep s: 0/2 cells finished, 2 failed (see their error.txt, or: {report})"
    elif written:
        assert last.startswith(f"sweep s: 0/2 cells finished, 2 failed (1: see their error.txt, or: {report}; "
                               f"1, no error.txt written: {unseen_error}"), last
    else:
        assert last.startswith(f"sweep s: 0/2 cells finished, 2 failed (no error.txt written): {unseen_error}"), last
        assert "see their error.txt" not in last


def test_a_rerun_reports_no_earlier_run_s_error_as_its_own(tmp_path, monkeypatch):
    """A cell that failed (error.txt written), then failed again where its node does not see
    the sweep folder (no error.txt can be written there), kept the first run's error.txt:
    sweep-report gave that old error as the cell's failure, beside a last line that said no
    error.txt was written for it. A rerun that finishes it leaves no error.txt either. Ray
    runs the cells in this process (the cells' own `run_cell`), as in the test above."""
    from contextlib import contextmanager

    from click.testing import CliRunner

    from promptclimb.agent.cli import cli
    from promptclimb.agent.core.errors import PromptclimbError

    run = {"unseen": (), "error": "first run's error"}

    def cell_task(cell_dir, opts):
        yield {"state": "running", "node": "n2"}
        seen_from_n2 = tmp_path / "n2" / Path(cell_dir).name if cell_dir.endswith(run["unseen"]) else cell_dir
        yield sweep_cell.run_cell(str(seen_from_n2), opts)

    def search(cell_dir, opts, echo):
        if run["error"]:
            raise PromptclimbError(run["error"])
        (cell_dir / "summary.json").write_text(json.dumps({"best": {"accuracy": {"test": 0.5}}}))

    monkeypatch.setattr(sweeps, "ray_session", contextmanager(lambda *a, **k: (yield InProcessRay())))
    monkeypatch.setattr(sweeps, "cell_task", cell_task)
    monkeypatch.setattr(sweep_cell, "search_when_free", search)
    runs = tmp_path / "runs"
    seed1, seed2 = (runs / "s" / f"fashion-mnist-demo-1shot-seed{k}" for k in (1, 2))

    def sweep_and_report(expected_exit: int) -> str:
        swept = CliRunner().invoke(cli, ["sweep", "s", "--dataset", "fashion-mnist", "--seeds", "1-2", "--optimizer",
                                         "craft", "--queries", "200", "--runs-dir", str(runs)])
        assert swept.exit_code == expected_exit, swept.output
        report = CliRunner().invoke(cli, ["sweep-report", "s", "--runs-dir", str(runs)])
        assert report.exit_code == 0, report.output
        return report.output

    assert "2 failed cell(s):" in sweep_and_report(3)
    assert (seed1 / "error.txt").read_text() == (seed2 / "error.txt").read_text() == "first run's error\n"

    run.update(unseen=("seed1",), error="second run's error")
    report = sweep_and_report(3)
    assert not (seed1 / "error.txt").exists() and "first run's error" not in report
    assert f"1 cell(s) not finished yet: {seed1.name}" in report
    assert f"1 failed cell(s):\n  {seed2.name}: second run's error" in report

    run.update(unseen=(), error=None)
    report = sweep_and_report(0)
    assert not (seed1 / "error.txt").exists() and not (seed2 / "error.txt").exists()
    assert "failed" not in report.split("\n\n", 1)[1] and "not finished" not in report


def in_process_cells(monkeypatch, search) -> list:
    """Ray as InProcessRay, each cell's task the cells' own `run_cell` with `search` as its
    search; returns the list that gets an entry each time a Ray session starts."""
    from contextlib import contextmanager

    sessions = []

    @contextmanager
    def ray_session(*args, **kwargs):
        sessions.append(args)
        yield InProcessRay()

    def cell_task(cell_dir, opts):
        yield {"state": "running", "node": "n2"}
        yield sweep_cell.run_cell(cell_dir, opts)

    monkeypatch.setattr(sweeps, "ray_session", ray_session)
    monkeypatch.setattr(sweeps, "cell_task", cell_task)
    monkeypatch.setattr(sweep_cell, "search_when_free", search)
    return sessions


def finish(cell_dir: Path) -> None:
    (cell_dir / "summary.json").write_text(json.dumps({"best": {"accuracy": {"test": 0.5}}}))


GRID = ["--dataset", "fashion-mnist", "--optimizer", "craft", "--queries", "200"]


def test_a_second_sweep_of_a_running_sweep_is_refused_before_ray_writing_nothing(tmp_path, monkeypatch):
    """`sweep s` while another `sweep s` ran started its own Ray, waited 30 s on a cell's run
    lock, then wrote error.txt and a "failed" line into the cell the first was finishing (or,
    with short cells, ran every cell again: two results in each search.log). The sweep's
    lock (s/.lock) is held from before anything is written until the sweep ends; the second
    command is one line, and the first goes on as if alone."""
    import threading

    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    runs, searching, release = tmp_path / "runs", threading.Event(), threading.Event()

    def slow_search(cell_dir, opts, echo):
        searching.set()
        assert release.wait(60)
        finish(cell_dir)

    sessions = in_process_cells(monkeypatch, slow_search)
    first: dict = {}  # the first sweep runs in a thread of this process: the refusal names this pid
    driver = threading.Thread(target=lambda: first.update(sweeps.run_sweep(
        "s", runs, {"dataset": ["fashion-mnist"]}, {"optimizer": "craft", "queries": 200}, echo=lambda _: None)))
    driver.start()
    try:
        assert searching.wait(60)
        before = {p: p.read_bytes() for p in (runs / "s").rglob("*") if p.is_file()}
        for again in (["sweep", "s", "--runs-dir", str(runs)], ["sweep", "s", *GRID, "--runs-dir", str(runs)]):
            refused = CliRunner().invoke(cli, again)
            error = [line for line in refused.output.splitlines() if line.startswith("Error:")]
            assert refused.exit_code == 1 and error == [
                f"Error: sweep s is being run by this process (pid {os.getpid()}: another thread of it); wait "
                "until it has finished"], refused.output
        assert {p: p.read_bytes() for p in (runs / "s").rglob("*") if p.is_file()} == before and len(sessions) == 1
    finally:
        release.set()
        driver.join(60)
    cell = runs / "s" / "fashion-mnist-demo-1shot-seed0"
    assert first == {cell.name: "finished"} and not (cell / "error.txt").exists()
    log = (cell / "search.log").read_text().splitlines()
    assert [line for line in log if line.startswith("---")] == log[:1] and "failed" not in str(log)  # one search
    assert not (runs / "s" / ".lock").exists()  # held while it ran only: a rerun runs
    rerun = CliRunner().invoke(cli, ["sweep", "s", "--runs-dir", str(runs)])
    assert rerun.exit_code == 0 and "1 finished" in rerun.output, rerun.output


def test_a_new_sweep_whose_lock_another_process_holds_is_refused_and_a_killed_one_s_lock_is_taken(tmp_path,
                                                                                                    monkeypatch):
    """A new sweep that another process is starting (its folder holds only the lock it
    holds) is refused with that process's pid and left as it is; once that process is gone
    (kill -9: its lock file stays), the sweep takes the folder and runs."""
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    sweep_dir = tmp_path / "runs" / "s"
    sweep_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from promptclimb.agent.runs.store import lock_folder\n"
                               "held = lock_folder(sys.argv[1]); print('held', flush=True); time.sleep(60)",
                               str(sweep_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        sessions = in_process_cells(monkeypatch, lambda cell_dir, opts, echo: finish(cell_dir))
        refused = CliRunner().invoke(cli, ["sweep", "s", *GRID, "--runs-dir", str(sweep_dir.parent)])
        error = [line for line in refused.output.splitlines() if line.startswith("Error:")]
        assert refused.exit_code == 1 and error == [f"Error: sweep s is being run by another promptclimb process "
                                                    f"(pid {holder.pid}); wait until it has finished"], refused.output
        assert [p.name for p in sweep_dir.iterdir()] == [".lock"] and not sessions
    finally:
        holder.kill()
        holder.wait(30)
    swept = CliRunner().invoke(cli, ["sweep", "s", *GRID, "--runs-dir", str(sweep_dir.parent)])
    assert swept.exit_code == 0 and sorted(p.name for p in sweep_dir.iterdir()) == [
        "fashion-mnist-demo-1shot-seed0", "sweep.json"], swept.output


def test_the_progress_of_a_retry_counts_only_this_run_s_failures(tmp_path, monkeypatch):
    """A rerun retrying 3 failed cells said `[0/3 done, 1 running, 2 failed]` as it started the
    first, counting the two waiting for their retry as failed."""
    failing = {"seed1", "seed2", "seed3"}

    def search(cell_dir, opts, echo):
        if cell_dir.name.endswith(tuple(failing)):
            raise sweeps.PromptclimbError("no split for the test")
        finish(cell_dir)

    in_process_cells(monkeypatch, search)
    runs, lines = tmp_path / "runs", []
    sweep = ("s", runs, {"dataset": ["fashion-mnist"], "seeds": ["1-3"]}, {"optimizer": "craft", "queries": 200})
    assert set(sweeps.run_sweep(*sweep, echo=lambda _: None).values()) == {"failed"}
    failing -= {"seed2", "seed3"}
    states = sweeps.run_sweep(*sweep, echo=lines.append)
    assert lines[0].endswith(f"0 finished, 0 to resume, 3 to retry, 0 to start   ({runs / 's'})")
    progress = [line.split("] ")[0] + "]" for line in lines if line.startswith("[")]
    assert progress == ["[0/3 done, 1 running, 0 failed]", "[0/3 done, 2 running, 0 failed]",
                        "[0/3 done, 3 running, 0 failed]", "[0/3 done, 2 running, 1 failed]",
                        "[1/3 done, 1 running, 1 failed]", "[2/3 done, 0 running, 1 failed]"], lines
    assert list(states.values()) == ["failed", "finished", "finished"]
