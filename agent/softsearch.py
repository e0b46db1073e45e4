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

import time
from dataclasses import asdict
from pathlib import Path

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import markdown_text, pct, pct_by_split, shell_command, shots_said
from promptclimb.agent.core.runfiles import CURVE, FORMAT_VERSION, SOFT_PROMPT_FILE, STATE_FILE
from promptclimb.agent.core.settings import SOFT_OPTIMIZERS, SoftPromptConfig
from promptclimb.agent.runs.store import run_argument

MODULES = {"craft": "residual-logits (CraFT's prediction refinement)", "cbbt": "feature-residual (CBBT's adapter)"}


def is_soft_prompt_run(config: dict) -> bool:
    return config.get("optimizer") in SOFT_OPTIMIZERS


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
                  f"{event['queries']}/{self.config.queries}  prompt: train {pct(prompt['train'])} val {pct(prompt['val'])}")

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
        self.echo(f"best: {best['template']}  " + pct_by_split(acc))
        self.echo(f"with {adapter['kind']}: " + pct_by_split(adapter["accuracy"])
                  + f"  ({'kept' if adapter['beats_prompt_on_val'] else 'not kept'}: val)")
        # as the LLM search says it (agent/pipeline.py): the bare name only finds a run under ./runs
        self.echo(f"plot: {path}\nrun folder: {self.store.run_dir}   "
                  f"(read it with: {shell_command('show', run_argument(self.store.run_dir))})")
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


# said where a finished soft-prompt run whose history.jsonl was lost would show its steps
STEPS_LOST = "its steps one by one were lost with history.jsonl"


def steps_shown(rows: list[dict]) -> list[dict]:
    """About ten of `steps_table`'s rows, evenly spaced, the first and the last always: the
    table `show` prints and the report's."""
    every = max(1, (len(rows) - 1) // 10)
    return rows[::every] + ([rows[-1]] if rows and (len(rows) - 1) % every else [])


def plot_soft_curve(run_dir: str | Path) -> Path:
    """curve.png of a soft-prompt run: the current prompt's accuracy against queries used."""
    from promptclimb.agent.runs.plots import new_figure, save_figure
    from promptclimb.agent.runs.run import load_run
    from matplotlib.ticker import PercentFormatter

    run = load_run(run_dir)
    rows = steps_table(run.events)
    x = [r["queries"] for r in rows]
    fig, ax = new_figure(figsize=(11, 5), dpi=120)
    ax.plot(x, [r["train"] for r in rows], color="#1b4f72", lw=2, label="current prompt, train")
    ax.plot(x, [r["val"] for r in rows], color="#2e86de", lw=1.5, ls="--", label="current prompt, val")
    if any(r["population_best"] is not None for r in rows):
        ax.scatter(x[1:], [r["population_best"] for r in rows[1:]], s=8, color="#9aa5b1",
                   label="best of the CMA-ES population, train")
    if any(r["val_refined"] is not None for r in rows):
        ax.plot(x[1:], [r["val_refined"] for r in rows[1:]], color="#c0392b", lw=1, label="with the refinement, val")
    optimizer = run.config.get("optimizer")
    ax.set_title(f"{run.id}: {optimizer} soft prompt ({run.dataset}, {shots_said(run.args.get('shots'))})")
    ax.set_xlabel("queries (prompts scored on the train split)")
    ax.set_ylabel("accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, run.path / CURVE)


def soft_prompt_lines(run, markdown: bool = False) -> list[str]:
    """What `promptclimb show` prints of a soft-prompt run after its winners table (with
    `markdown`: a section of list items and a table, its free text escaped)."""
    final = run.final or {}
    title = f"Soft prompt ({run.config.get('optimizer')}; it needs the text tower's token embeddings)"
    lines = [f"\n## {title}\n" if markdown else f"\n{title}"]
    item, literal = ("- ", markdown_text) if markdown else ("  ", lambda text: text)
    soft = final.get("soft_prompt")
    if soft:
        lines.append(f"{item}{soft['tokens']} vectors in {literal(soft['file'])}, started from "
                     f"{literal(repr(soft['init']))}; nearest tokens: {literal(repr(' '.join(soft['nearest_tokens'])))} "
                     "(a readable hint: these words do not score the same)")
    adapter = final.get("adapter")
    if adapter:
        acc = pct_by_split(adapter["accuracy"])
        verdict = "kept: it beat the prompt alone on val" if adapter["beats_prompt_on_val"] else \
            "not kept: it did not beat the prompt alone on val"
        lines.append(f"{item}with {MODULES.get(run.config.get('optimizer'), adapter['kind'])}: {acc}  ({verdict})")
    rows = steps_table(run.events)
    lines.append(f"{item}{spent_said(run)}")
    if not rows:  # a finished run whose history was lost: no table of nothing
        return lines + [f"{item}{STEPS_LOST}"]
    shown = [(r["step"], r["queries"], pct(r["train"]), pct(r["val"])) for r in steps_shown(rows)]
    if markdown:  # a table of its own: lines in a row would run into the list's last item
        lines += ["", "| step | queries | train | val |", "|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join(map(str, row)) + " |" for row in shown]
    else:
        lines.append("  step  queries   train     val")
        lines += [f"  {step:>4}  {queries:>7}  {train:>6}  {val:>6}" for step, queries, train, val in shown]
    return lines


def spent_said(run) -> str:
    """What a soft-prompt run spent, by its steps table: its steps (the first row is the
    starting prompt's) and its queries, of its budget (`show`'s headline and its section).
    A finished run whose history was lost: as its summary.json counted them."""
    rows = steps_table(run.events)
    budget = (run.config.get("soft_prompt") or {}).get("queries")
    if rows:
        steps, queries = len(rows) - 1, rows[-1]["queries"]
    else:
        counts = (run.final or {}).get("counts")
        counts = counts if isinstance(counts, dict) else {}
        steps, queries = counts.get("steps", 0), counts.get("queries", 0)
    return f"{steps} step{'' if steps == 1 else 's'}, {queries} of {budget} queries"


def template_refusal(run_dir: Path, config: dict, command: str) -> str:
    """Why a command that works on a run's best text template cannot use a soft-prompt run
    (the commands it names find the run from where the user is: `run_argument`)."""
    from promptclimb.agent.runs.store import run_argument

    run_id, run = Path(run_dir).name, run_argument(run_dir)
    show, score = shell_command("show", run), shell_command("eval", "--run", run, "--prompt", "TEMPLATE")
    return (f"run {run_id} learned a soft prompt ({config.get('optimizer')}), not a text template, so `promptclimb "
            f"{command}` has nothing to work on. `{show}` has its accuracies (and those of the output-side module "
            f"its optimizer trained); `{score}` scores templates of your own on its split.")


def transfer_refusal(run) -> str:
    return (f"run {run.id} learned a soft prompt ({run.config.get('optimizer')}): its vectors live in the token-embedding "
            f"space of {run.backbone}'s text tower, which another backbone does not share, so it cannot be carried "
            "over (to its own backbone, `show` has its figures). Text templates can (that is the LLM search's "
            "advantage); run the soft-prompt search again on the other backbone instead.")
