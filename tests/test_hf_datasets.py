"""Hugging Face datasets (evaluators/hf.py): `--dataset hf --data-root FOLDER` on a
`save_to_disk` folder and on the same data as parquet files, `--dataset hf:OWNER/NAME` from
the (offline) Hugging Face datasets cache, through `eval` and `search`, and the bad inputs.

Every dataset is generated here (3 colour classes of small PNGs, a ClassLabel); nothing is
downloaded (HF_HUB_OFFLINE=1, conftest.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLASS_COLOURS, require_extra

from fake_llm import FakeLLM

datasets = require_extra("datasets", "hf")

from promptclimb.agent.core.errors import PromptclimbError  # noqa: E402
from promptclimb.evaluators.datasets import load_dataset, make_fewshot_split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = list(CLASS_COLOURS)  # red_square, green_field, blue_lake: the ClassLabel names
READABLE = ["red square", "green field", "blue lake"]
TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 3
KEY = "sk-test-hf"


def colour_rows(per_class: int, offset: int = 0) -> dict:
    """`per_class` images of each class colour (each a little different), with their labels."""
    from PIL import Image

    images, labels = [], []
    for c, colour in enumerate(CLASS_COLOURS.values()):
        for i in range(per_class):
            shade = tuple(max(0, min(255, v + 5 * (i + offset) - 15)) for v in colour)
            image = Image.new("RGB", (32, 32), shade)
            image.putpixel((i % 32, (3 * i) % 32), (255, 255, 255))
            images.append(image)
            labels.append(c)
    return {"image": images, "label": labels}


def features(label=None, **extra):
    return datasets.Features({"image": datasets.Image(), "label": label or datasets.ClassLabel(names=CLASSES),
                              **extra})


def colour_dataset(per_class: int, offset: int = 0) -> "datasets.Dataset":
    return datasets.Dataset.from_dict(colour_rows(per_class, offset), features=features())


def colour_splits() -> "datasets.DatasetDict":
    return datasets.DatasetDict(train=colour_dataset(TRAIN_PER_CLASS), test=colour_dataset(TEST_PER_CLASS, offset=7))


def save_parquet(data: "datasets.DatasetDict", root: Path) -> Path:
    """As a Hub repository lays them out: data/<split>-00000-of-00001.parquet."""
    (root / "data").mkdir(parents=True)
    for split, ds in data.items():
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The same generated dataset as a save_to_disk folder and as a folder of parquet files."""
    root = tmp_path_factory.mktemp("hf")
    data = colour_splits()
    data.save_to_disk(str(root / "saved"))
    return {"saved": root / "saved", "parquet": save_parquet(data, root / "parquet")}


def put_in_hf_cache(parquet_root: Path, hf_cache: Path, repo: str) -> None:
    """What `datasets.load_dataset(repo)` leaves in the HF datasets cache after a download:
    the prepared arrow files under <cache>/<owner>___<name>/<config>/<version>/<hash>/. Built
    here by the parquet builder from local files, then put where a Hub download lands."""
    work = hf_cache.parent / "build"
    datasets.load_dataset("parquet", data_dir=str(parquet_root), cache_dir=str(work))
    built = next(p for p in work.glob("parquet/*/*/*") if p.is_dir())
    owner, name = repo.split("/")
    target = hf_cache / f"{owner}___{name}" / "default" / built.parent.name / "0123abcd"
    shutil.copytree(built, target)
    for arrow in target.glob("parquet-*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace("parquet-", f"{name}-", 1)))
    info = json.loads((target / "dataset_info.json").read_text())
    info.update(dataset_name=name, config_name="default")
    (target / "dataset_info.json").write_text(json.dumps(info))


@pytest.fixture
def hf_cache(tmp_path, folders, monkeypatch) -> Path:
    """A Hugging Face datasets cache holding `owner/colours` (HF_DATASETS_CACHE, as read by
    `datasets` at import, pointed here for this test)."""
    cache = tmp_path / "hf-cache" / "datasets"
    put_in_hf_cache(folders["parquet"], cache, "owner/colours")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def run_cli(*args, env=None):
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def eval_args(tiny_clip_config, tiny_clip_weights, *data_args, shots=2):
    return ["eval", *data_args, "--shots", shots, "--backbone", tiny_clip_config, "--weights", tiny_clip_weights,
            "--device", "cpu", "--prompt", "a photo of a {}.", "--prompt", "a {}.", "--json"]


# ---------------------------------------------------------------- loading

@pytest.mark.parametrize("kind", ["saved", "parquet"])
def test_folder_loads_classes_splits_and_images(folders, kind):
    data = load_dataset("hf", str(folders[kind]))
    assert data.classnames == READABLE  # ClassLabel order, '_' made a space
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 18, "val": 0, "test": 9}
    assert all(i.startswith("train/") for i, _ in data.splits["train"])
    assert all(i.startswith("test/") for i, _ in data.splits["test"])
    assert sorted(c for _, c in data.splits["test"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for image_id, label in data.splits["test"]:
        image = data.load_image(image_id)
        assert image.size == (32, 32)
        assert max(range(3), key=lambda ch: image.getpixel((20, 20))[ch]) == label  # red, green, blue
    split = make_fewshot_split(data, 2, seed=0)  # val from what train's shots leave
    assert {k: len(v) for k, v in split.splits.items()} == {"train": 6, "val": 6, "test": 9}
    assert not set(split.splits["train"]) & set(split.splits["val"])


def test_saved_and_parquet_give_the_same_items(folders):
    saved, parquet = (load_dataset("hf", str(folders[k])) for k in ("saved", "parquet"))
    assert saved.splits == parquet.splits and saved.classnames == parquet.classnames


def test_images_are_decoded_one_at_a_time_on_demand(folders, monkeypatch):
    decoded = []
    original = datasets.Image.decode_example
    monkeypatch.setattr(datasets.Image, "decode_example",
                        lambda self, value, *a, **kw: decoded.append(1) or original(self, value, *a, **kw))
    data = load_dataset("hf", str(folders["saved"]))
    assert decoded == []  # loading reads labels only
    data.load_image(data.splits["train"][4][0])
    assert decoded == [1]


@pytest.mark.parametrize("mode", [None, "RGB"])
def test_a_16_bit_image_reads_as_a_folders_does_scaled_to_8_bits(tmp_path, mode):
    """A 16-bit grayscale PNG through hf was clipped at 255 (a gradient read [0 255 255 255]);
    the same file in a folder is scaled ([0 85 170 255]). An image column with a mode of its
    own still gets its mode."""
    import numpy as np
    from PIL import Image

    from promptclimb.evaluators.datasets import open_image

    png = tmp_path / "gradient.png"
    Image.fromarray(np.array([[0, 21845, 43690, 65535]] * 4, dtype=np.uint16)).save(png)
    rows = colour_rows(2)
    rows["image"][0] = Image.open(png)
    image_feature = datasets.Image(mode=mode) if mode else datasets.Image()
    data = datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"image": image_feature, "label": datasets.ClassLabel(names=CLASSES)}))
    datasets.DatasetDict(train=data, test=colour_dataset(1)).save_to_disk(str(tmp_path / "saved"))
    image = load_dataset("hf", str(tmp_path / "saved")).load_image("train/0")
    assert image.mode == (mode or "L")
    assert list(np.asarray(image.convert("L"))[0]) == list(np.asarray(open_image(png))[0]) == [0, 85, 170, 255]


def test_identity_comes_from_the_data(folders, tmp_path):
    first = load_dataset("hf", str(folders["saved"])).identity
    assert load_dataset("hf", str(folders["saved"])).identity == first  # stable: the feature cache is reused
    copy = tmp_path / "saved"  # same name, other images
    datasets.DatasetDict(train=colour_dataset(TRAIN_PER_CLASS, offset=3),
                         test=colour_dataset(TEST_PER_CLASS, offset=7)).save_to_disk(str(copy))
    other = load_dataset("hf", str(copy))
    assert other.splits == load_dataset("hf", str(folders["saved"])).splits  # same ids and labels...
    assert other.identity != first  # ...but other images: other features
    swapped = load_dataset("hf", str(folders["saved"]), label_column="label")
    assert swapped.identity == first  # the column found from the features is the same column


def test_a_parquet_folder_changed_or_doubled_is_read_as_it_is_now(tmp_path):
    """Three ways stale or doubled data was read, unsaid: images a parquet file names by path,
    edited since, kept the old identity (their cached features were reused); a parquet file
    replaced by another with the old time (`cp -p`) was read as the old one (the datasets
    library's conversion cache goes by time); two datasets side by side were read as one."""
    import os

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rows = colour_rows(TRAIN_PER_CLASS)
    paths = []
    for i, image in enumerate(rows["image"]):
        image.save(images / f"{i}.png")
        paths.append(str(images / f"{i}.png"))
    by_path = datasets.DatasetDict(train=datasets.Dataset.from_dict({"image": paths, "label": rows["label"]},
                                                                    features=features()))
    root = save_parquet(by_path, tmp_path / "by_path")
    first = load_dataset("hf", str(root)).identity
    assert load_dataset("hf", str(root)).identity == first
    Image.new("RGB", (32, 32), (0, 0, 0)).save(paths[0])  # an image edited where the row points
    assert load_dataset("hf", str(root)).identity != first

    embedded = save_parquet(colour_splits(), tmp_path / "embedded")
    before = load_dataset("hf", str(embedded))
    train = next(embedded.rglob("train-*.parquet"))
    stamp = train.stat()
    swapped = colour_splits()["train"].map(lambda row: {"label": 2 - row["label"]})
    swapped.to_parquet(str(train))
    os.utime(train, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # as `cp -p` or `rsync -a` leave it
    after = load_dataset("hf", str(embedded))
    assert [c for _, c in after.splits["train"]] == [2 - c for _, c in before.splits["train"]]

    doubled = tmp_path / "doubled"
    for version in ("v1", "v2"):
        shutil.copytree(embedded, doubled / version)
    with pytest.raises(PromptclimbError, match=r"holds the same parquet file twice \(v1/data/"):
        load_dataset("hf", str(doubled))
    splits = tmp_path / "splits"  # files of one name in split folders, as the library reads them: one dataset
    for split, ds in colour_splits().items():
        (splits / f"{split}ing").mkdir(parents=True)
        ds.to_parquet(str(splits / f"{split}ing" / "0000.parquet"))
    assert {k: len(v) for k, v in load_dataset("hf", str(splits)).splits.items()} == {"train": 18, "val": 0, "test": 9}


def test_images_that_all_fail_to_read_say_which_and_why(tmp_path, tiny_clip_config, tiny_clip_weights, torch_threads):
    """Images a parquet file names by path, deleted since: `no readable image in split 'train'
    of hf`, and nothing of which image or why."""
    images = tmp_path / "images"
    images.mkdir()
    rows = colour_rows(TRAIN_PER_CLASS)
    for i, image in enumerate(rows["image"]):
        image.save(images / f"{i}.png")
    paths = [str(images / f"{i}.png") for i in range(len(rows["image"]))]
    root = save_parquet(datasets.DatasetDict(train=datasets.Dataset.from_dict(
        {"image": paths, "label": rows["label"]}, features=features())), tmp_path / "by_path")
    for path in paths:
        Path(path).unlink()
    result = run_cli(*eval_args(tiny_clip_config, tiny_clip_weights, "--dataset", "hf", "--data-root", root))
    assert result.exit_code == 1, result.output
    assert re.search(r"no readable image in split 'train' of hf: 6 failed, e\.g\. train/\d+ \(.*No such file",
                     result.output), result.output


@pytest.mark.parametrize("kind", ["saved", "parquet"])
def test_a_hugging_face_folder_given_as_another_kind_says_hf(folders, kind):
    """`--dataset coop` on it said to use imagefolder, which said `.../train has no class sub-folders`."""
    for other in ("coop", "imagefolder"):
        with pytest.raises(PromptclimbError, match=rf"{re.escape(str(folders[kind]))} reads as a Hugging Face "
                                                   r"dataset: --dataset hf$"):
            load_dataset(other, str(folders[kind]))


def test_test_falls_back_to_validation_then_to_a_held_out_part_of_train(tmp_path):
    datasets.DatasetDict(train=colour_dataset(TRAIN_PER_CLASS),
                         validation=colour_dataset(2, offset=5)).save_to_disk(str(tmp_path / "val"))
    data = load_dataset("hf", str(tmp_path / "val"))
    assert len(data.splits["test"]) == 6 and all(i.startswith("validation/") for i, _ in data.splits["test"])

    colour_dataset(10).save_to_disk(str(tmp_path / "lone"))  # one Dataset, no DatasetDict: it is train
    data = load_dataset("hf", str(tmp_path / "lone"))
    train, test = (data.splits[s] for s in ("train", "test"))
    assert sorted(c for _, c in test) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # 30% of each class of 10
    assert len(train) == 21 and not {i for i, _ in train} & {i for i, _ in test}
    assert load_dataset("hf", str(tmp_path / "lone")).splits == data.splits  # deterministic


def test_a_string_label_column_is_named_and_its_values_are_the_classes(tmp_path):
    rows = colour_rows(4)
    rows["label"] = [CLASSES[c].replace("_", "-") for c in rows["label"]]
    datasets.Dataset.from_dict(rows, features=features(datasets.Value("string"))).save_to_disk(str(tmp_path / "s"))
    with pytest.raises(PromptclimbError, match="no ClassLabel column .*--label-column"):
        load_dataset("hf", str(tmp_path / "s"))
    data = load_dataset("hf", str(tmp_path / "s"), label_column="label")
    assert data.classnames == ["blue lake", "green field", "red square"]  # sorted values, readable
    assert data.load_image(next(i for i, c in data.splits["train"] if c == 2)).getpixel((20, 20))[0] > 150


def test_wordnet_id_labels_start_from_their_wordnet_names(tmp_path):
    ids = ["n02085620", "n02123045", "n09193705"]  # as ImageNet subsets label their classes
    label = datasets.ClassLabel(names=ids)
    datasets.Dataset.from_dict(colour_rows(4), features=features(label)).save_to_disk(str(tmp_path / "c"))
    assert load_dataset("hf", str(tmp_path / "c")).classnames == ["Chihuahua", "tabby", "alp"]
    rows = colour_rows(4)
    rows["label"] = [ids[c] for c in rows["label"]]
    datasets.Dataset.from_dict(rows, features=features(datasets.Value("string"))).save_to_disk(str(tmp_path / "s"))
    assert load_dataset("hf", str(tmp_path / "s"), label_column="label").classnames == ["Chihuahua", "tabby", "alp"]


def test_a_names_file_finds_an_hf_class_by_its_label_as_the_data_spells_it(tmp_path):
    """`folder,name` lines name an hf class by its label as a folder names an imagefolder class:
    `n02085620,small dog` was refused as 'not a class of this dataset (Chihuahua, ...)'."""
    from promptclimb.evaluators.scorer import start_names

    label = datasets.ClassLabel(names=["n02085620", "n02123045", "n09193705"])
    datasets.Dataset.from_dict(colour_rows(4), features=features(label)).save_to_disk(str(tmp_path / "c"))
    data = load_dataset("hf", str(tmp_path / "c"))
    names = tmp_path / "names.txt"
    names.write_text("n09193705,mountain\nn02085620,small dog\ntabby,cat\n")
    assert start_names(data, str(names)) == ("small dog", "cat", "mountain")


def test_an_integer_label_column_leaves_rows_labelled_minus_one_out(tmp_path):
    rows = colour_rows(4)
    rows["label"] = [5 + c for c in rows["label"]]
    rows["label"][:3] = [-1, -1, -1]  # no label, as some test splits have
    datasets.Dataset.from_dict(rows, features=features(datasets.Value("int64"))).save_to_disk(str(tmp_path / "i"))
    data = load_dataset("hf", str(tmp_path / "i"), label_column="label")
    assert data.classnames == ["5", "6", "7"]  # not a class "1" made of the -1 rows
    assert sum(len(items) for items in data.splits.values()) == len(rows["label"]) - 3


def test_a_string_label_column_leaves_rows_labelled_minus_one_out(tmp_path):
    """Integer labels read as text (a CSV, a cast) keep -1 for "no label": it had become a class '1'."""
    rows = colour_rows(4)
    rows["label"] = [READABLE[c] for c in rows["label"]]
    rows["label"][:3] = ["-1", "-1", "-1"]
    datasets.Dataset.from_dict(rows, features=features(datasets.Value("string"))).save_to_disk(str(tmp_path / "s"))
    data = load_dataset("hf", str(tmp_path / "s"), label_column="label")
    assert data.classnames == ["blue lake", "green field", "red square"]
    assert sum(len(items) for items in data.splits.values()) == len(rows["label"]) - 3


@pytest.mark.parametrize("feature, minus, plus", [("int64", -1, 1), ("string", "-1", "1"), ("string", "-1", "+1")])
def test_labels_minus_one_and_one_are_refused_as_one_class_and_no_label(tmp_path, feature, minus, plus):
    """Two classes as -1 and 1: left with one class, the search was refused as for a folder
    'that holds one sub-folder per class', which said nothing of the -1 rows."""
    rows = colour_rows(4)
    rows["label"] = [minus if c == 0 else plus for c in rows["label"]]
    datasets.Dataset.from_dict(rows, features=features(datasets.Value(feature))).save_to_disk(str(tmp_path / "b"))
    with pytest.raises(PromptclimbError, match=r"has one class \(\+?1\) besides rows labelled -1, which mean 'no "
                                               r"label' .* give the other class another label"):
        load_dataset("hf", str(tmp_path / "b"), label_column="label")


def test_a_data_root_that_is_a_parquet_file_says_it_is_not_a_folder(tmp_path, folders):
    parquet = next(folders["parquet"].rglob("*.parquet"))
    with pytest.raises(PromptclimbError, match=rf"^data folder {parquet} is a file, not a folder$"):
        load_dataset("hf", str(parquet))


def test_a_float_label_column_leaves_rows_labelled_nan_out(tmp_path):
    rows = colour_rows(4)  # as pandas writes an integer column with missing labels: floats, NaN
    rows["label"] = [float("nan") if i % 4 == 0 else float(c) for i, c in enumerate(rows["label"])]
    datasets.Dataset.from_dict(rows, features=features(datasets.Value("float64"))).save_to_disk(str(tmp_path / "f"))
    data = load_dataset("hf", str(tmp_path / "f"), label_column="label")
    assert data.classnames == ["0.0", "1.0", "2.0"]  # not a class 'nan' for each unlabelled row
    assert sum(len(items) for items in data.splits.values()) == len(rows["label"]) - 3


@pytest.mark.parametrize("train_label, test_label", [("string", "ClassLabel"), ("int64", "string"),
                                                     ("ClassLabel", "string")])
def test_a_test_split_labelled_as_strings_where_train_is_not_is_refused_in_one_line(tmp_path, train_label,
                                                                                  test_label):
    def split(per_class, label):  # as `class_encode_column` on one split alone leaves them
        rows = colour_rows(per_class)
        if label == "string":
            rows["label"] = [CLASSES[c] for c in rows["label"]]
        feature = datasets.ClassLabel(names=CLASSES) if label == "ClassLabel" else datasets.Value(label)
        return datasets.Dataset.from_dict(rows, features=features(feature))

    datasets.DatasetDict(train=split(4, train_label), test=split(2, test_label)).save_to_disk(str(tmp_path / "m"))
    with pytest.raises(PromptclimbError, match=f"split 'test' of .* has its label column 'label' as "
                                               f"{'strings' if test_label == 'string' else test_label}, the train "
                                               "split as .*: encode the splits alike"):
        load_dataset("hf", str(tmp_path / "m"), label_column="label")


def test_a_test_split_of_plain_integers_beside_a_class_label_train_split_is_read_by_value(tmp_path):
    test = datasets.Dataset.from_dict(colour_rows(2), features=features(datasets.Value("int64")))
    datasets.DatasetDict(train=colour_dataset(4), test=test).save_to_disk(str(tmp_path / "m"))
    data = load_dataset("hf", str(tmp_path / "m"))
    assert data.classnames == READABLE and [c for _, c in data.splits["test"]] == [0, 0, 1, 1, 2, 2]

def encoded_one_by_one(tmp_path: Path) -> Path:
    """String labels turned into a ClassLabel split by split (`class_encode_column` on each,
    as after loading CSV or parquet splits separately): test, without blue_lake, numbers its
    classes green_field=0, red_square=1, where train has blue_lake=0, green_field=1. The same
    data with its string labels is beside it, in `strings`."""
    def strings(per_class, offset, keep):
        rows = colour_rows(per_class, offset)
        picked = [i for i, c in enumerate(rows["label"]) if c in keep]
        rows = {"image": [rows["image"][i] for i in picked], "label": [CLASSES[rows["label"][i]] for i in picked]}
        return datasets.Dataset.from_dict(rows, features=features(datasets.Value("string")))

    data = datasets.DatasetDict(train=strings(TRAIN_PER_CLASS, 0, (0, 1, 2)), test=strings(TEST_PER_CLASS, 7, (0, 1)))
    data.save_to_disk(str(tmp_path / "strings"))
    encoded = datasets.DatasetDict({split: ds.class_encode_column("label") for split, ds in data.items()})
    assert encoded["train"].features["label"].names != encoded["test"].features["label"].names
    encoded.save_to_disk(str(tmp_path / "encoded"))
    return tmp_path / "encoded"


def test_each_splits_class_label_integers_are_read_by_its_own_names(tmp_path):
    data = load_dataset("hf", str(encoded_one_by_one(tmp_path)))
    assert data.classnames == ["blue lake", "green field", "red square"]  # train's ClassLabel (sorted)
    assert sorted(c for _, c in data.splits["test"]) == [1, 1, 1, 2, 2, 2]
    for image_id, label in data.splits["train"] + data.splits["test"]:
        red, green, blue = data.load_image(image_id).getpixel((20, 20))
        assert data.classnames[label] == {0: "red square", 1: "green field", 2: "blue lake"}[
            max(range(3), key=lambda ch: (red, green, blue)[ch])]


def test_a_test_class_that_train_lacks_is_refused(tmp_path):
    data = datasets.DatasetDict(train=colour_dataset(TRAIN_PER_CLASS), test=datasets.Dataset.from_dict(
        colour_rows(1), features=features(datasets.ClassLabel(names=["red_square", "green_field", "purple_sky"]))))
    data.save_to_disk(str(tmp_path / "extra"))
    with pytest.raises(PromptclimbError, match="split 'test' of .* has images of class\\(es\\) 'purple_sky' that "
                                               "the train split's ClassLabel 'label' does not have"):
        load_dataset("hf", str(tmp_path / "extra"))


def test_a_test_split_without_the_label_column_is_passed_over(tmp_path):
    images = datasets.Dataset.from_dict({"image": colour_rows(2, offset=9)["image"]},
                                        features=datasets.Features({"image": datasets.Image()}))
    datasets.DatasetDict(train=colour_dataset(TRAIN_PER_CLASS), validation=colour_dataset(2, offset=5),
                         test=images).save_to_disk(str(tmp_path / "competition"))
    with pytest.warns(UserWarning, match="split 'test' has no column 'label' \\(no labels\\); not used as the test"):
        data = load_dataset("hf", str(tmp_path / "competition"))
    assert len(data.splits["test"]) == 6 and all(i.startswith("validation/") for i, _ in data.splits["test"])

    datasets.DatasetDict(train=colour_dataset(10), test=images).save_to_disk(str(tmp_path / "no-validation"))
    with pytest.warns(UserWarning, match="split 'test' has no column 'label'"):
        data = load_dataset("hf", str(tmp_path / "no-validation"))
    assert sorted(c for _, c in data.splits["test"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # 30% of train held out
    assert all(i.startswith("train/") for split in data.splits.values() for i, _ in split)


def test_importing_the_datasets_module_does_not_import_hugging_face_datasets():
    code = "import sys, promptclimb.evaluators.datasets; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- eval and search

@pytest.mark.parametrize("kind", ["saved", "parquet"])
def test_eval_cli_on_a_folder(folders, kind, tiny_clip_config, tiny_clip_weights, torch_threads):
    args = eval_args(tiny_clip_config, tiny_clip_weights, "--dataset", "hf", "--data-root", folders[kind])
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["info"]["dataset"]["classes"] == 3
    assert out["info"]["split"]["sizes"] == {"train": 6, "val": 6, "test": 9}
    assert [r["template"] for r in out["results"]] == ["a photo of a {}.", "a {}."]
    assert "hf/test: encoded 9 images" in result.stderr
    again = run_cli(*args)  # same data, same identity: the image features are read back
    assert again.exit_code == 0 and "hf/test: reused 9 cached image features" in again.stderr
    assert [r["accuracy"] for r in json.loads(again.stdout)["results"]] == [r["accuracy"] for r in out["results"]]


def test_eval_cli_on_a_hub_dataset_from_the_offline_cache(hf_cache, tiny_clip_config, tiny_clip_weights,
                                                          torch_threads):
    for name in ("hf:owner/colours", "hf:owner/colours:default"):
        result = run_cli(*eval_args(tiny_clip_config, tiny_clip_weights, "--dataset", name))
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert out["info"]["dataset"]["name"] == "hf:owner/colours"  # one spelling of the data (canonical_dataset_name)
        assert out["info"]["split"]["sizes"] == {"train": 6, "val": 6, "test": 9}


def test_eval_cli_column_options(tmp_path, tiny_clip_config, tiny_clip_weights, torch_threads):
    """Two image columns: found ambiguous, then chosen with --image-column (a string label too)."""
    rows = colour_rows(4)
    rows["mask"] = list(reversed(rows["image"]))
    rows["name"] = [CLASSES[c] for c in rows["label"]]
    extra = {"mask": datasets.Image(), "name": datasets.Value("string")}
    datasets.Dataset.from_dict(rows, features=features(**extra)).save_to_disk(str(tmp_path / "two"))
    base = eval_args(tiny_clip_config, tiny_clip_weights, "--dataset", "hf", "--data-root", tmp_path / "two", shots=1)
    result = run_cli(*base)
    assert result.exit_code == 1 and "several image columns (image, mask)" in result.output
    result = run_cli(*base, "--image-column", "image", "--label-column", "name")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["info"]["dataset"]["classes"] == 3
    result = run_cli(*eval_args(tiny_clip_config, tiny_clip_weights, "--dataset", "imagefolder", "--data-root",
                                tmp_path, "--label-column", "name"))
    assert result.exit_code == 1 and "--label-column are for hf datasets" in result.output


@pytest.mark.parametrize("kind", ["saved", "parquet"])
def test_search_on_a_folder(folders, kind, tmp_path, tiny_clip_config, tiny_clip_weights, torch_threads):
    answer = "\n".join(f"{i}. a {w} photo of a {{}}." for i, w in enumerate(["red", "green", "blue", "small"], 1))
    with FakeLLM(script=[answer]) as fake:
        result = run_cli("search", "--dataset", "hf", "--data-root", folders[kind], "--shots", "2",
                         "--backbone", tiny_clip_config, "--weights", tiny_clip_weights, "--device", "cpu",
                         "--iterations", "1", "--search", "template", "--resets", "1", "--pool-sample", "4", "--runs-dir", tmp_path / "runs",
                         "--name", kind, "--json", env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert fake.count == 1 and summary["counts"]["llm_answers"] == 1
    assert 0.0 <= summary["best"]["accuracy"]["test"] <= 1.0
    assert "red square" in fake.requests[0]["messages"][0]["content"]  # the ClassLabel names, readable
    config = json.loads((tmp_path / "runs" / kind / "config.json").read_text())
    assert config["evaluator"]["dataset"]["identity"] == load_dataset("hf", str(folders[kind])).identity
    assert config["evaluator"]["split"]["sizes"] == {"train": 6, "val": 6, "test": 9}


def test_search_on_a_hub_dataset_names_its_folder_and_records_the_columns(hf_cache, tmp_path, tiny_clip_config,
                                                                          tiny_clip_weights, torch_threads):
    """No --name: the run folder is named from hf:owner/colours (no '/' or ':' in it); the
    column options are recorded, and a resume may not change them."""
    runs = tmp_path / "runs"
    base = ["--backbone", tiny_clip_config, "--weights", tiny_clip_weights, "--device", "cpu", "--runs-dir", runs]
    with FakeLLM(script=["a red photo of a {}.\na {} thing."]) as fake:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
        result = run_cli("search", "--dataset", "hf:owner/colours", "--label-column", "label", "--shots", "2",
                         "--iterations", "1", "--search", "template", "--resets", "1", "--pool-sample", "4", *base, env=env)
        assert result.exit_code == 0, result.output
        [run] = list(runs.iterdir())
        assert run.name.endswith("-hf_owner_colours-2shot")
        assert json.loads((run / "config.json").read_text())["evaluator_args"]["label_column"] == "label"
        refused = run_cli("search", "--resume", run.name, "--label-column", "other", *base, env=env)
    assert refused.exit_code == 1 and "--label-column other (the run's: label)" in refused.output


# ---------------------------------------------------------------- bad input: one line each

def saved(tmp_path: Path, name: str, data) -> Path:
    data.save_to_disk(str(tmp_path / name))
    return tmp_path / name


def no_image_column(tmp_path):
    rows = {"path": ["a.png", "b.png"], "label": [0, 1]}
    feats = datasets.Features({"path": datasets.Value("string"), "label": datasets.ClassLabel(names=CLASSES)})
    return ["--data-root", saved(tmp_path, "noimg", datasets.Dataset.from_dict(rows, features=feats))]


def string_labels(tmp_path):
    rows = colour_rows(2)
    rows["label"] = [str(c) for c in rows["label"]]
    return ["--data-root", saved(tmp_path, "strlabel",
                                 datasets.Dataset.from_dict(rows, features=features(datasets.Value("string"))))]


def labels_reading_alike(tmp_path):
    rows = colour_rows(2)
    alike = datasets.ClassLabel(names=["red_square", "red-square", "blue_lake"])  # the first two: 'red square'
    return ["--data-root", saved(tmp_path, "alike", datasets.Dataset.from_dict(rows, features=features(alike)))]


def no_train_split(tmp_path):
    return ["--data-root", saved(tmp_path, "notrain", datasets.DatasetDict(test=colour_dataset(2)))]


def missing_column(tmp_path):
    return ["--data-root", saved(tmp_path, "cols", colour_dataset(2)), "--image-column", "picture"]


def not_a_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    return ["--data-root", tmp_path / "empty"]


BAD = {
    "no image column": (no_image_column, "has no image column (no Image feature among: path (Value(string)), "
                                         "label (ClassLabel); image bytes or paths become one with "
                                         "ds.cast_column(COLUMN, datasets.Image()) before it is saved)"),
    "string label without --label-column": (string_labels, "has no ClassLabel column (columns: image (Image), "
                                                           "label (Value(string))); name the label column with "
                                                           "--label-column"),
    "no train split": (no_train_split, "has no 'train' split (it has: test)"),
    "missing column": (missing_column, "--image-column 'picture': no such column"),
    "not a dataset folder": (not_a_dataset, "is neither a save_to_disk folder"),
    # its labels are no folders: named as what they are (it said "folder 'red-square'")
    "labels reading alike": (labels_reading_alike, "the dataset's own class names: label 'red-square' (class 2) reads "
                                                   "as 'red square', the same as label 'red_square' (class 1): give "
                                                   "your own names with --classnames FILE (one name per line in class "
                                                   "order, or 'label,name' lines)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_folders_say_what_is_wrong_in_one_line(case, tmp_path, tiny_clip_config, tiny_clip_weights):
    make, message = BAD[case]
    result = run_cli(*eval_args(tiny_clip_config, tiny_clip_weights, "--dataset", "hf", *make(tmp_path)))
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_hub_dataset_not_in_the_offline_cache_says_where_it_looked(hf_cache, tiny_clip_config,
                                                                     tiny_clip_weights):
    result = run_cli(*eval_args(tiny_clip_config, tiny_clip_weights, "--dataset", "hf:owner/missing"))
    assert result.exit_code == 1, result.output
    assert (f"hf:owner/missing is not in the Hugging Face datasets cache (looked in {hf_cache / 'owner___missing'})"
            " and HF_HUB_OFFLINE is set" in result.output)
    assert "datasets.load_dataset('owner/missing')" in result.output
    configured = run_cli(*eval_args(tiny_clip_config, tiny_clip_weights, "--dataset", "hf:owner/missing:rgb"))
    assert "datasets.load_dataset('owner/missing', 'rgb')" in configured.output  # the config, to fill the cache for
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    for args, message in ((["--dataset", "hf"], "--dataset hf needs --data-root FOLDER"),
                          (["--dataset", "hf:owner/colours:nope"], "config 'nope'")):
        result = run_cli(*eval_args(tiny_clip_config, tiny_clip_weights, *args))
        assert result.exit_code == 1 and message in result.output, result.output
