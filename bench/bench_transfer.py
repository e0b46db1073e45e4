"""Transfer on the embedded demo: does a template found on one backbone help on another?

    python bench/bench_transfer.py --base-url http://127.0.0.1:8765/v1     # a running `promptclimb llm serve`
    python bench/bench_transfer.py --shots 1 --seeds 1                     # one cell (the local LLM started here)
    python bench/bench_transfer.py --metric blend ...                      # searches ranked by another metric

Two real backbones with different pretrained text towers and the same kind of image tower:
`demo` (all-MiniLM-L6-v2, 384-d) and `demo-mpnet` (all-mpnet-base-v2, 768-d; the `mpnet`
extra). Per cell (fashion-mnist, shots, seed), one search per backbone: the default search
(the local LLM, --pool captions, 1 restart x 2 resets x 5 iterations, ranked by --metric),
run through the Python API exactly as `promptclimb search` runs it. A search on `demo` that
the search-quality bench already ran with the same settings (--quality-runs/full-shots{S}-seed{N}
or full-{metric}-shots{S}-seed{N}, finished, its config ranked by --metric) is reused as it
is; other searches go under --runs-dir and are reread when this bench runs again (the LLM
cache makes a rerun cost no LLM call).

Each search is then carried to the other backbone with `promptclimb.transfer` (every
template it scored, re-scored on the same split; its transfer-<target>.csv/.json/.png land
in the run folder). Per cell and direction, on the target's 2,000 held-out test images:

    rho sel / rho test   Spearman of the source accuracies (train) of every template the
                         search scored against the target's (train / test)
    rho oracle           the same templates, source test vs target test: how alike the two
                         backbones rank them with 2,000 images on both sides (no few-shot noise)
    win rank             where the source winner ranks on target test, of N
    winner               the transferred winner (the source search's best template)
    photo                "a photo of a {}." on the target
    pool best            the target's own best pool template (the best of the same pool
                         sample, chosen on the target's train split, as its search starts)
    direct               the best template of the search run directly on the target
    ens3 / direct ens3   the top-3 ensemble (by the run's ranking) of the source search,
                         carried over / of the direct search

Test accuracy is only measured here, never used to choose. Asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("demo", "demo-mpnet")
BASELINE = "a photo of a {}."


def search_run(backbone: str, shots: int, seed: int, args) -> Path:
    """The finished run folder of the default search for this cell, reused or run now."""
    from promptclimb.agent.api import search

    for variant in (f"full-{args.metric}", "full"):
        reuse = Path(args.quality_runs) / f"{variant}-shots{shots}-seed{seed}"
        if backbone == "demo" and (reuse / "summary.json").exists() and ranked_by(reuse) == args.metric:
            return reuse
    name = f"{backbone}-{args.metric}-shots{shots}-seed{seed}"
    run_dir = Path(args.runs_dir) / name
    if (run_dir / "summary.json").exists():
        return run_dir
    knobs = {"resume": name} if (run_dir / "config.json").exists() else {
        "dataset": "fashion-mnist", "shots": shots, "seed": seed, "backbone": backbone, "pool": "captions",
        "metric": args.metric, "name": name}
    print(f"  searching on {backbone}, {shots} shot(s), seed {seed} ...", flush=True)
    return Path(search(**knobs, base_url=args.base_url, runs_dir=args.runs_dir, echo=None).run_dir)


def ranked_by(run_dir: Path) -> str | None:
    import json

    return (json.loads((run_dir / "config.json").read_text()).get("search") or {}).get("metric")


class Targets:
    """One evaluator per (backbone, shots, seed): the target's test scores for the bench."""

    def __init__(self):
        self.cache = {}

    def get(self, backbone: str, shots: int, seed: int):
        from promptclimb.evaluators import build_evaluator

        key = (backbone, shots, seed)
        if key not in self.cache:
            self.cache[key] = build_evaluator(dataset="fashion-mnist", shots=shots, seed=seed, backbone=backbone)
        return self.cache[key]

    def test(self, key, templates: list[str]) -> list[float]:
        return [float(s.accuracy["test"]) for s in self.get(*key).score(templates, splits=("test",))]

    def ensemble_test(self, key, templates: list[str]) -> float:
        return float(self.get(*key).score_ensemble(templates, splits=("test",)).accuracy["test"])


def pool_best(run) -> str:
    """The best template of a run's initial pool sample, as its search ranks them."""
    ranked = run.ranked()
    return ranked[ranked["origin"] == "pool"]["template"].iloc[0]


def cell(source_dir: Path, target_dir: Path, target: str, shots: int, seed: int, targets: Targets) -> dict:
    import pandas as pd

    from promptclimb.agent.api import load_run, rank_correlation, transfer

    source, direct = load_run(source_dir), load_run(target_dir)
    table = transfer(source, target)  # every template the source search scored, on the target
    summary = table.attrs["transfer"]
    rho = {k: math.nan if v is None else v for k, v in summary["rank_correlation"].items()}  # None: all tied
    key = (target, shots, seed)
    top3 = list(source.ranked().drop_duplicates("template")["template"].head(3))
    direct_top3 = list(direct.ranked().drop_duplicates("template")["template"].head(3))
    photo, pool, direct_best = targets.test(key, [BASELINE, pool_best(direct), direct.final["best"]["template"]])
    ours = table[table["source_rank"].notna()]
    source_test = targets.test((source.args["backbone"], shots, seed), list(ours["template"]))
    oracle = rank_correlation(pd.Series(source_test), ours["target_test"].reset_index(drop=True))
    return {
        "direction": f"{source.backbone} -> {target}", "shots": shots, "seed": seed,
        "rho_sel": rho["selection"], "rho_test": rho["test"], "rho_oracle": oracle,
        "win_rank": f"{summary['winner']['target_test_rank']}/{summary['templates']}",
        "winner": summary["winner"]["target"]["test"], "photo": photo, "pool_best": pool, "direct": direct_best,
        "ens3": targets.ensemble_test(key, top3), "direct_ens3": targets.ensemble_test(key, direct_top3),
        "source_winner": summary["winner"]["template"], "direct_winner": direct.final["best"]["template"],
    }


def summarise(df):
    """Per direction and shots, then per direction: means over seeds and the two counts."""
    import pandas as pd

    def stats(part) -> dict:
        pct = lambda col: f"{100 * part[col].mean():.1f}"  # noqa: E731
        beats = lambda col: f"{int((part[col] > part['photo']).sum())}/{len(part)}"  # noqa: E731
        return {"seeds": len(part), "rho sel": f"{part['rho_sel'].mean():+.2f}",
                "rho test": f"{part['rho_test'].mean():+.2f}", "rho oracle": f"{part['rho_oracle'].mean():+.2f}",
                "winner": pct("winner"), "photo": pct("photo"),
                "pool best": pct("pool_best"), "direct": pct("direct"),
                "winner - direct": f"{100 * (part['winner'] - part['direct']).mean():+.1f}",
                "winner > photo": beats("winner"), "ens3": pct("ens3"), "direct ens3": pct("direct_ens3"),
                "ens3 > photo": beats("ens3")}

    by_shots = df.groupby(["direction", "shots"], sort=False)
    rows = [{"direction": d, "shots": s, **stats(part)} for (d, s), part in by_shots]
    rows += [{"direction": d, "shots": "all", **stats(part)} for d, part in df.groupby("direction", sort=False)]
    return pd.DataFrame(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--metric", default=None, help="what the searches rank by [default: the search's default]")
    parser.add_argument("--base-url", default=None,
                        help="a running `promptclimb llm serve` [default: the embedded local LLM, started per search]")
    parser.add_argument("--quality-runs", default=str(ROOT / "runs" / "bench-quality" / "captions"),
                        help="finished `demo` searches of bench_search_quality.py --pool captions to reuse")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench-transfer"))
    parser.add_argument("--csv", default=None, help="also write the per-cell rows here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from promptclimb.agent.ranking import DEFAULT_METRIC, METRICS

    args.metric = args.metric or DEFAULT_METRIC
    if args.metric not in METRICS:
        parser.error(f"--metric must be one of {', '.join(METRICS)}")

    import pandas as pd

    targets, rows = Targets(), []
    for shots in args.shots:
        for seed in args.seeds:
            runs = {b: search_run(b, shots, seed, args) for b in BACKBONES}
            for source, target in (BACKBONES, BACKBONES[::-1]):
                row = cell(runs[source], runs[target], target, shots, seed, targets)
                rows.append(row)
                print(f"{row['direction']:20s} shots {shots} seed {seed}: "
                      f"rho {row['rho_sel']:+.2f}/{row['rho_test']:+.2f}/{row['rho_oracle']:+.2f}"
                      f"  winner {row['winner']:.1%} (rank {row['win_rank']})  photo {row['photo']:.1%}  "
                      f"pool best {row['pool_best']:.1%}  direct {row['direct']:.1%}  ens3 {row['ens3']:.1%}  "
                      f"direct ens3 {row['direct_ens3']:.1%}  [{row['source_winner']} | {row['direct_winner']}]",
                      flush=True)
    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(f"\nfashion-mnist, searches ranked by {args.metric}, test accuracy in % (2,000 held-out images), "
          f"means over seeds {args.seeds}; "
          f"rho = Spearman over every template the source search scored (source train vs target train / test; "
          f"oracle: source test vs target test)")
    print(summarise(df).to_markdown(index=False, disable_numparse=True))


if __name__ == "__main__":
    main()
