"""Output-side adapters: shapes, determinism, learning on separable features, save/load, the
run-level command (summary.json, adapter.pt, the prompt-only fallback) and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from promptclimb.agent.core.errors import PromptclimbError

REPO = Path(__file__).resolve().parents[1]
KINDS = ("residual-logits", "feature-residual", "cache")


def clusters(torch, n_per_class, n_classes=4, dim=32, noise=0.07, seed=0, means=None):
    """Well-separated classes: normalised (class mean + noise). Returns (features, labels, means)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    if means is None:
        means = F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    features = F.normalize(means[labels] + noise * torch.randn(len(labels), dim, generator=g), dim=-1)
    return features, labels, means


@pytest.fixture
def separable(torch_threads):
    """Train/val/test clusters and *poor* class embeddings: each class's embedding points at
    the next class's mean (plus a random direction), so the prompt alone confuses them all."""
    import torch
    import torch.nn.functional as F

    train_x, train_y, means = clusters(torch, 8, seed=0)
    val_x, val_y, _ = clusters(torch, 4, seed=1, means=means)
    test_x, test_y, _ = clusters(torch, 50, seed=2, means=means)
    noise = F.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(99)), dim=-1)
    poor = F.normalize(means.roll(1, dims=0) + noise, dim=-1)
    return SimpleNamespace(train=(train_x, train_y), val=(val_x, val_y), test=(test_x, test_y),
                           means=means, poor=poor, scale=20.0)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_untrained_adapter_is_the_prompt(kind, separable):
    import torch

    from promptclimb.evaluators.adapters import ADAPTERS

    cls = ADAPTERS[kind]
    x, y = separable.train
    module = cls.fit(x, y, separable.poor, separable.scale, cls.grid[0], seed=0)
    assert module(x).shape == (len(x), 4)
    assert module.size_bytes() > 0
    if cls.trained:  # the residual starts at zero: before training it *is* the prompt-only classifier
        fresh = cls(separable.poor, separable.scale, cls.grid[0])
        assert torch.allclose(fresh(x), fresh.zero_shot_logits(x), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_identical_weights_and_logits(kind, separable):
    import torch

    from promptclimb.evaluators.adapters import ADAPTERS

    cls = ADAPTERS[kind]
    x, y = separable.train
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = cls.fit(x, y, separable.poor, separable.scale, cls.grid[-1], seed=7)
    assert torch.equal(torch.rand(3), before)  # fitting leaves the caller's RNG alone
    b = cls.fit(x, y, separable.poor, separable.scale, cls.grid[-1], seed=7)
    for (name, ta), (_, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(ta, tb), name
    assert torch.equal(a(x), b(x))
    if cls.trained:
        c = cls.fit(x, y, separable.poor, separable.scale, cls.grid[-1], seed=8)
        assert not torch.equal(a(x), c(x))


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_learns_separable_features_where_the_prompt_is_poor(kind, separable):
    from promptclimb.evaluators.adapters import select_and_fit

    fit = select_and_fit(kind, separable.train, separable.val, separable.poor, separable.scale,
                         seed=0, test=separable.test)
    assert fit.prompt_accuracy["test"] < 0.3  # the prompt alone is poor
    assert fit.accuracy["test"] > 0.95, fit.grid
    assert fit.beats_prompt_on_val
    assert fit.hparams in [g["hparams"] for g in fit.grid]
    # the choice is the best on val; a tie goes to the earlier (closer to zero-shot) grid point
    vals = [g["accuracy"]["val"] for g in fit.grid]
    assert fit.accuracy["val"] == max(vals)
    assert fit.hparams == fit.grid[vals.index(max(vals))]["hparams"]


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_the_same_logits(kind, separable, tmp_path):
    import torch

    from promptclimb.evaluators.adapters import load_adapter, save_adapter, select_and_fit

    fit = select_and_fit(kind, separable.train, separable.val, separable.poor, separable.scale, seed=0)
    path = tmp_path / "adapter.pt"
    size = save_adapter(path, fit.module, ["a photo of a {}."], ["a", "b", "c", "d"])
    assert size == path.stat().st_size > 0
    loaded = load_adapter(path, separable.poor)
    assert loaded.kind == kind and loaded.hparams == fit.hparams
    assert torch.equal(loaded(separable.test[0]), fit.module(separable.test[0]))


def test_class_count_and_dimension_mismatch_are_clear_errors(separable, tmp_path):
    import torch

    from promptclimb.evaluators.adapters import load_adapter, save_adapter, select_and_fit

    fit = select_and_fit("cache", separable.train, separable.val, separable.poor, separable.scale)
    path = tmp_path / "adapter.pt"
    save_adapter(path, fit.module, ["a {}."])
    with pytest.raises(PromptclimbError, match="fit for 4 classes but this data has 3"):
        load_adapter(path, separable.poor[:3])
    with pytest.raises(PromptclimbError, match="32-dimensional"):
        load_adapter(path, torch.zeros(4, 16))
    with pytest.raises(PromptclimbError, match="class-count mismatch"):  # labels beyond the classes
        select_and_fit("cache", separable.train, separable.val, separable.poor[:2], separable.scale)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(PromptclimbError, match="not a readable adapter"):
        load_adapter(tmp_path / "junk.pt", separable.poor)
    with pytest.raises(PromptclimbError, match="no adapter at"):
        load_adapter(tmp_path / "missing.pt", separable.poor)


def test_unknown_kind_names_the_known_kinds(tmp_path):
    from promptclimb.agent.cli import cli
    from promptclimb.agent.adapt import ADAPTER_KINDS, check_kinds
    from promptclimb.evaluators.adapters import ADAPTERS, get_adapter

    assert ADAPTER_KINDS == tuple(ADAPTERS)  # the torch-free list in agent/ matches the registry
    with pytest.raises(PromptclimbError) as err:
        get_adapter("lora")
    assert all(k in str(err.value) for k in ADAPTERS)
    assert check_kinds(["all", "cache"]) == list(ADAPTERS)
    result = CliRunner().invoke(cli, ["adapt", str(tmp_path), "--kind", "lora"])
    assert result.exit_code != 0
    assert "unknown adapter kind 'lora'" in result.output and "feature-residual" in result.output
    assert "Traceback" not in result.output


def test_agent_side_does_not_import_torch():
    code = "import sys, promptclimb.agent.adapt; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------- run level


class FakeEvaluator:
    """The part of ClipEvaluator an adapter uses, over in-memory features."""

    def __init__(self, splits, class_embeddings, scale, classnames):
        self.splits, self.embeddings, self.logit_scale = splits, class_embeddings, scale
        self.task = SimpleNamespace(classnames=tuple(classnames))

    def image_features(self, split):
        return self.splits[split]

    def class_embeddings(self, templates, classnames=None):
        return self.embeddings


def make_run(folder: Path, evaluator_args: dict, template="a photo of a {}.") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"v": 1, "evaluator_args": evaluator_args}))
    best = {"template": template, "accuracy": {"train": 0.5, "val": 0.5, "test": 0.5}}
    (folder / "summary.json").write_text(json.dumps({"v": 1, "best": best, "ensemble": None}))
    return folder


def test_a_losing_adapter_leaves_the_prompt_only_result(separable, tmp_path):
    from promptclimb.agent.adapt import fit_run_adapter

    # Class embeddings = the true class means: the prompt alone is already perfect on val.
    evaluator = FakeEvaluator({"train": separable.train, "val": separable.val, "test": separable.test},
                              separable.means, separable.scale, "abcd")
    run = make_run(tmp_path / "run", {"seed": 1})
    said = []
    section = fit_run_adapter(run, ["cache"], evaluator=evaluator, echo=said.append)
    assert section["prompt_accuracy"]["val"] == 1.0 and not section["beats_prompt_on_val"]
    assert section["result"] == "prompt-only"
    assert "no adapter beat the prompt alone on val" in said[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["adapter"]["result"] == "prompt-only"
    assert summary["best"]["template"] == "a photo of a {}."  # the run's result is untouched


def fit_over_a_kept_adapter(separable, tmp_path, accuracy: dict) -> list[str]:
    """`adapt --kind cache` on a run that keeps a feature-residual adapter with `accuracy`,
    the prompt alone perfect on val (class embeddings = the true class means): checks that
    the run keeps it, and returns what the fit said."""
    from promptclimb.agent.adapt import fit_run_adapter

    evaluator = FakeEvaluator({"train": separable.train, "val": separable.val, "test": separable.test},
                              separable.means, separable.scale, "abcd")
    run = make_run(tmp_path / "run", {"seed": 1})
    summary = json.loads((run / "summary.json").read_text())
    kept = {"kind": "feature-residual", "result": "adapter", "accuracy": accuracy}
    (run / "summary.json").write_text(json.dumps({**summary, "adapter": kept}))
    (run / "adapter.pt").write_bytes(b"the kept adapter")
    said: list[str] = []
    assert fit_run_adapter(run, ["cache"], evaluator=evaluator, echo=said.append) == kept
    assert json.loads((run / "summary.json").read_text())["adapter"] == kept
    assert (run / "adapter.pt").read_bytes() == b"the kept adapter"
    return said


def test_a_later_fit_that_is_no_better_leaves_the_kept_adapter(separable, tmp_path):
    said = fit_over_a_kept_adapter(separable, tmp_path, {"train": 1.0, "val": 1.0, "test": 0.9})
    assert said[-1].startswith("the run keeps its feature-residual adapter (val 100.0%)")
    assert said[-1].endswith(f"(to fit another anyway, remove {tmp_path / 'run' / 'adapter.pt'} first).")


def test_a_kept_adapter_whose_file_was_removed_is_fitted_again(separable, tmp_path):
    """With adapter.pt gone, `adapt` said the run keeps its adapter and wrote nothing, and
    `eval --with-adapter` said to fit one with that same command."""
    from promptclimb.agent.adapt import fit_run_adapter

    evaluator = FakeEvaluator({"train": separable.train, "val": separable.val, "test": separable.test},
                              separable.means, separable.scale, "abcd")
    run = make_run(tmp_path / "run", {"seed": 1})
    summary = json.loads((run / "summary.json").read_text())
    kept = {"kind": "feature-residual", "result": "adapter", "accuracy": {"train": 1.0, "val": 1.0, "test": 0.9}}
    (run / "summary.json").write_text(json.dumps({**summary, "adapter": kept}))
    section = fit_run_adapter(run, ["cache"], evaluator=evaluator, echo=lambda line: None)
    assert section["kind"] == "cache" and (run / "adapter.pt").is_file()


def test_adapt_a_run_without_cached_features(tiny_clip_config, tiny_clip_weights, image_folder, torch_threads,
                                             isolated_home, tmp_path):
    """A real (tiny) CLIP run whose image features were never computed: they are computed,
    adapter.pt and the summary's adapter section are written, and eval --with-adapter's
    function re-applies the saved adapter with the same result."""
    from promptclimb.agent.cli import cli
    from promptclimb.agent.adapt import eval_run_adapter

    args = {"dataset": "imagefolder", "shots": 2, "seed": 1, "backbone": tiny_clip_config,
            "pretrained": None, "weights": str(tiny_clip_weights), "data_root": str(image_folder)}
    run = make_run(tmp_path / "runs" / "tiny-run", args)
    assert not list(isolated_home.glob("features/images/*"))
    result = CliRunner().invoke(cli, ["adapt", "tiny-run", "--runs-dir", str(tmp_path / "runs"),
                                      "--kind", "cache", "--kind", "feature-residual", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    section = json.loads(result.stdout)
    assert len(list(isolated_home.glob("features/images/*.safetensors"))) == 3  # train, val, test now cached
    assert (run / "adapter.pt").is_file() and section["file_bytes"] == (run / "adapter.pt").stat().st_size
    assert [c["kind"] for c in section["candidates"]] == ["cache", "feature-residual"]
    for key in ("kind", "hparams", "accuracy", "prompt_accuracy", "size_bytes", "beats_prompt_on_val", "result"):
        assert key in section
    assert set(section["accuracy"]) == {"train", "val", "test"}
    assert json.loads((run / "summary.json").read_text())["adapter"] == section

    applied = eval_run_adapter(run, splits=("test",), device="cpu")
    assert applied["kind"] == section["kind"]
    assert applied["accuracy"]["test"]["adapter"] == pytest.approx(section["accuracy"]["test"])
    assert applied["accuracy"]["test"]["prompt"] == pytest.approx(section["prompt_accuracy"]["test"])


class NamedEvaluator(FakeEvaluator):
    """A FakeEvaluator whose classifier depends on the names filled in (None: the start names)."""

    def __init__(self, splits, by_names: dict, scale, classnames):
        super().__init__(splits, by_names[tuple(classnames)], scale, classnames)
        self.by_names = by_names

    def class_embeddings(self, templates, classnames=None):
        return self.by_names[tuple(classnames or self.task.classnames)]


def test_a_cache_adapter_is_applied_with_other_names_and_a_trained_one_refuses_them(separable, tmp_path):
    """The cache adapter adds a term of the image features alone to the prompt's logits, so
    `eval --run --with-adapter --classnames` scores both rows with the names given; a
    trained adapter learned the run names' classifier and refuses other names."""
    from promptclimb.agent.adapt import eval_run_adapter, fit_run_adapter

    splits = {"train": separable.train, "val": separable.val, "test": separable.test}
    evaluator = NamedEvaluator(splits, {tuple("abcd"): separable.poor, tuple("wxyz"): separable.means},
                               separable.scale, "abcd")
    for kind in ("cache", "feature-residual"):
        fit_run_adapter(make_run(tmp_path / kind, {"seed": 1}), [kind], evaluator=evaluator, echo=lambda _: None)

    run_names = eval_run_adapter(tmp_path / "cache", evaluator=evaluator)["accuracy"]["test"]
    other = eval_run_adapter(tmp_path / "cache", evaluator=evaluator, classnames=list("wxyz"))["accuracy"]["test"]
    assert run_names["prompt"] < 0.3 and other["prompt"] == 1.0  # the prompt alone with the names given
    assert other["adapter"] == 1.0

    same = eval_run_adapter(tmp_path / "feature-residual", evaluator=evaluator, classnames=list("abcd"))
    assert same["accuracy"]["test"]["prompt"] == run_names["prompt"]  # its own names are no other names
    with pytest.raises(PromptclimbError) as refused:
        eval_run_adapter(tmp_path / "feature-residual", evaluator=evaluator, classnames=list("wxyz"))
    assert str(refused.value).startswith("--classnames with --with-adapter: the run's feature-residual adapter was "
                                         "trained on the prompt filled in with the run's class names")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("names_file", [True, False])
def test_adapt_fills_in_the_start_names_the_run_recorded_not_its_names_file(names_file, tiny_clip_config,
                                                                           tiny_clip_weights, image_folder,
                                                                           torch_threads, tmp_path):
    """A run started with --classnames FILE, the file deleted (or edited) since, or from the
    data's own labels, which read otherwise since (as WordNet IDs came to): `adapt` and
    eval_run_adapter build the run's evaluator with the start names the run recorded, as
    `eval --run`, `transfer` and a resume do; `adapt` had stopped on the missing file. Labels
    that read otherwise are found by their folders' names, as WordNet IDs are."""
    from promptclimb.agent.adapt import eval_run_adapter
    from promptclimb.agent.cli import cli
    from promptclimb.evaluators.adapters import read_adapter

    args = {"dataset": "imagefolder", "shots": 2, "seed": 1, "backbone": tiny_clip_config, "pretrained": None,
            "weights": str(tiny_clip_weights), "data_root": str(image_folder),
            "classnames": str(tmp_path / "names.txt") if names_file else None}  # no longer there
    run = make_run(tmp_path / "runs" / "r", args)
    # the data's own labels as an earlier reading spelled them (its folders' names, as WordNet IDs were)
    recorded = ["lake", "field", "square"] if names_file else ["blue_lake", "green_field", "red_square"]
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "evaluator": {"dataset": {"classnames": recorded}}}))
    result = CliRunner().invoke(cli, ["adapt", "r", "--runs-dir", str(tmp_path / "runs"), "--kind", "cache",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert read_adapter(run / "adapter.pt")["classnames"] == recorded
    if names_file:  # (labels that read otherwise are matched by name against the data's, and refused)
        assert set(eval_run_adapter(run, device="cpu")["accuracy"]["test"]) == {"prompt", "adapter"}


def test_the_adapter_rows_go_to_the_run_classes_by_label_not_by_name(tmp_path, torch_threads):
    """eval_run_adapter on a run's own evaluator, the run started from a names FILE before the
    labels were recorded beside its names, its search having given dress and trouser each
    other's start name: the adapter's rows are the run's classes in the run's order (its own
    data, so by position), as `eval --run RUN --with-adapter` scores them. They had been
    matched by name to the start names the evaluator fills in, dress and trouser swapped:
    prompt 100% and adapter 50%, where they are 50% and 100%."""
    from promptclimb.agent.adapt import eval_run_adapter
    from promptclimb.agent.cli import cli
    from test_cli_eval import fashion_in_two_orders

    fashion_in_two_orders(tmp_path)
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    start, found = ["handbag", "dress", "sneaker", "trousers"], ["handbag", "trousers", "sneaker", "dress"]
    (runs / "r" / "config.json").write_text(json.dumps({"v": 1, "run_id": "r", "evaluator_args": {
        "dataset": "imagefolder", "data_root": str(tmp_path / "own"), "shots": 2, "seed": 0, "backbone": "demo",
        "classnames": str(tmp_path / "names.txt")}, "evaluator": {"dataset": {"classnames": start}}}))
    (runs / "r" / "summary.json").write_text(json.dumps({"v": 1, "best": {
        "template": "a photo of a {}.", "names": found, "accuracy": {"train": 0.5, "val": 0.5, "test": 0.5}}}))
    fit = CliRunner().invoke(cli, ["adapt", "r", "--runs-dir", str(runs), "--kind", "residual-logits",
                                   "--device", "cpu", "--json"])
    assert fit.exit_code == 0, fit.output
    assert json.loads(fit.stdout)["accuracy"]["test"] == 1.0  # the adapter undoes the swap

    cli_eval = CliRunner().invoke(cli, ["eval", "--run", "r", "--runs-dir", str(runs), "--with-adapter",
                                        "--device", "cpu", "--json"])
    assert cli_eval.exit_code == 0, cli_eval.output
    said = json.loads(cli_eval.stdout)
    assert said["results"][0]["accuracy"]["test"] == 0.5  # the template row: dress and trouser confused
    applied = eval_run_adapter(runs / "r", splits=("train", "val", "test"), device="cpu")
    assert applied["accuracy"] == said["adapter"]["accuracy"]
    assert applied["accuracy"]["test"] == {"prompt": 0.5, "adapter": 1.0}


def test_a_later_fit_that_does_not_beat_its_own_prompt_leaves_the_kept_adapter(separable, tmp_path):
    """A kept adapter (it beat its prompt on val) is not replaced by a later fit that does not
    beat its own prompt, even with a higher val: `adapt --on ensemble` after `adapt` on the best
    template, the ensemble alone better on val than either adapter, had overwritten adapter.pt
    and turned the run's result back to prompt-only."""
    said = fit_over_a_kept_adapter(separable, tmp_path, {"train": 0.6, "val": 0.5, "test": 0.5})
    assert said[-1].startswith("the run keeps its feature-residual adapter (val 50.0%)")
