"""How useful is the embedded local LLM as the optimizer? Share of its answers that yield at
least one valid new template, and its speed, on the embedded demo.

    python bench/bench_local_llm.py                  # 20 answers: 2 restarts x 2 resets x 5 iterations
    python bench/bench_local_llm.py --restarts 3     # 30 answers
    python bench/bench_local_llm.py --base-url http://127.0.0.1:PORT/v1   # a `promptclimb llm serve`

It runs the real search loop (`agent.search.HillClimber`) on fashion-mnist with the `demo`
backbone (real scores from the embedded vision-language model), so the LLM sees exactly
what `promptclimb search` shows it: the real meta-prompts, the real initial pool with its
scores, and feedback on how its own templates scored. Answers go through the project's LLM
client with its disk cache off (every answer is a real request) and the sampling that
`promptclimb search --llm local` uses (`agent.llm.local.LOCAL_SAMPLING`); they are parsed by
the project's parser. The run folder is written to a temp dir (kept with --keep).

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path



def main(argv=None) -> int:
    from promptclimb.agent.llm.local import LOCAL_SAMPLING

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--resets", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--proposals", type=int, default=5, help="templates asked for per answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=LOCAL_SAMPLING["temperature"])
    parser.add_argument("--max-tokens", type=int, default=LOCAL_SAMPLING["max_tokens"])
    parser.add_argument("--presence-penalty", type=float, default=0.0)
    parser.add_argument("--llm-model", default=None, help="another GGUF file (default: the embedded model)")
    parser.add_argument("--base-url", default=None, help="use a running server instead of starting one")
    parser.add_argument("--meta-prompt", default=None, help="a folder of meta-prompt overrides")
    parser.add_argument("--keep", action="store_true", help="keep the run folder and print where it is")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)  # the LLM server needs the cores more than the tiny demo tower

    from promptclimb.agent.llm.client import LLMClient
    from promptclimb.agent.llm.local import local_model_name, local_server
    from promptclimb.agent.metaprompt import MetaPrompt
    from promptclimb.agent.runs.store import RunStore
    from promptclimb.agent.search import HillClimber, SearchConfig
    from promptclimb.evaluators import build_evaluator

    evaluator = build_evaluator(dataset="fashion-mnist", shots=args.shots, seed=args.seed, backbone="demo",
                                pretrained=None, weights=None, data_root=None, device="cpu")
    config = SearchConfig(restarts=args.restarts, resets=args.resets, iterations=args.iterations,
                          proposals=args.proposals, seed=args.seed, temperature=args.temperature,
                          max_answer_tokens=args.max_tokens, presence_penalty=args.presence_penalty)
    run_root = Path(tempfile.mkdtemp(prefix="bench-local-llm-"))
    store = RunStore.create(run_root / "run", {"bench": "local_llm", "search": vars(args)})
    quiet = lambda msg: None  # noqa: E731

    def climb(base_url: str) -> float:
        llm = LLMClient(local_model_name(args.llm_model), base_url=base_url, api_key="local", use_cache=False,
                        timeout=600)
        started = time.perf_counter()
        HillClimber(evaluator, llm, store, config, meta=MetaPrompt(args.meta_prompt), echo=quiet).run()
        return time.perf_counter() - started

    try:
        if args.base_url:
            wall = climb(args.base_url)
        else:
            with local_server(args.llm_model) as base_url:
                wall = climb(base_url)
    finally:
        store.close()

    report(store.events, wall, args)
    if args.keep:
        print(f"run folder: {store.run_dir}")
    else:
        import shutil

        shutil.rmtree(run_root, ignore_errors=True)
    return 0


def report(events: list[dict], wall: float, args) -> None:
    exchanges = [e for e in events if e["event"] == "llm_exchange"]
    new_by_call: dict[int, int] = {}
    rejected_by_call: dict[int, int] = {}
    for e in events:
        if e["event"] == "score" and e.get("origin") == "llm":
            new_by_call[e["call"]] = new_by_call.get(e["call"], 0) + 1
        elif e["event"] == "reject":
            rejected_by_call[e["call"]] = rejected_by_call.get(e["call"], 0) + 1
    useful = sum(new_by_call.get(e["call"], 0) >= 1 for e in exchanges)
    completion = sum(e["usage"]["completion_tokens"] for e in exchanges)
    prompt = sum(e["usage"]["prompt_tokens"] for e in exchanges)
    latency = sum(e["latency_s"] for e in exchanges)
    pool = [e for e in events if e["event"] == "score" and e.get("origin") == "pool"]
    llm_scores = [e for e in events if e["event"] == "score" and e.get("origin") == "llm"]
    best = lambda rows: max((r["accuracy"]["train"] for r in rows), default=float("nan"))  # noqa: E731

    n = len(exchanges)
    print(f"local LLM on the embedded demo (fashion-mnist, demo backbone, {args.shots} shot, seed {args.seed}); "
          f"temperature {args.temperature}, max_tokens {args.max_tokens}, {args.proposals} templates asked per answer")
    print(f"answers:                           {n}")
    print(f"answers with >= 1 valid new template: {useful}/{n} = {useful / max(n, 1):.0%}")
    print(f"valid new templates:               {len(llm_scores)} ({len(llm_scores) / max(n, 1):.1f} per answer); "
          f"rejected lines: {sum(rejected_by_call.values())}")
    repeats = sum(e["event"] == "reject" and "duplicate" in e.get("reason", "") for e in events)
    lines = sum(rejected_by_call.values()) + len(llm_scores)
    print(f"repeated lines:                    {repeats} of {lines} ({repeats / max(lines, 1):.0%}), "
          f"presence penalty {args.presence_penalty}")
    print(f"tokens:                            {prompt} prompt + {completion} completion")
    print(f"generation speed:                  {completion / max(latency, 1e-9):.1f} completion tokens/s "
          f"(request latency incl. prompt processing; {latency / max(n, 1):.1f} s per answer)")
    print(f"best train accuracy:               pool {best(pool):.1%}, LLM {best(llm_scores):.1%}")
    print(f"wall time:                         {wall:.0f} s (scoring included)")
    for e in exchanges:
        k = new_by_call.get(e["call"], 0)
        first = e["answer"].strip().splitlines()[0][:70] if e["answer"].strip() else ""
        print(f"  call {e['call']:2d} (restart {e['restart']} reset {e['reset']} it {e['iteration']}): "
              f"{k} new, {rejected_by_call.get(e['call'], 0)} rejected | {first!r}")


if __name__ == "__main__":
    sys.exit(main())
