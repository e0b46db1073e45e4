"""What the live MLflow tracker does per LLM answer, as a search grows: no server needed.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_live_tracking.py --answers 100 300 1000

For each size, a template search of that many answers is run against the tests' fake
OpenAI-compatible server and in-memory evaluator (tests/fake_llm.py), in a temporary folder.
Then the tracker's work for its last answer is timed: re-reading the run folder
(`load_run`), and the answers' metrics (`answer_metrics`) for all answers (what
`mlflow-sync` computes for a run logged afterwards) and for the new one only (what a live
tracker computes per answer, as it remembers what it sent). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fake_llm import FakeLLM, WordEvaluator  # noqa: E402
from test_search import KEY, POOL, responder  # noqa: E402

from promptclimb.agent.llm.client import LLMClient  # noqa: E402
from promptclimb.agent.runs.run import load_run  # noqa: E402
from promptclimb.agent.runs.store import RunStore  # noqa: E402
from promptclimb.agent.search import HillClimber, SearchConfig  # noqa: E402
from promptclimb.agent.tracking.logged import answer_metrics  # noqa: E402


def timed(step, repeat: int = 3) -> tuple[object, float]:
    best, out = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        out = step()
        best = min(best, time.perf_counter() - started)
    return out, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, nargs="+", default=[100, 300, 1000])
    args = parser.parse_args()
    print("| answers | events | load_run (s) | metrics of all answers (s) | of the new one (s) |")
    print("|---|---|---|---|---|")
    for n in args.answers:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            os.environ["PROMPTCLIMB_HOME"] = str(tmp / "home")
            with FakeLLM(responder=responder) as fake:
                llm = LLMClient("fake", base_url=fake.base_url, api_key=KEY, timeout=5, cache_dir=tmp / "cache")
                with RunStore.create(tmp / "run", {"bench": 1}) as store:
                    config = SearchConfig(restarts=1, resets=max(1, n // 10), iterations=10, proposals=8,
                                          pool_sample=0, search="template")
                    HillClimber(WordEvaluator(), llm, store, config, pool=POOL, echo=lambda m: None).run()
            run, read_s = timed(lambda: load_run(tmp / "run"))
            rows, all_s = timed(lambda: answer_metrics(run))
            _, new_s = timed(lambda: answer_metrics(run, logged={step for step, _, _ in rows[:-1]}))
            print(f"| {len(rows)} | {len(run.events)} | {read_s:.3f} | {all_s:.3f} | {new_s:.3f} |")


if __name__ == "__main__":
    main()
