"""The soft-prompt search: `promptclimb search --optimizer craft|cbbt`, the seed papers' own
prompt optimizers beside the LLM, on the same model, split, budget and run folder.

    optimizer = CraFT (CMA-ES) or CBBT (zeroth-order gradient)   evaluators/softprompt.py
    record step 0: the initial prompt ("a photo of a" as vectors)
    while queries left:                    one query = one prompt scored on the train split
        step  (a CMA-ES generation / a gradient step)
        append its numbers to history.jsonl, then save the optimizer's state
    final prompt: train / val / test accuracy, soft_prompt.safetensors, nearest tokens
    output-side module on it (CraFT's refinement, trained along; CBBT's feature adapter),
    kept as the result only when it beats the prompt alone on val

This module knows settings, events and files; the optimizers (torch, pycma) live in
evaluators/softprompt.py and are imported only when a search runs. Resume: the state file
is written after each step's event, so a killed run reloads the last state, walks the
history up to that step and goes on; the remaining steps are computed as an uninterrupted
run computes them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import click

from promptclimb.agent.errors import PromptclimbError
from promptclimb.agent.runstore import FORMAT_VERSION

SOFT_OPTIMIZERS = ("craft", "cbbt")
OPTIMIZERS = ("llm", *SOFT_OPTIMIZERS)
STATE_FILE = "optimizer_state.pt"
SOFT_PROMPT_FILE = "soft_prompt.safetensors"  # the prompt: tensor "context" [tokens, width]
CURVE = "curve.png"
MODULES = {"craft": "residual-logits (CraFT's prediction refinement)", "cbbt": "feature-residual (CBBT's adapter)"}


@dataclass
class SoftPromptConfig:
    """Every knob of the soft-prompt search; the defaults are the papers' (CraFT's EuroSAT
    configuration; CBBT's Adam learning rate and 256 directions)."""

    optimizer: str = "craft"
    queries: int = 8000  # prompts scored on the train split by the optimizer
    seed: int = 0
    prompt_tokens: int = 4
    prompt_init: str = "a photo of a"  # the context starts as these words' token embeddings
    craft_popsize: int = 40
    craft_sigma: float = 0.02
    craft_bound: float = 5.0
    craft_intrinsic_dim: int = 512
    craft_lr: float = 0.001  # the refinement module's Adam
    craft_kl_weight: float = 0.01
    cbbt_lr: float = 0.002
    cbbt_directions: int = 256  # perturbed prompts per gradient estimate

    @property
    def queries_per_step(self) -> int:
        return self.craft_popsize if self.optimizer == "craft" else self.cbbt_directions + 1

    @property
    def steps(self) -> int:
        return self.queries // self.queries_per_step

    def check(self) -> "SoftPromptConfig":
        if self.optimizer not in SOFT_OPTIMIZERS:
            raise PromptclimbError(f"soft-prompt optimizer must be one of {', '.join(SOFT_OPTIMIZERS)}, not {self.optimizer!r}")
        for name in ("prompt_tokens", "craft_intrinsic_dim", "cbbt_directions"):
            if getattr(self, name) < 1:
                raise PromptclimbError(f"--{name.replace('_', '-')} must be at least 1")
        if self.craft_popsize < 2:
            raise PromptclimbError("--craft-popsize must be at least 2 (CMA-ES ranks a population)")
        for name in ("craft_sigma", "craft_bound", "craft_lr", "cbbt_lr"):
            if not getattr(self, name) > 0:
                raise PromptclimbError(f"--{name.replace('_', '-')} must be positive")
        if self.craft_kl_weight < 0:
            raise PromptclimbError("--craft-kl-weight must not be negative")
        if self.steps < 1:
            knob = "--craft-popsize" if self.optimizer == "craft" else "--cbbt-directions"
            raise PromptclimbError(f"--queries {self.queries} buys no {self.optimizer} step: each step scores "
                                   f"{self.queries_per_step} prompts; raise --queries or lower {knob}")
        return self


DEFAULTS = SoftPromptConfig()
_OPTIONS = [
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="llm",
                 help="Who writes the prompts: llm (text templates from a chat LLM; text access to the model), "
                      "craft (CraFT: CMA-ES soft prompt + prediction refinement) or cbbt (CBBT: zeroth-order "
                      "gradient soft prompt + feature adapter); craft and cbbt need the text tower's embeddings."),
    click.option("--queries", type=int, default=None,
                 help=f"craft/cbbt budget: prompts scored on the train split [default: {DEFAULTS.queries}]."),
    click.option("--prompt-tokens", type=int, default=DEFAULTS.prompt_tokens,
                 help="craft/cbbt: context vectors before the class name (\"X X X X {class}.\")."),
    click.option("--prompt-init", default=DEFAULTS.prompt_init,
                 help="craft/cbbt: the words (--prompt-tokens tokens) whose embeddings the context starts from."),
    click.option("--craft-popsize", type=int, default=DEFAULTS.craft_popsize, help="craft: CMA-ES population size."),
    click.option("--craft-sigma", type=float, default=DEFAULTS.craft_sigma, help="craft: CMA-ES initial step size."),
    click.option("--craft-bound", type=float, default=DEFAULTS.craft_bound,
                 help="craft: CMA-ES box bound on each coordinate of the intrinsic vector."),
    click.option("--craft-intrinsic-dim", type=int, default=DEFAULTS.craft_intrinsic_dim,
                 help="craft: dimension of the vector CMA-ES searches (randomly projected onto the context)."),
    click.option("--craft-lr", type=float, default=DEFAULTS.craft_lr, help="craft: Adam learning rate of the refinement module."),
    click.option("--craft-kl-weight", type=float, default=DEFAULTS.craft_kl_weight,
                 help="craft: weight of the KL term tying the refinement and the prompt's predictions."),
    click.option("--cbbt-lr", type=float, default=DEFAULTS.cbbt_lr, help="cbbt: Adam learning rate of the soft prompt."),
    click.option("--cbbt-directions", type=int, default=DEFAULTS.cbbt_directions,
                 help="cbbt: perturbed prompts per gradient estimate (each step costs this + 1 queries)."),
]


def soft_prompt_options(command):
    """The search command's options of this module (applied as one decorator)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def config_from_options(opts: dict) -> SoftPromptConfig:
    names = {f.name for f in fields(SoftPromptConfig)}
    given = {k: v for k, v in opts.items() if k in names and v is not None}
    return SoftPromptConfig(**given).check()


def is_soft_prompt_run(config: dict) -> bool:
    return config.get("optimizer") in SOFT_OPTIMIZERS


def soft_prompt_search_wanted(opts: dict) -> bool:
    """Whether `promptclimb search` runs a soft-prompt search: --optimizer craft|cbbt, or
    --resume of such a run. Refuses the soft-prompt budget on an LLM search."""
    if opts.get("resume"):
        from promptclimb.agent.reading import find_run, read_json

        run_dir = find_run(opts["resume"], Path(opts.get("runs_dir") or "runs"))
        return is_soft_prompt_run(read_json(run_dir / "config.json"))  # the one reader: damage is one line
    if opts.get("optimizer", "llm") != "llm":
        return True
    if opts.get("queries") is not None:
        raise PromptclimbError("--queries is the budget of --optimizer craft|cbbt; the LLM search is budgeted by "
                               "--restarts x --resets x --iterations, --max-calls and --max-tokens")
    return False


def run_soft_prompt_search(opts: dict, echo) -> dict:
    """`promptclimb search --optimizer craft|cbbt` (or --resume of such a run): the summary."""
    from promptclimb.agent.cmd_search import build_evaluator, default_backbone, new_run_store, package_versions
    from promptclimb.agent.reading import find_run
    from promptclimb.agent.runstore import RunStore

    runs_dir = Path(opts["runs_dir"])
    store = None
    if opts["resume"]:
        store = RunStore.resume(find_run(opts["resume"], runs_dir))
        config = SoftPromptConfig(**store.config["soft_prompt"]).check()
        evaluator_args = store.config["evaluator_args"]
        echo(f"resuming {store.run_dir} ({len(store.stored)} events recorded)")
    else:
        if not opts["dataset"]:
            raise PromptclimbError("--dataset is required (or --resume RUN)")
        config = config_from_options(opts)
        backbone, pretrained = default_backbone(opts["dataset"], opts["backbone"], opts["pretrained"], opts["weights"])
        evaluator_args = {"dataset": opts["dataset"], "shots": opts["shots"], "seed": opts["seed"], "backbone": backbone,
                          "pretrained": pretrained, "weights": opts["weights"], "data_root": opts["data_root"],
                          "precision": opts.get("precision")}
    try:
        from promptclimb.evaluators.softprompt import build_optimizer  # torch, pycma: only now

        evaluator = build_evaluator(**evaluator_args, device=opts["device"])
        optimizer = build_optimizer(evaluator, config)  # a bad --prompt-init is refused before a run folder exists
        if store is None:
            store = new_run_store(runs_dir, opts["run_name"], opts["dataset"], opts["shots"], {
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "optimizer": config.optimizer,
                "soft_prompt": asdict(config), "evaluator_args": evaluator_args, "evaluator": evaluator.info(),
                "versions": package_versions(),
            })
            echo(f"run folder: {store.run_dir}")
        try:
            return SoftPromptSearch(evaluator, optimizer, store, config, echo).run()
        except (KeyboardInterrupt, SystemExit):
            echo(f"interrupted; continue with: promptclimb search --resume {store.run_dir}")
            raise
    finally:
        if store is not None:
            store.close()


class SoftPromptSearch:
    """Runs one soft-prompt optimizer step by step into a run folder (see the module's story)."""

    def __init__(self, evaluator, optimizer, store, config: SoftPromptConfig, echo=print):
        self.evaluator, self.optimizer, self.store, self.config, self.echo = evaluator, optimizer, store, config, echo

    def run(self) -> dict:
        from promptclimb.evaluators.softprompt import load_state, save_state

        started = (time.time(), time.process_time())
        optimizer = self.optimizer
        state_file = self.store.run_dir / STATE_FILE
        self.store.append("run_start", run_id=self.store.run_dir.name)
        if self.store.stored and state_file.exists():
            self.walk_history_to(load_state(state_file, optimizer))
        if optimizer.step_count == 0:
            self.record(optimizer.start_record())
        while not optimizer.done:
            self.record(optimizer.step())
            save_state(state_file, optimizer)  # after the event: a state is never ahead of the history
        return self.finish(optimizer, started)

    def record(self, record: dict) -> None:
        event = self.store.append("step", iteration=record.pop("step"), **record)
        prompt = event["prompt"]["accuracy"]
        self.echo(f"[{self.config.optimizer} step {event['iteration']}/{self.config.steps}] queries "
                  f"{event['queries']}/{self.config.queries}  prompt: train {prompt['train']:.1%} val {prompt['val']:.1%}")

    def walk_history_to(self, step: int) -> None:
        """Re-walk the recorded events up to `step`, the step the saved state is at."""
        for event in self.store.stored[len(self.store.events):]:
            self.store.append(event["event"], **{k: v for k, v in event.items() if k not in ("v", "seq", "time", "event")})
            if event["event"] == "step" and event.get("iteration") == step:
                return
        raise PromptclimbError(f"{self.store.run_dir}: {STATE_FILE} is at step {step}, which the history does not "
                               f"hold; delete {STATE_FILE} to resume from the start of the history")

    def finish(self, optimizer, started: tuple[float, float]) -> dict:
        result = optimizer.finish(self.store.run_dir, self.evaluator.image_features("test"), self.config.seed)
        score = result["score"]
        nearest = " ".join(result["nearest_tokens"])
        best = {"template": f"<soft: {nearest}> {{class}}.", "origin": self.config.optimizer,
                "accuracy": score.accuracy, "loss": score.loss, "prob": score.prob}
        soft_prompt = {"file": SOFT_PROMPT_FILE, "tokens": self.config.prompt_tokens,
                       "init": self.config.prompt_init, "nearest_tokens": result["nearest_tokens"],
                       "access": "token embeddings of the text tower"}
        final = self.store.append("final", stopped="completed", best=best, ensemble=None, top=[best],
                                  adapter=result["adapter"], soft_prompt=soft_prompt)
        summary = {
            "v": FORMAT_VERSION, "run_id": self.store.run_dir.name, "dataset": self.evaluator.task.dataset,
            "optimizer": self.config.optimizer, "select": "train", "stopped": final["stopped"],
            "winner": "best", "best": final["best"], "ensemble": None, "top": final["top"],
            "adapter": final["adapter"], "soft_prompt": final["soft_prompt"],
            "counts": {"queries": optimizer.queries, "steps": optimizer.step_count, "budget": self.config.queries},
            "timings": {"session_wall_s": round(time.time() - started[0], 3),
                        "session_cpu_s": round(time.process_time() - started[1], 3)},  # all threads
            "config": asdict(self.config),
        }
        self.store.write_json("summary.json", summary)
        path = plot_soft_curve(self.store.run_dir)
        acc, adapter = best["accuracy"], final["adapter"]
        self.echo(f"best: {best['template']}  " + "  ".join(f"{k} {v:.1%}" for k, v in acc.items()))
        self.echo(f"with {adapter['kind']}: " + "  ".join(f"{k} {v:.1%}" for k, v in adapter["accuracy"].items())
                  + f"  ({'kept' if adapter['beats_prompt_on_val'] else 'not kept'}: val)")
        self.echo(f"plot: {path}\nrun folder: {self.store.run_dir}   (read it with: promptclimb show {self.store.run_dir.name})")
        return summary


# ---------------------------------------------------------------- reading a soft-prompt run


def steps_table(events: list[dict]) -> list[dict]:
    """One row per recorded step: queries, the current prompt's train/val accuracy (and
    CraFT's population best and refined val accuracy)."""
    rows = []
    for e in events:
        if e["event"] != "step":
            continue
        acc = e["prompt"]["accuracy"]
        rows.append({"step": e["iteration"], "queries": e["queries"], "train": acc["train"], "val": acc["val"],
                     "val_refined": acc.get("val_refined"),
                     "population_best": (e.get("population") or {}).get("train_accuracy_best")})
    return rows


def plot_soft_curve(run_dir: str | Path) -> Path:
    """curve.png of a soft-prompt run: the current prompt's accuracy against queries used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    from promptclimb.agent.reading import load_run

    run = load_run(run_dir)
    rows = steps_table(run.events)
    x = [r["queries"] for r in rows]
    fig, ax = plt.subplots(figsize=(11, 5), dpi=120)
    ax.plot(x, [r["train"] for r in rows], color="#1b4f72", lw=2, label="current prompt, train")
    ax.plot(x, [r["val"] for r in rows], color="#2e86de", lw=1.5, ls="--", label="current prompt, val")
    if any(r["population_best"] is not None for r in rows):
        ax.scatter(x[1:], [r["population_best"] for r in rows[1:]], s=8, color="#9aa5b1",
                   label="best of the CMA-ES population, train")
    if any(r["val_refined"] is not None for r in rows):
        ax.plot(x[1:], [r["val_refined"] for r in rows[1:]], color="#c0392b", lw=1, label="with the refinement, val")
    optimizer = run.config.get("optimizer")
    ax.set_title(f"{run.id}: {optimizer} soft prompt ({run.dataset}, {run.args.get('shots')} shots)")
    ax.set_xlabel("queries (prompts scored on the train split)")
    ax.set_ylabel("accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path = run.path / CURVE
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def soft_prompt_lines(run) -> list[str]:
    """What `promptclimb show` prints of a soft-prompt run after its winners table."""
    final = run.final or {}
    config = run.config.get("soft_prompt") or {}
    lines = [f"\nSoft prompt ({run.config.get('optimizer')}; it needs the text tower's token embeddings)"]
    soft = final.get("soft_prompt")
    if soft:
        lines.append(f"  {soft['tokens']} vectors in {soft['file']}, started from {soft['init']!r}; nearest tokens: "
                     f"{' '.join(soft['nearest_tokens'])!r} (a readable hint: these words do not score the same)")
    adapter = final.get("adapter")
    if adapter:
        acc = "  ".join(f"{k} {v:.1%}" for k, v in adapter["accuracy"].items())
        verdict = "kept: it beat the prompt alone on val" if adapter["beats_prompt_on_val"] else "not kept (val)"
        lines.append(f"  with {MODULES.get(run.config.get('optimizer'), adapter['kind'])}: {acc}  ({verdict})")
    rows = steps_table(run.events)
    budget = config.get("queries")
    lines.append(f"  {len(rows) - 1 if rows else 0} steps, {rows[-1]['queries'] if rows else 0} of {budget} queries")
    every = max(1, (len(rows) - 1) // 10)
    lines.append("  step  queries   train     val")
    for r in rows[::every] + ([rows[-1]] if rows and (len(rows) - 1) % every else []):
        lines.append(f"  {r['step']:>4}  {r['queries']:>7}  {r['train']:6.1%}  {r['val']:6.1%}")
    return lines


def template_refusal(run_id: str, config: dict, command: str) -> str:
    """Why a command that works on a run's best text template cannot use a soft-prompt run."""
    return (f"run {run_id} learned a soft prompt ({config.get('optimizer')}), not a text template, so `promptclimb "
            f"{command}` has nothing to work on. `promptclimb show {run_id}` has its accuracies (and the adapter its "
            f"search fitted, with --adapter); `promptclimb eval --run {run_id} --prompt TEMPLATE` scores templates of "
            "your own on its split.")


def transfer_refusal(run) -> str:
    return (f"run {run.id} learned a soft prompt ({run.config.get('optimizer')}): its vectors live in the token-embedding "
            f"space of {run.backbone}'s text tower, which another backbone does not share, so it cannot be carried "
            "over. Text templates can (that is the LLM search's advantage); run the soft-prompt search again on the "
            "other backbone instead.")
