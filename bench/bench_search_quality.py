"""Search quality on the embedded demo: does the climb beat its baselines?

    python bench/bench_search_quality.py                       # local LLM, 1 shot, seeds 1 2 3
    python bench/bench_search_quality.py --shots 4 --seeds 1 2 3
    python bench/bench_search_quality.py --base-url http://127.0.0.1:PORT/v1  # a running `promptclimb llm serve`
    python bench/bench_search_quality.py --llm gpt-4o-mini --base-url URL   # a stronger endpoint

Per seed (one few-shot split of fashion-mnist, backbone `demo`), on the held-out test split:

    photo       "a photo of a {}." alone
    pool-best   the best template of the search's initial pool sample (chosen on train)
    full        the search: best and worst templates shown, conversation kept
    best-only   the same search shown only the best templates (bottom_k = 0), as in the
                paper's ablation
    no-scores   the same number of LLM answers, the LLM never shown a score
                (prompts/ablations/no-scores); its proposals selected the same way (train)
    ensemble    the top-k ensemble of `full`

The three searches get the same LLM budget (restarts x resets x iterations answers). Every
search is a normal run folder under --runs-dir (read it with `promptclimb show`). LLM
answers are cached, so a re-run of this script reprints the table without LLM calls.
Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from promptclimb.agent.llm import LLMClient
from promptclimb.agent.metaprompt import MetaPrompt
from promptclimb.agent.runstore import RunStore, read_history
from promptclimb.agent.search import HillClimber, SearchConfig, Scored, rank

BASELINE = "a photo of a {}."
SEARCHES = {  # variant -> (config change, meta-prompt folder)
    "full": ({}, None),
    "best-only": ({"bottom_k": 0}, None),
    "no-scores": ({}, ROOT / "prompts" / "ablations" / "no-scores"),
}


def pool_best(history: list[dict]) -> str:
    """The best initial-pool template of a run, ranked as the search ranks (train)."""
    board = [Scored(e["template"], "pool", e["accuracy"], e.get("loss", {}), order=i)
             for i, e in enumerate(e for e in history if e["event"] == "score" and e["origin"] == "pool")]
    return rank(board, ("train",))[0].template


def reason_kind(reason: str) -> str:
    """A rejection reason without its particulars ("placeholder {0} ..." -> "placeholder ...")."""
    return re.sub(r"\{[^}]+\}|\d+", "…", reason.split(" (")[0])


def run_search(variant, seed, args, evaluator, llm_args, runs_dir) -> dict:
    change, meta_dir = SEARCHES[variant]
    config = replace(SearchConfig(seed=seed, restarts=1, resets=args.resets, iterations=args.iterations,
                                  temperature=args.temperature, max_answer_tokens=args.max_answer_tokens), **change)
    run_dir = runs_dir / f"{variant}-shots{args.shots}-seed{seed}-{args.resets}x{args.iterations}"
    settings = {"search": vars(config), "evaluator": evaluator.info(), "llm": {"model": llm_args["model"]},
                "evaluator_args": {"dataset": "fashion-mnist", "shots": args.shots, "seed": seed, "backbone": "demo"},
                "bench_variant": variant, "meta_prompt_dir": str(meta_dir) if meta_dir else None}
    store = RunStore.resume(run_dir) if (run_dir / "config.json").exists() else RunStore.create(run_dir, settings)
    llm = LLMClient(**llm_args)
    started = time.time()
    result = HillClimber(evaluator, llm, store, config, meta=MetaPrompt(meta_dir), echo=lambda m: None).run()
    history = read_history(run_dir / "history.jsonl")
    ledger = result.summary["ledger"]
    return {
        "test": result.best["accuracy"]["test"],
        "ensemble_test": (result.ensemble or {}).get("accuracy", {}).get("test"),
        "pool_best": pool_best(history),
        "calls": ledger["calls"] + ledger["cache_hits"],
        "tokens": ledger["prompt_tokens"] + ledger["completion_tokens"],
        "llm_s": ledger["latency_s"],
        "wall_s": time.time() - started,
        "rejects": Counter(reason_kind(e["reason"]) for e in history if e["event"] == "reject"),
        "proposed": sum(e["event"] == "score" and e["origin"] == "llm" for e in history),
        "best": result.best["template"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--resets", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--max-answer-tokens", type=int, default=None)
    parser.add_argument("--llm", default="local")
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench-quality"))
    args = parser.parse_args()

    import pandas as pd
    from contextlib import nullcontext

    from promptclimb.evaluators import build_evaluator

    if args.llm == "local":  # the embedded LLM: started here, or a `promptclimb llm serve` at --base-url
        from promptclimb.agent.local_llm import LOCAL_MODEL_NAME, LOCAL_SAMPLING, local_server

        args.temperature = args.temperature if args.temperature is not None else LOCAL_SAMPLING["temperature"]
        args.max_answer_tokens = args.max_answer_tokens or LOCAL_SAMPLING["max_tokens"]
        server = nullcontext(args.base_url) if args.base_url else local_server()
        model = LOCAL_MODEL_NAME
    else:
        args.temperature = 1.0 if args.temperature is None else args.temperature
        args.max_answer_tokens = args.max_answer_tokens or 400
        server, model = nullcontext(args.base_url), args.llm
    runs_dir = Path(args.runs_dir)
    rows, rejects, repeats = [], Counter(), 0
    with server as base_url:
        llm_args = {"model": model, "base_url": base_url, "api_key": os.environ.get("OPENAI_API_KEY", "local")}
        for seed in args.seeds:
            evaluator = build_evaluator(dataset="fashion-mnist", shots=args.shots, seed=seed, backbone="demo")
            done = {}
            for variant in SEARCHES:
                done[variant] = out = run_search(variant, seed, args, evaluator, llm_args, runs_dir)
                rows.append({"variant": variant, "seed": seed, "test": out["test"], "calls": out["calls"],
                             "tokens": out["tokens"], "llm_s": out["llm_s"], "proposed": out["proposed"]})
                rejects += out["rejects"]
                repeats += sum(n for reason, n in out["rejects"].items() if "duplicate" in reason)
                print(f"seed {seed} {variant:9s} test {out['test']:.1%}  {out['calls']} calls  "
                      f"{out['wall_s']:.0f}s  best: {out['best']}", flush=True)
            full = done["full"]
            fixed = evaluator.score([BASELINE, full["pool_best"]], splits=("test",))
            rows.append({"variant": "photo", "seed": seed, "test": fixed[0].accuracy["test"]})
            rows.append({"variant": "pool-best", "seed": seed, "test": fixed[1].accuracy["test"]})
            rows.append({"variant": "ensemble", "seed": seed, "test": full["ensemble_test"], "calls": full["calls"],
                         "tokens": full["tokens"], "llm_s": full["llm_s"]})

    df = pd.DataFrame(rows)
    order = ["photo", "pool-best", "full", "best-only", "no-scores", "ensemble"]
    table = df.groupby("variant").agg(
        test_mean=("test", "mean"), test_std=("test", "std"), test_min=("test", "min"), test_max=("test", "max"),
        llm_calls=("calls", "mean"), tokens=("tokens", "mean"), llm_s=("llm_s", "mean"),
    ).reindex(order)
    for col in ("test_mean", "test_std", "test_min", "test_max"):
        table[col] = (100 * table[col]).round(1)
    table[["llm_calls", "tokens", "llm_s"]] = table[["llm_calls", "tokens", "llm_s"]].round(0)
    print(f"\nfashion-mnist, backbone demo, {args.shots} shot(s), seeds {args.seeds}, LLM {model}, "
          f"{args.resets} reset(s) x {args.iterations} iterations per search; test accuracy in % "
          f"(mean, std, min, max over seeds); LLM calls, tokens and LLM seconds per search (mean; "
          f"as first measured, also when the answers come from the cache); scoring adds ~1 s per search")
    print(table.to_markdown())
    proposed = int(df["proposed"].fillna(0).sum())
    print(f"\nLLM proposals over all searches: {proposed} scored; rejected by reason: "
          + (", ".join(f"{reason}: {n}" for reason, n in rejects.most_common()) or "none")
          + f"; repeats of earlier templates: {repeats}")


if __name__ == "__main__":
    main()
