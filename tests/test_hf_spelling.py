"""The spellings of one Hugging Face dataset (evaluators/hf.py, evaluators/datasets.py):
`hf:OWNER/NAME`, `hf:OWNER/NAME:` and `hf:OWNER/NAME:default` load the same data. Each is
loaded as spelled (its name draws its few-shot split and keys its features, so a run recorded
under any of them resumes on the split it was searched on); `canonical_dataset_name` is the one
spelling a new run or eval records and loads. Spellings that cannot name a Hub dataset (spaces, a
'/' at the end) are refused in one line that gives the spelling meant.

The dataset is generated (tests/test_hf_datasets.py's `owner/colours` in an offline HF cache).
"""

from __future__ import annotations

import pytest
from conftest import require_extra

datasets = require_extra("datasets", "hf")

from test_hf_datasets import eval_args, folders, hf_cache, run_cli  # noqa: E402,F401 (fixtures)

from promptclimb.agent.core.errors import PromptclimbError  # noqa: E402
from promptclimb.evaluators.datasets import (canonical_dataset_name, load_dataset, make_fewshot_split,  # noqa: E402
                                             same_dataset_name)

SPELLINGS = ("hf:owner/colours", "hf:owner/colours:", "hf:owner/colours:default")
# The 2-shot seed-1 train split of owner/colours as each spelling drew it before canonical_dataset_name (what a
# run recorded under it holds as ids_sha256): loaded as spelled, each still draws it.
TRAIN_DRAWN = {"hf:owner/colours": "30ade1bb3bc4434e", "hf:owner/colours:": "b30a9ba5b81783bc",
               "hf:owner/colours:default": "3d056ff931d5dcd7"}


@pytest.mark.parametrize("name, canonical", [
    ("hf:owner/colours", "hf:owner/colours"),
    ("hf:owner/colours:", "hf:owner/colours"),
    ("hf:owner/colours:default", "hf:owner/colours"),
    ("hf:owner/colours:rgb", "hf:owner/colours:rgb"),
    ("hf:owner/colours:Default", "hf:owner/colours:Default"),  # datasets reads config names as spelled
    ("hf:owner/colours/", "hf:owner/colours/"),  # refused where it is loaded, not renamed
    ("fashion-mnist", "fashion-mnist"),
    ("hf", "hf"),
])
def test_canonical_dataset_name(name, canonical):
    assert canonical_dataset_name(name) == canonical


def test_same_dataset_name():
    assert same_dataset_name("hf:owner/colours:default", "hf:owner/colours:")
    assert same_dataset_name("fashion-mnist", "fashion-mnist")
    assert not same_dataset_name("hf:owner/colours:rgb", "hf:owner/colours")
    assert not same_dataset_name("hf:owner/colours", None)


def described(name: str) -> tuple:
    data = load_dataset(name)
    split = make_fewshot_split(data, 2, 1).info()
    return data.name, data.identity, split["ids_sha256"]


def test_the_canonical_spelling_is_one_dataset_and_each_recorded_spelling_keeps_its_split(hf_cache):
    plain = described("hf:owner/colours")
    assert plain[1].startswith("owner/colours:") and plain[1].endswith(":decoded:3")  # as it has been recorded
    for name in SPELLINGS:
        # the spelling a new run records: one name, identity (so one feature cache) and split
        assert described(canonical_dataset_name(name)) == plain
        # as spelled (a run that recorded it): the split it was searched on
        assert described(name)[2]["train"] == TRAIN_DRAWN[name]


def test_the_config_name_is_read_as_spelled(hf_cache, tiny_clip_config, tiny_clip_weights):
    """The `datasets` library finds no config 'Default' beside 'default' (offline, in its cache): another
    config, refused in one line that names the ones there are, not taken as the default."""
    result = run_cli(*eval_args(tiny_clip_config, tiny_clip_weights, "--dataset", "hf:owner/colours:Default"))
    assert result.exit_code == 1, result.output
    assert "cannot load hf:owner/colours:Default" in result.output and "['default']" in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("name, said", [
    ("hf:owner/colours/", "without a '/' at the end of its name (hf:owner/colours)"),
    ("hf:owner/colours ", "without spaces around its parts (hf:owner/colours)"),
    ("hf: owner/colours", "without spaces around its parts (hf:owner/colours)"),
    ("hf:owner/colours: default", "without spaces around its parts (hf:owner/colours:default)"),
])
def test_a_misspelt_hub_name_is_refused_in_one_line(name, said, hf_cache):
    with pytest.raises(PromptclimbError) as refused:
        load_dataset(name)
    assert str(refused.value) == f"--dataset {name!r}: expected hf:OWNER/NAME or hf:OWNER/NAME:CONFIG, {said}"


@pytest.mark.parametrize("name", ["hf:owner/colours/", "hf:owner/colours ", " hf:owner/colours", "hf: owner/colours"])
def test_a_misspelt_hub_name_on_the_command_line_says_so_in_one_line(name, hf_cache, tiny_clip_config,
                                                                     tiny_clip_weights):
    result = run_cli(*eval_args(tiny_clip_config, tiny_clip_weights, "--dataset", name))
    assert result.exit_code == 1, result.output
    assert f"--dataset {name!r}" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---------------------------------------------------------------- runs (agent/pipeline.py, agent/cli/eval.py)

def search(runs, tiny_clip_config, tiny_clip_weights, *args):
    from fake_llm import FakeLLM
    from test_hf_datasets import KEY

    with FakeLLM(script=["a red photo of a {}.\na {} thing."]) as fake:
        return run_cli("search", *args, "--backbone", tiny_clip_config, "--weights", tiny_clip_weights,
                       "--device", "cpu", "--runs-dir", runs,
                       env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url})


def start(runs, name, tiny_clip_config, tiny_clip_weights):
    return search(runs, tiny_clip_config, tiny_clip_weights, "--dataset", name, "--shots", "2", "--seed", "1",
                  "--iterations", "1", "--search", "template", "--resets", "1", "--pool-sample", "4")


def recorded(run) -> dict:
    import json

    return json.loads((run / "config.json").read_text())


def test_a_run_started_with_another_spelling_records_the_canonical_one(hf_cache, tmp_path, tiny_clip_config,
                                                                       tiny_clip_weights, torch_threads):
    """hf:owner/colours:default is recorded, loaded and named as hf:owner/colours (its split and features);
    a resume given any spelling of it is the run's, another config a change."""
    runs = tmp_path / "runs"
    result = start(runs, "hf:owner/colours:default", tiny_clip_config, tiny_clip_weights)
    assert result.exit_code == 0, result.output
    [run] = list(runs.iterdir())
    assert run.name.endswith("-hf_owner_colours-2shot")
    config = recorded(run)
    assert config["evaluator_args"]["dataset"] == "hf:owner/colours"
    assert config["evaluator"]["dataset"]["name"] == "hf:owner/colours"
    assert config["evaluator"]["split"]["ids_sha256"]["train"] == TRAIN_DRAWN["hf:owner/colours"]
    for name in SPELLINGS:
        again = search(runs, tiny_clip_config, tiny_clip_weights, "--resume", run.name, "--dataset", name)
        assert again.exit_code == 0, again.output
    other = search(runs, tiny_clip_config, tiny_clip_weights, "--resume", run.name, "--dataset", "hf:owner/colours:rgb")
    assert other.exit_code == 1 and "--dataset hf:owner/colours:rgb (the run's: hf:owner/colours)" in other.output
    for name in SPELLINGS:  # `runs --dataset` as the search was given it, or any other spelling
        listed = run_cli("runs", "--runs-dir", runs, "--dataset", name, "--format", "csv")
        assert listed.exit_code == 0 and run.name in listed.stdout, listed.output


def test_evaluate_takes_any_spelling_as_the_one_dataset():
    """evaluate(dataset="hf:owner/colours:default") drew the split of that spelling, another than
    `promptclimb eval`'s with the same words."""
    import promptclimb
    from fake_llm import WordEvaluator
    from promptclimb.agent.api import using_evaluator

    asked = []

    def build(**kwargs):
        asked.append(kwargs["dataset"])
        return WordEvaluator("toy")

    with using_evaluator(build):
        for name in SPELLINGS:
            promptclimb.evaluate("a photo of a {}.", dataset=name, echo=None)
    assert asked == ["hf:owner/colours"] * len(SPELLINGS)


def test_a_run_recorded_under_another_spelling_resumes_and_evaluates_on_its_own_split(
        hf_cache, tmp_path, monkeypatch, tiny_clip_config, tiny_clip_weights, torch_threads):
    """A run from before canonical_dataset_name recorded hf:owner/colours: as given: it resumes (given the
    dataset again in any spelling, or not), and `eval --run` scores it on the split it was searched on."""
    import json

    import promptclimb.evaluators.datasets as data_module

    runs = tmp_path / "runs"
    with monkeypatch.context() as before:
        before.setattr(data_module, "canonical_dataset_name", lambda name: name)
        result = start(runs, "hf:owner/colours:", tiny_clip_config, tiny_clip_weights)
    assert result.exit_code == 0, result.output
    [run] = list(runs.iterdir())
    config = recorded(run)
    assert config["evaluator_args"]["dataset"] == "hf:owner/colours:"
    assert config["evaluator"]["split"]["ids_sha256"]["train"] == TRAIN_DRAWN["hf:owner/colours:"]
    for given in ([], ["--dataset", "hf:owner/colours:"], ["--dataset", "hf:owner/colours"],
                  ["--dataset", "hf:owner/colours:default"]):
        resumed = search(runs, tiny_clip_config, tiny_clip_weights, "--resume", run.name, *given)
        assert resumed.exit_code == 0, resumed.output
        assert "warning" not in resumed.output, resumed.output
    assert recorded(run)["evaluator"] == config["evaluator"]  # nothing changed: no warning, no new record
    base = eval_args(tiny_clip_config, tiny_clip_weights, shots=2)
    scored = run_cli(*base, "--run", run, "--dataset", "hf:owner/colours:default")
    assert scored.exit_code == 0, scored.output
    info = json.loads(scored.stdout)["info"]
    assert info["dataset"]["name"] == "hf:owner/colours:" and info["split"] == config["evaluator"]["split"]
    fresh = run_cli(*base, "--dataset", "hf:owner/colours:", "--seed", "1")
    assert fresh.exit_code == 0, fresh.output
    info = json.loads(fresh.stdout)["info"]
    assert info["dataset"]["name"] == "hf:owner/colours"
    assert info["split"]["ids_sha256"]["train"] == TRAIN_DRAWN["hf:owner/colours"]
