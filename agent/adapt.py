"""Output-side adapters on a finished run's winning prompt: fit (`fit_run_adapter`, after a
search with --adapter or by `promptclimb adapt`) and measure (`eval_run_adapter`, for
`promptclimb eval --run RUN --with-adapter`).

The adapter is fit on the run's few-shot train split, its hyper-parameters chosen on val
(evaluators/adapters.py), and its test accuracy only measured. It is written to
`RUN/adapter.pt`, and `summary.json` gets an "adapter" section. If it does not beat the
prompt alone on val, the run's result stays the prompt-only one (`summary.json`
"adapter.result" = "prompt-only"; "best" is never changed). The CLIP side (torch) is
imported only inside the functions.
"""


from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import write_json_atomic
from promptclimb.agent.core.format import pct, shell_command
from promptclimb.agent.core.classnames import names_by_label
from promptclimb.agent.runs.store import writing_now
from promptclimb.agent.runs.reading import check_config, read_json, read_summary
from promptclimb.agent.runs.recorded import (run_classnames, run_labels, run_names_by_label, run_start_names,
                                          start_names_as_built)
from promptclimb.agent.core.runfiles import CONFIG, SUMMARY
from promptclimb.agent.softsearch import is_soft_prompt_run, template_refusal

# The kinds of evaluators.adapters.ADAPTERS, listed here so that `--help` and the check of
# --kind need no torch (tests/test_adapters.py checks the two lists agree).
ADAPTER_KINDS = ("residual-logits", "feature-residual", "cache")
from promptclimb.agent.core.runfiles import ADAPTER_FILE


def check_kinds(kinds) -> list[str]:
    """The kinds asked for, with "all" expanded; an unknown one is a clear error."""
    out: list[str] = []
    for kind in kinds:
        for k in (ADAPTER_KINDS if kind == "all" else (kind,)):
            if k not in ADAPTER_KINDS:
                raise PromptclimbError(f"unknown adapter kind {k!r}; known kinds: {', '.join(ADAPTER_KINDS)} (or all)")
            if k not in out:
                out.append(k)
    if not out:
        raise PromptclimbError(f"no adapter kind given; known kinds: {', '.join(ADAPTER_KINDS)} (or all)")
    return out


def read_run(run_dir: Path, command: str | None = None) -> tuple[dict, dict]:
    """(config, summary) of a finished run (a damaged file: one line naming it). With
    `command` (what the user ran), a soft-prompt run is refused: it has no template."""
    config = read_json(run_dir / CONFIG)
    check_config(config, run_dir / CONFIG)
    if command and is_soft_prompt_run(config):
        raise PromptclimbError(template_refusal(run_dir, config, command))
    summary = read_summary(run_dir)
    writer = writing_now(run_dir) if summary is None else ""
    if writer:
        raise PromptclimbError(f"{run_dir} has no {SUMMARY} yet: it is {writer}")
    if summary is None:
        held = "an empty" if (run_dir / SUMMARY).exists() else "no"
        raise PromptclimbError(f"{run_dir} has {held} {SUMMARY}: the search has not finished "
                               f"(finish it with: {shell_command('search', '--resume', run_dir)})")
    return config, summary


def run_templates(summary: dict, on: str) -> list[str]:
    if on == "ensemble":
        ensemble = summary.get("ensemble")
        if not ensemble:
            raise PromptclimbError("this run has no ensemble (it was searched with --ensemble 0 or 1); use --on best")
        return list(ensemble["templates"])
    return [summary["best"]["template"]]


def check_run_data(run_dir: Path, config: dict, data_root: str | None, *command) -> None:
    """PromptclimbError where the data folder a run recorded is gone and no --data-root says
    where it is now: `data folder X does not exist` named no way on. `command`: the words of
    the command that goes on, given it (`shell_command`)."""
    recorded = (config.get("evaluator_args") or {}).get("data_root")
    if data_root is None and recorded and not Path(recorded).exists():
        raise PromptclimbError(f"{Path(run_dir).name}'s data folder {recorded} does not exist: moved, give where it "
                               f"is now: {shell_command(*command, '--data-root', 'DIR')}")


def build_run_evaluator(config: dict, device: str | None = None, **overrides):
    """The run's evaluator (same dataset, split, backbone), or one with some settings
    replaced (e.g. another --data-root holding new images of the same classes)."""
    from promptclimb.evaluators import build_evaluator  # torch: only now

    args = dict(config.get("evaluator_args") or {})
    if not args.get("dataset"):
        raise PromptclimbError("config.json has no evaluator_args; this run cannot be re-evaluated")
    start = start_names_as_built(config)  # as a resume builds it
    if start:
        args["classnames"] = start
    args.update({k: v for k, v in overrides.items() if v is not None})
    return build_evaluator(**args, device=device)


def fit_run_adapter(run_dir: str | Path, kinds, on: str = "best", seed: int | None = None, evaluator=None,
                    device: str | None = None, echo=print, data_root: str | None = None) -> dict:
    """Fit each kind on the run's train split (hyper-parameters on val), keep the best on
    val as RUN/adapter.pt and record it in summary.json. Returns the "adapter" section.
    `data_root`: where the run's data folder is now, when it has moved."""
    from promptclimb.evaluators.adapters import save_adapter, select_and_fit

    kinds = check_kinds(kinds)
    run_dir = Path(run_dir)
    config, summary = read_run(run_dir)
    templates = run_templates(summary, on)
    if evaluator is None:
        echo(f"loading the evaluator of {run_dir.name} ...")
        evaluator = build_run_evaluator(config, device=device, data_root=data_root)
        from promptclimb.agent.runs.recorded import check_class_order, images_drawn_otherwise, splits_drawn_otherwise

        check_class_order(run_dir, config, evaluator.info())  # the run's names below are in its class order
        changed = splits_drawn_otherwise(config, evaluator.info().get("split") or {})
        if changed:  # it warned, then wrote the fit on other images into the run as its result
            raise PromptclimbError(f"cannot fit {run_dir.name}'s adapter: {images_drawn_otherwise(run_dir, changed)}; "
                                   "the adapter would be kept as the run's result: put its data back as it was, or "
                                   "score other data with: promptclimb eval --run")
    seed = int(config.get("evaluator_args", {}).get("seed", 0) if seed is None else seed)
    names = run_classnames(summary)  # the names the run found travel with its templates
    class_embeddings = evaluator.class_embeddings(templates, classnames=names)
    splits = {s: evaluator.image_features(s) for s in ("train", "val", "test")}  # computed when not cached
    sizes = ", ".join(f"{s} {len(y)}" for s, (_, y) in splits.items())
    echo(f"prompt ({on}): {' | '.join(templates)}   [{sizes} images]")

    fits = []
    for kind in kinds:
        fit = select_and_fit(kind, splits["train"], splits["val"], class_embeddings, evaluator.logit_scale,
                             seed=seed, test=splits["test"])
        fits.append(fit)
        hp = ", ".join(f"{k}={v}" for k, v in fit.hparams.items())
        echo(f"  {kind:17s} val {pct(fit.accuracy['val'])} (prompt {pct(fit.prompt_accuracy['val'])})  "
             f"test {pct(fit.accuracy['test'])} (prompt {pct(fit.prompt_accuracy['test'])})  "
             f"{fit.size_bytes:,} bytes  [{hp}]  {fit.fit_s:.1f}s")

    # The kept adapter: the best on val; ties go to the smaller one. Test plays no part.
    chosen = max(fits, key=lambda f: (f.accuracy["val"], -f.size_bytes))
    kept = summary.get("adapter") or {}
    # (an adapter.pt removed is no adapter kept: the way to fit another kind where one ties on val)
    if kept.get("result") == "adapter" and (run_dir / ADAPTER_FILE).is_file() \
            and (chosen.accuracy["val"] <= kept["accuracy"]["val"] or not chosen.beats_prompt_on_val):
        # an adapter the run keeps is replaced only by a better one on val that is kept too (one
        # that loses to its own prompt, e.g. --on ensemble, is no result), never lost to a later try
        echo(f"the run keeps its {kept['kind']} adapter (val {pct(kept['accuracy']['val'])}): the best of this fit, "
             f"{chosen.kind}, has val {pct(chosen.accuracy['val'])}"
             f"{'' if chosen.beats_prompt_on_val else ' and does not beat its prompt alone'}; nothing was replaced "
             f"(to fit another anyway, remove {run_dir / ADAPTER_FILE} first).")
        return kept
    file_bytes = save_adapter(run_dir / ADAPTER_FILE, chosen.module, templates, names or list(evaluator.task.classnames),
                              extra={"run_id": run_dir.name, "on": on, "seed": seed})
    beats = chosen.beats_prompt_on_val
    section = {
        "kind": chosen.kind,
        "hparams": chosen.hparams,
        "on": on,
        "templates": templates,
        "seed": seed,
        "accuracy": chosen.accuracy,
        "prompt_accuracy": chosen.prompt_accuracy,
        "beats_prompt_on_val": beats,
        "result": "adapter" if beats else "prompt-only",
        "size_bytes": chosen.size_bytes,
        "file": ADAPTER_FILE,
        "file_bytes": file_bytes,
        "fit_s": round(chosen.fit_s, 3),
        "fitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "candidates": [{k: v for k, v in f.to_dict().items()} for f in fits],
    }
    summary["adapter"] = section
    write_json_atomic(run_dir / SUMMARY, summary)

    val, prompt_val = chosen.accuracy["val"], chosen.prompt_accuracy["val"]
    if beats:
        echo(f"kept: {chosen.kind} adapter, val {pct(val)} vs {pct(prompt_val)} for the prompt alone "
             f"(test {pct(chosen.accuracy['test'])} vs {pct(chosen.prompt_accuracy['test'])}); "
             f"the run's result is now prompt + adapter ({run_dir / ADAPTER_FILE}).")
    else:
        echo(f"no adapter beat the prompt alone on val (best: {chosen.kind}, val {pct(val)} vs {pct(prompt_val)}); "
             f"the run's result stays the prompt-only one. {ADAPTER_FILE} is saved for inspection only.")
    return section


def adapter_said(section: dict) -> str:
    """A run's adapter section (summary.json "adapter") in one line, for `show` and `report`."""
    # `adapt --on ensemble`: it sits on the ensemble's features, not on the best template's
    on = f"the ensemble of {len(section.get('templates') or [])} templates" if section.get("on") == "ensemble" else ""
    alone = on or "the prompt"
    kept = f"kept: it beat {alone} alone on val" if section.get("result") == "adapter" else \
        f"not kept: it did not beat {alone} alone on val"
    accuracy = "  ".join(f"{split} {pct(value)}" for split, value in (section.get("accuracy") or {}).items())
    return f"{on or 'prompt'} + {section.get('kind')} adapter: {accuracy} ({kept}; {section.get('file', ADAPTER_FILE)})"


def check_adapter_names(payload: dict, names_given: Callable[[], Sequence[str]]) -> None:
    """Refused: names other than those an adapter (`payload`, as read_adapter reads it) was
    fit on, unless its kind takes any (a cache adapter). `names_given` (in the adapter's
    class order: `in_adapter_order`) is called only where the names could be refused
    (reading them may read the dataset)."""
    from promptclimb.evaluators.adapters import get_adapter

    fit_names = payload.get("classnames")
    if not fit_names or get_adapter(payload["kind"]).takes_other_names:
        return
    if list(names_given()) != list(fit_names):
        raise PromptclimbError(
            f"--classnames with --with-adapter: the run's {payload['kind']} adapter was trained on the "
            f"prompt filled in with the run's class names and does not apply to other names (only a cache "
            f"adapter does); drop --classnames to apply it, or --with-adapter to score these names")


def adapter_class_order(config: dict, data_labels: Sequence[str] | None,
                        data_folders: Sequence[str] = ()) -> list[int] | None:
    """Each class of data whose own labels are `data_labels` (in its class order, made
    readable from `data_folders`: `Dataset.folders`): its place among the run's classes, the
    adapter's rows, matched by label as `eval --run` matches the run's names; PromptclimbError
    where the data holds other classes. None where the order is the run's, or cannot be told
    (the run started from names of its own, which are no labels; an evaluator that gives no
    labels): then by position, as the template rows."""
    labels = run_labels(config)
    if not labels or data_labels is None or list(data_labels) == labels:
        return None
    try:
        in_data_order = names_by_label(dict(zip(labels, labels)), data_labels, data_folders)
    except PromptclimbError as exc:  # the template rows alone would be scored: say what refuses them
        raise PromptclimbError(f"--with-adapter: {exc} (the adapter's rows are the run's classes); drop "
                               "--with-adapter to score the template alone") from None
    return [labels.index(label) for label in in_data_order]


def in_adapter_order(names: Sequence[str], order: list[int] | None) -> list[str]:
    """`names` of data's classes, in its class order, put into the adapter's (the run's) by
    `order` (`adapter_class_order`; None: the same order)."""
    names = list(names)
    return names if order is None else [names[order.index(row)] for row in range(len(order))]


def eval_run_adapter(run_dir: str | Path, evaluator=None, splits=("test",), device: str | None = None,
                     classnames=None, **overrides) -> dict:
    """Accuracy of the run's prompt alone and with its adapter.pt on `splits` of `evaluator`
    (default: the run's own evaluator; `overrides` such as data_root=... point it at new
    data of the same classes), with `classnames` filled in (None: the run's; other names
    than the adapter's are refused unless its kind takes them, as the cache adapter does).
    {"kind", "templates", "result", "accuracy": {split: {"prompt", "adapter"}}}."""
    import warnings

    from promptclimb.evaluators.adapters import load_adapter, prompt_and_adapter_accuracy, read_adapter

    run_dir = Path(run_dir)
    config, summary = read_run(run_dir, "eval --run --with-adapter")
    payload = read_adapter(run_dir / ADAPTER_FILE)
    fit_names = payload.get("classnames")
    if evaluator is None:  # the run's names by the labels of its data, as `eval --run` builds it
        by_label = run_names_by_label(config, summary)
        evaluator = build_run_evaluator(config, device=device, **{
            "classnames": by_label if isinstance(by_label, dict) else None, **overrides})
    fit_on = ((config.get("evaluator") or {}).get("backbone") or {}).get("identity")
    here = (evaluator.info().get("backbone") or {}).get("identity") if fit_on else None
    if here and here != fit_on:  # features of another model, even as wide, are another space
        raise PromptclimbError(f"{run_dir / ADAPTER_FILE} was fit on the run's backbone ({fit_on}) and does not apply "
                               f"to another's features (this one is {here}); drop --backbone, --pretrained and "
                               f"--weights to apply it, or --with-adapter to score the template on this backbone")
    # each class of the data: its place among the adapter's rows (the run's classes, in the run's
    # order), by label as the template rows took the run's names; not by name, as it was: the
    # start names of a run without labels are no class's found name
    data = getattr(evaluator, "dataset", None)  # a ClipEvaluator's; a fake's may hold no labels
    order = adapter_class_order(config, getattr(data, "classnames", None), getattr(data, "folders", ()))
    if classnames is not None:  # the names given, in the data's class order: put into the adapter's
        classnames = in_adapter_order(classnames, order)  # the adapter's own names, class by class, are taken
        check_adapter_names(payload, lambda: classnames)
    else:
        classnames = run_classnames(summary) or run_start_names(config) or list(evaluator.task.classnames)
        if fit_names and len(fit_names) == len(classnames) and fit_names != classnames:
            warnings.warn(f"the class names of this data differ from those the adapter was fit on "
                          f"({fit_names}); classes are matched by position", stacklevel=2)
    class_embeddings = evaluator.class_embeddings(payload["templates"], classnames=classnames)
    module = load_adapter(run_dir / ADAPTER_FILE, class_embeddings, evaluator.logit_scale)
    out = {split: prompt_and_adapter_accuracy(module, *evaluator.image_features(split), order=order)
           for split in splits}
    kept = (summary.get("adapter") or {}).get("result", "adapter")
    return {"kind": payload["kind"], "templates": payload["templates"], "result": kept, "accuracy": out}
