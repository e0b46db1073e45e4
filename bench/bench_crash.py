"""Kills and resumes: SIGKILL `promptclimb search` at N random moments, resume each, and
count how many end identical to an uninterrupted run; with --weights, the peak memory of
a ViT-B-32 `eval` and `search` too.

    python bench/bench_crash.py                          # 20 kills
    python bench/bench_crash.py --kills 50 --seed 1
    python bench/bench_crash.py --kills 0 --weights /tmp/vitb32.pt   # peak RSS only

The searches are the real command in processes of their own (tests/fake_cli.py: the
in-memory WordEvaluator stands in for CLIP, so no torch), against the fake
OpenAI-compatible server of tests/fake_llm.py, whose answers are a pure function of the
request and take --latency seconds. A kill lands during the command's start, or just after
its k-th LLM request arrived (during the call, or while the answer is scored and written),
or after its last one (k drawn at random), so the moments spread over the run whatever the
machine's speed. Each killed search has a PROMPTCLIMB_HOME of its own (an empty LLM cache).

After a kill: `search --resume NAME` when the run folder holds its config.json, else the
same command again (the search never started). Identical means: summary.json without
ledger / timings / run_id, history.jsonl without time / latency_s / cached / source /
run_id, and prompts.csv byte for byte. No temp file (".*.tmp") may be left in the run
folder or the cache home.

Peak RSS (--weights FILE, a ViT-B-32 state dict; random weights will do, e.g.
`open_clip.create_model('ViT-B-32')` saved with torch.save) is the maximum resident set
size of the command's process (os.wait4), for `eval --dataset fashion-mnist` (encoding the
split's images into an empty feature cache) and then a one-answer `search` on the same
split (features read back).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path.insert(0, str(TESTS))

from fake_llm import FakeLLM  # noqa: E402
from test_search import responder  # noqa: E402  (proposals: a pure function of the request)

SEARCH = ["--dataset", "toy", "--restarts", "2", "--resets", "2", "--iterations", "3", "--pool-sample", "8"]
VOLATILE_EVENT_FIELDS = ("time", "latency_s", "cached", "source", "run_id")
VOLATILE_SUMMARY_FIELDS = ("ledger", "timings", "run_id")


CHILDREN: list[subprocess.Popen] = []  # killed when the bench itself is stopped


def search(runs: Path, home: Path, base_url: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PROMPTCLIMB_HOME": str(home), "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": base_url,
           "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, str(TESTS / "fake_cli.py"), "search", *args, "--runs-dir", str(runs)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    CHILDREN.append(child)
    return child


def finish(child: subprocess.Popen) -> tuple[int, str]:
    output = child.communicate(timeout=600)[0]
    return child.returncode, output


def comparable(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    events = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return {
        "summary": {k: v for k, v in summary.items() if k not in VOLATILE_SUMMARY_FIELDS},
        "history": [{k: v for k, v in e.items() if k not in VOLATILE_EVENT_FIELDS} for e in events],
        "prompts.csv": (run_dir / "prompts.csv").read_bytes(),
    }


def difference(expected: dict, got: dict) -> str:
    """Where two `comparable` runs first differ."""
    for key in expected:
        if expected[key] == got[key]:
            continue
        if key == "history":
            for n, (a, b) in enumerate(zip(expected[key], got[key])):
                if a != b:
                    return f"history event {n}: {a} != {b}"
            return f"history has {len(got[key])} events, not {len(expected[key])}"
        if key == "summary":
            return "summary: " + ", ".join(k for k in expected[key] if expected[key][k] != got[key].get(k))
        return key
    return "nothing"


def temp_files(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*.tmp")]


def state_at_kill(run_dir: Path) -> str:
    """Where the kill landed, from what the run folder held."""
    if not (run_dir / "config.json").exists():
        return "before the run folder had its config"
    if (run_dir / "summary.json").exists():
        return "after the summary was written"
    history = run_dir / "history.jsonl"
    return "mid-search" if history.exists() and history.stat().st_size else "before the first event"


def kill_at_random_moment(child: subprocess.Popen, llm: FakeLLM, asked_before: int, answers: int,
                          startup_s: float, latency: float, rng: random.Random) -> str:
    """SIGKILL `child` at a random moment of its run, whatever the machine's speed: during its
    start (before its first LLM request), or just after its k-th LLM request arrived (during
    the call, or while its answer is scored and written), or after its last one (the end:
    ensemble, summary, plots). Returns when it was."""
    moment = rng.randrange(answers + 2)
    if moment == 0:
        deadline, when = time.monotonic() + rng.uniform(0.0, startup_s), "during the start"
    else:
        k = min(moment, answers)
        while llm.count < asked_before + k and child.poll() is None:
            time.sleep(0.005)
        extra = rng.uniform(0.0, 3 * latency) + (rng.uniform(0.0, 1.0) if moment > answers else 0.0)
        deadline = time.monotonic() + extra
        when = f"after LLM request {k}" if moment <= answers else "after the last LLM request"
    while time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.005)
    if child.poll() is not None:
        return "too late: the search had ended"
    child.send_signal(signal.SIGKILL)
    return when


def crash_runs(kills: int, seed: int, latency: float, work: Path) -> int:
    rng = random.Random(seed)
    with FakeLLM(responder=responder, latency_s=latency) as llm:
        started = time.perf_counter()
        child = search(work / "whole" / "runs", work / "whole" / "home", llm.base_url, *SEARCH, "--name", "whole")
        while llm.count == 0 and child.poll() is None:
            time.sleep(0.005)
        startup_s = time.perf_counter() - started
        code, output = finish(child)
        whole_s = time.perf_counter() - started
        if code != 0:
            print(output)
            raise SystemExit(f"the uninterrupted search failed (exit {code})")
        reference = comparable(work / "whole" / "runs" / "whole")
        answers = reference["summary"]["counts"]["llm_answers"]
        print(f"uninterrupted search: {whole_s:.1f} s ({startup_s:.1f} s to its first LLM request), "
              f"{len(reference['history'])} events, {answers} LLM answers")
        identical, where, landed_at, failures = 0, {}, [], []
        for k in range(kills):
            folder, name = work / f"kill-{k}", f"kill-{k}"
            runs, home = folder / "runs", folder / "home"
            child = search(runs, home, llm.base_url, *SEARCH, "--name", name)
            when = kill_at_random_moment(child, llm, llm.count, answers, startup_s, latency, rng)
            finish(child)
            landed = state_at_kill(runs / name) if child.returncode == -signal.SIGKILL else "after the search ended"
            where[landed] = where.get(landed, 0) + 1
            landed_at.append(when)
            again = ["--resume", name] if (runs / name / "config.json").exists() else [*SEARCH, "--name", name]
            code, output = finish(search(runs, home, llm.base_url, *again))
            problems = []
            if code != 0:
                problems.append(f"the resume failed (exit {code}): {output.strip().splitlines()[-1:]}")
            elif comparable(runs / name) != reference:
                problems.append(f"ended different from the uninterrupted run: "
                                f"{difference(reference, comparable(runs / name))}")
            left = temp_files(runs, home)
            if left:
                problems.append(f"temp files left: {', '.join(str(p.relative_to(folder)) for p in left)}")
            if problems:
                failures.append(f"kill {k} {when} ({landed}): {'; '.join(problems)}")
            else:
                identical += 1
            shutil.rmtree(folder)
    print(f"killed with SIGKILL at {kills} random moments; the run folder then held: "
          f"{', '.join(f'{n} {w}' for w, n in sorted(where.items()))}")
    print(f"  moments: {', '.join(landed_at)}")
    print(f"identical to the uninterrupted run after resuming, with no temp file left: {identical}/{kills}")
    for failure in failures:
        print(f"  {failure}")
    return identical


def peak_rss(args: list[str], env: dict) -> tuple[float, float, int, str]:
    """(peak RSS in MB, wall seconds, exit status, last output line) of one command."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "promptclimb.agent.cli", *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    CHILDREN.append(child)
    output = []
    for line in child.stdout:
        output.append(line.rstrip())
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, time.perf_counter() - started, child.returncode, (output or [""])[-1]


def memory(weights: Path, work: Path, home: Path | None) -> None:
    home = home or work / "rss-home"
    env = {**os.environ, "PROMPTCLIMB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    common = ["--dataset", "fashion-mnist", "--backbone", "ViT-B-32", "--weights", str(weights)]
    fresh = (home / "features").exists()
    mb, wall, code, last = peak_rss(["eval", *common, "--prompt", "a photo of a {}."], env)
    print(f"peak RSS, eval ViT-B-32 ({weights.stat().st_size / 1e6:.0f} MB weights, image features "
          f"{'read back' if fresh else 'computed'}): {mb:.0f} MB  [{wall:.0f} s, exit {code}]")
    with FakeLLM(responder=responder) as llm:
        env = {**env, "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": llm.base_url}
        mb, wall, code, last = peak_rss(["search", *common, "--iterations", "1", "--resets", "1",
                                         "--runs-dir", str(work / "rss-runs"), "--name", "rss"], env)
    print(f"peak RSS, search ViT-B-32 (1 LLM answer, image features read back): {mb:.0f} MB  "
          f"[{wall:.0f} s, exit {code}]" + ("" if code == 0 else f"  {last}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="searches killed (SIGKILL) at random moments")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the fake LLM takes per answer")
    parser.add_argument("--weights", type=Path, default=None, help="ViT-B-32 weights file: also measure peak RSS")
    parser.add_argument("--home", type=Path, default=None,
                        help="PROMPTCLIMB_HOME for the peak-RSS runs [default: an empty one; give one to reuse "
                             "its image features]")
    args = parser.parse_args()
    print(f"bench_crash on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: children killed, temp folder removed
    try:
        with tempfile.TemporaryDirectory(prefix="bench-crash-") as work:
            if args.kills:
                crash_runs(args.kills, args.seed, args.latency, Path(work))
            if args.weights:
                memory(args.weights, Path(work), args.home)
    finally:
        for child in CHILDREN:
            if child.poll() is None:
                child.kill()
                child.wait()


if __name__ == "__main__":
    main()
