"""Scaling out: how much wall time `promptclimb sweep` (Ray) and `--parallel` restarts save
when the LLM is the bottleneck.

    python bench/bench_sweep.py                    # 1 s per LLM answer, 8 cells, 3 restarts
    python bench/bench_sweep.py --latency 0.5 --keep

The LLM is the tests' fake OpenAI-compatible server on 127.0.0.1 (tests/fake_llm.py) with a
fixed latency per answer, so the figures measure the scheduling, not a model; the
evaluator is real (the tests' tiny open_clip model with generated weights, on a generated
ImageFolder). Every search runs with --no-cache (each answer is a request). Three ways:

  1. an 8-cell grid (shots 1, 2 x seeds 1-4) as 8 sequential `promptclimb search` processes,
     then as one `promptclimb sweep` on a local Ray with 2 CPUs (--num-cpus 2, --cpus-per-run
     1); on a bigger machine run it under `taskset -c 0,1` for the same 2 cores;
  2. one search with 3 restarts, sequential (--parallel 1) and --parallel 3.

It checks that each way gives the same results (best template and test accuracy per cell;
best, ensemble and scored templates for the restarts) and prints the ratios. Targets (issue
14): 8 cells on 2 CPUs >= 1.8x faster than sequential, sweep overhead <= 2 s per cell,
--parallel 3 >= 2.5x faster. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

WORDS = ["photo", "clothing", "grayscale", "product", "garment", "studio", "blurry", "tiny", "dark", "bright"]


def responder(body: dict) -> str:
    """Proposals that are a pure function of the request: every way gets the same answers."""
    h = int(hashlib.sha256(json.dumps([body["messages"], body["seed"]]).encode()).hexdigest(), 16)
    return "\n".join(f"a {WORDS[(h >> 4 * i) % 10]} {WORDS[(h >> 4 * i + 24) % 10]} image of a {{}}." for i in range(5))


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """A generated ImageFolder, the tiny open_clip configs and generated weights."""
    from conftest import TINY_CONFIGS, TINY_MODEL, make_image_folder

    images = make_image_folder(work / "images")
    configs = work / "model-configs"
    configs.mkdir(exist_ok=True)
    for name, config in TINY_CONFIGS.items():
        (configs / f"{name}.json").write_text(json.dumps(config))
    os.environ["PROMPTCLIMB_MODEL_CONFIGS"] = str(configs)
    import open_clip
    import torch
    from safetensors.torch import save_file

    from promptclimb.evaluators.backbones import register_model_configs

    register_model_configs(configs)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_MODEL, pretrained=None)
    weights = work / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return images, configs, weights


def timed(command: list[str], env: dict) -> float:
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def same(a, b) -> bool:
    """Equal, numbers to a relative 1e-6: the CLIP evaluator's scores of one template can
    differ in the 7th digit when it is scored in another batch (a matrix product of
    another shape)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def cell_results(folder: Path) -> dict:
    out = {}
    for summary_path in sorted(folder.glob("*/summary.json")):
        s = json.loads(summary_path.read_text())
        out[summary_path.parent.name] = (s["best"], s["ensemble"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per LLM answer")
    parser.add_argument("--resets", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=4, help="LLM answers per conversation")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per shot count (x 2 shot counts = cells)")
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work folder and print where it is")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fake_llm import FakeLLM

    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    images, configs, weights = prepare(work)
    env = {**os.environ, "PROMPTCLIMB_HOME": str(work / "home"), "PROMPTCLIMB_MODEL_CONFIGS": str(configs),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    cli = [sys.executable, "-m", "promptclimb.agent.cli"]
    seeds = list(range(1, args.seeds + 1))
    cells = [(shots, seed) for shots in (1, 2) for seed in seeds]
    answers = args.resets * args.iterations
    cores = len(os.sched_getaffinity(0))
    print(f"fake LLM: {args.latency:g} s per answer; {len(cells)} cells of {answers} answers each; "
          f"{cores} cores usable; load average before: {os.getloadavg()[0]:.1f}")

    with FakeLLM(responder=responder, latency_s=args.latency) as fake:
        common = ["--data-root", str(images), "--backbone", "pc-tiny-vit", "--weights", str(weights), "--device", "cpu",
                  "--llm", "fake", "--base-url", fake.base_url, "--no-cache", "--resets", str(args.resets),
                  "--iterations", str(args.iterations), "--pool-sample", "10"]
        # warm the feature cache once, so that no way pays for it
        timed([*cli, "search", "--dataset", "imagefolder", *common, "--iterations", "1", "--resets", "1",
               "--runs-dir", str(work / "warm")], {**env, "OMP_NUM_THREADS": "1"})

        # 1. sequential processes, then the sweep
        sequential_s = 0.0
        for shots, seed in cells:
            name = f"imagefolder-pc-tiny-vit-{shots}shot-seed{seed}"
            sequential_s += timed([*cli, "search", "--dataset", "imagefolder", "--shots", str(shots), "--seed",
                                   str(seed), *common, "--runs-dir", str(work / "sequential"), "--name", name],
                                  {**env, "OMP_NUM_THREADS": "1"})
        sweep_s = timed([*cli, "sweep", "bench", "--dataset", "imagefolder", "--shots", "1", "--shots", "2",
                         "--seeds", f"1-{args.seeds}", *common, "--runs-dir", str(work / "sweeps"),
                         "--num-cpus", "2", "--cpus-per-run", "1"], env)
        same_cells = same(cell_results(work / "sequential"), cell_results(work / "sweeps" / "bench"))

        # 2. restarts, one after another and 3 at a time
        restarts = {}
        for parallel in (1, 3):
            run = work / "restarts" / f"parallel{parallel}"
            wall = timed([*cli, "search", "--dataset", "imagefolder", "--shots", "2", "--seed", "1", *common,
                          "--restarts", str(args.restarts), "--parallel", str(parallel),
                          "--runs-dir", str(run.parent), "--name", run.name], {**env, "OMP_NUM_THREADS": "1"})
            summary = json.loads((run / "summary.json").read_text())
            scored = sorted(json.loads(line)["template"] for line in (run / "history.jsonl").read_text().splitlines()
                            if json.loads(line)["event"] == "score")
            restarts[parallel] = {"wall": wall, "search": summary["timings"]["session_wall_s"],
                                  "result": (summary["best"], summary["ensemble"], scored)}

    per_cell = sequential_s / len(cells)
    overhead = (sweep_s - sequential_s / 2) / (len(cells) / 2)  # per cell, over 2 CPUs each running 4 in a row
    print(f"\n1. {len(cells)} cells")
    print(f"   sequential `promptclimb search` processes: {sequential_s:7.1f} s  ({per_cell:.1f} s per cell)")
    print(f"   `promptclimb sweep`, local Ray, 2 CPUs:    {sweep_s:7.1f} s")
    print(f"   speed-up: {sequential_s / sweep_s:.2f}x (target >= 1.8x); sweep overhead per cell over a "
          f"standalone search: {overhead:+.1f} s (target <= 2 s); same best and ensemble per cell "
          f"(numbers to 1e-6): {same_cells}")
    seq, par = restarts[1], restarts[3]
    print(f"\n2. one search, {args.restarts} restarts x {answers} answers")
    print(f"   --parallel 1: {seq['wall']:6.1f} s (search loop {seq['search']:.1f} s)")
    print(f"   --parallel 3: {par['wall']:6.1f} s (search loop {par['search']:.1f} s)")
    print(f"   speed-up: {seq['wall'] / par['wall']:.2f}x whole command, {seq['search'] / par['search']:.2f}x "
          f"search loop (target >= 2.5x); same best, ensemble and scored templates (numbers to 1e-6): "
          f"{same(seq['result'], par['result'])}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    if args.keep:
        print(f"work folder: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
