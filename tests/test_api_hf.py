"""The Python API on Hugging Face datasets: `evaluate()` takes `image_column` and
`label_column` with the meaning and the checks of `promptclimb eval --image-column /
--label-column` (a generated dataset, as tests/test_hf_datasets.py builds them)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import require_extra

datasets = require_extra("datasets", "hf")

import promptclimb  # noqa: E402
from test_hf_datasets import CLASSES, colour_rows, encoded_one_by_one, features  # noqa: E402

TEMPLATES = ["a photo of a {}.", "a {}."]


@pytest.fixture
def two_image_columns(tmp_path):
    """Two Image columns (image, mask) and the class as a string column (name) beside the
    ClassLabel: the columns must be named."""
    rows = colour_rows(4)
    rows["mask"] = list(reversed(rows["image"]))
    rows["name"] = [CLASSES[c] for c in rows["label"]]
    extra = {"mask": datasets.Image(), "name": datasets.Value("string")}
    datasets.Dataset.from_dict(rows, features=features(**extra)).save_to_disk(str(tmp_path / "two"))
    return tmp_path / "two"


def test_evaluate_takes_the_column_options_of_eval(two_image_columns, tiny_clip_config, tiny_clip_weights,
                                                   torch_threads):
    from promptclimb.agent.cli import cli

    settings = dict(dataset="hf", data_root=str(two_image_columns), shots=1, backbone=tiny_clip_config,
                    weights=str(tiny_clip_weights), device="cpu")
    with pytest.raises(promptclimb.PromptclimbError, match=r"several image columns \(image, mask\)"):
        promptclimb.evaluate(TEMPLATES, **settings)
    table = promptclimb.evaluate(TEMPLATES, **settings, image_column="image", label_column="name")

    args = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    out = CliRunner().invoke(cli, ["eval", *args, "--image-column", "image", "--label-column", "name",
                                   *(x for t in TEMPLATES for x in ("--prompt", t)), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["info"]["dataset"]["classes"] == 3
    for row, expected in zip(table.to_dict("records"), json.loads(out.stdout)["results"]):
        assert row["template"] == expected["template"]
        for split in ("train", "val", "test"):
            assert row[split] == pytest.approx(expected["accuracy"][split])
            assert row[f"{split}_loss"] == pytest.approx(expected["loss"][split])
    # the other image column is another dataset: not the same images scored
    masked = promptclimb.evaluate(TEMPLATES, **settings, image_column="mask", label_column="name")
    assert masked["test_loss"].tolist() != pytest.approx(table["test_loss"].tolist())


def test_evaluate_checks_the_columns_as_eval_does(tmp_path, image_folder):
    with pytest.raises(promptclimb.PromptclimbError, match=r"evaluate\(\): --image-column 5: expected text"):
        promptclimb.evaluate(TEMPLATES, dataset="hf", data_root=str(tmp_path), image_column=5)
    with pytest.raises(promptclimb.PromptclimbError, match=r"evaluate\(\): --label-column \['a'\]: expected text"):
        promptclimb.evaluate(TEMPLATES, dataset="hf", data_root=str(tmp_path), label_column=["a"])
    with pytest.raises(promptclimb.PromptclimbError,
                       match="--image-column and --label-column are for hf datasets, not 'imagefolder'"):
        promptclimb.evaluate(TEMPLATES, dataset="imagefolder", data_root=str(image_folder), label_column="name")


def test_splits_encoded_one_by_one_score_as_their_string_labels(tmp_path, tiny_clip_config, tiny_clip_weights,
                                                                 torch_threads):
    """Test's ClassLabel numbers its classes in another order than train's: scored by their
    names, the images score as the same data with string labels does."""
    settings = dict(dataset="hf", shots=1, backbone=tiny_clip_config, weights=str(tiny_clip_weights), device="cpu")
    encoded = promptclimb.evaluate(TEMPLATES, data_root=str(encoded_one_by_one(tmp_path)), **settings)
    strings = promptclimb.evaluate(TEMPLATES, data_root=str(tmp_path / "strings"), label_column="label", **settings)
    for split in ("test", "test_loss"):
        assert encoded[split].tolist() == pytest.approx(strings[split].tolist())
