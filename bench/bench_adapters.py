"""Test accuracy of the best prompt alone and with each output-side adapter, on the embedded demo.

    python bench/bench_adapters.py                       # fashion-mnist, demo backbone, shots 1 4 16, seeds 1 2 3
    python bench/bench_adapters.py --shots 4 --seeds 1 --kinds cache
    python bench/bench_adapters.py --run runs/RUN_ID     # the run's own prompt, shots and seed

"The best prompt" (no LLM needed): per (shots, seed), the template of the initial pool
(agent.pools.load_pool: our general pool, the dataset's pool, OpenAI's 80 ImageNet
templates) with the highest train accuracy, ties to the lower train cross-entropy, as the
search ranks its initial pool. With --run, the run's best template instead (its summary.json).

Each adapter picks its hyper-parameters on val (evaluators.adapters.select_and_fit); test is
only measured. Prints one markdown table: mean +- standard deviation over seeds of test
accuracy (%), each adapter's size in bytes (what it adds to the prompt: its saved tensors),
and how many seeds it beat the prompt on val (the tool's rule for keeping it).
Image features are cached (PROMPTCLIMB_HOME), so a second run is fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path



def best_pool_template(evaluator, dataset: str) -> str:
    from promptclimb.agent.core.pools import load_pool

    templates = [p.template for p in load_pool(dataset)]
    scores = evaluator.score(templates, splits=("train",))
    ranked = sorted(zip(templates, scores), key=lambda ts: (-ts[1].accuracy["train"], ts[1].loss["train"]))
    return ranked[0][0]


def bench_one(dataset, shots, seed, backbone, kinds, template=None, data_root=None) -> list[dict]:
    from promptclimb.evaluators import build_evaluator
    from promptclimb.evaluators.adapters import select_and_fit

    evaluator = build_evaluator(dataset, shots, seed, backbone, data_root=data_root)
    template = template or best_pool_template(evaluator, dataset)
    class_embeddings = evaluator.class_embeddings([template])
    splits = {s: evaluator.image_features(s) for s in ("train", "val", "test")}
    rows = []
    for kind in kinds:
        fit = select_and_fit(kind, splits["train"], splits["val"], class_embeddings, evaluator.logit_scale,
                             seed=seed, test=splits["test"])
        if not rows:
            rows.append({"shots": shots, "seed": seed, "method": "prompt only", "template": template,
                         "test": fit.prompt_accuracy["test"], "val": fit.prompt_accuracy["val"],
                         "size_bytes": 0, "beats_val": None, "fit_s": 0.0})
        rows.append({"shots": shots, "seed": seed, "method": kind, "template": template,
                     "test": fit.accuracy["test"], "val": fit.accuracy["val"], "size_bytes": fit.size_bytes,
                     "beats_val": fit.beats_prompt_on_val, "fit_s": fit.fit_s, "hparams": fit.hparams})
    return rows


def table(rows: list[dict]):
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["test"] *= 100
    methods = list(dict.fromkeys(frame["method"]))
    out = []
    for (shots, method), g in frame.groupby(["shots", "method"], sort=False):
        beats = g["beats_val"].dropna()
        out.append({
            "shots": shots, "method": method,
            "test acc % (mean ± sd)": f"{g['test'].mean():.2f} ± {g['test'].std(ddof=1) if len(g) > 1 else 0:.2f}",
            "per seed": " / ".join(f"{v:.1f}" for v in g["test"]),
            "size (bytes)": int(g["size_bytes"].mean()),
            "beat prompt on val": f"{int(beats.sum())}/{len(beats)}" if len(beats) else "-",
            "fit (s)": round(float(g["fit_s"].mean()), 2),
        })
    result = pd.DataFrame(out)
    result["method"] = pd.Categorical(result["method"], methods, ordered=True)
    return result.sort_values(["shots", "method"]).reset_index(drop=True)


def main(argv=None) -> None:
    from promptclimb.evaluators.adapters import ADAPTERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--backbone", default="demo")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--kinds", nargs="+", default=list(ADAPTERS), choices=list(ADAPTERS))
    parser.add_argument("--run", default=None, help="use this run folder's dataset, shots, seed and best template")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # thin-val warnings etc.; the table says what matters
    started = time.perf_counter()
    rows = []
    if args.run:
        run = Path(args.run)
        config = json.loads((run / "config.json").read_text())["evaluator_args"]
        summary = json.loads((run / "summary.json").read_text())
        rows += bench_one(config["dataset"], config["shots"], config["seed"], config["backbone"], args.kinds,
                          template=summary["best"]["template"], data_root=config.get("data_root"))
    else:
        for shots in args.shots:
            for seed in args.seeds:
                rows += bench_one(args.dataset, shots, seed, args.backbone, args.kinds, data_root=args.data_root)
                print(f"shots {shots} seed {seed}: " + ", ".join(
                    f"{r['method']} {100 * r['test']:.1f}%" for r in rows[-len(args.kinds) - 1:])
                    + f"  [{rows[-1]['template']}]", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"\n{args.dataset}, backbone {args.backbone}, seeds {args.seeds if not args.run else args.run}; "
          f"test accuracy of the best pool template alone and with each adapter "
          f"(hyper-parameters chosen on val); {time.perf_counter() - started:.0f} s in all\n")
    print(table(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
