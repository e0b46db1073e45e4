"""Datasets and few-shot splits: loading, determinism, bad input, EuroSAT offline."""

from __future__ import annotations

import json
import re
import os
import random
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_image_folder

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.evaluators.datasets import Dataset, load_dataset, make_fewshot_split

REPO = Path(__file__).resolve().parents[1]


def _synthetic(n_classes=4, per_class=20, with_val=False, name="synthetic") -> Dataset:
    train = [(f"c{c}/img{i:03d}", c) for c in range(n_classes) for i in range(per_class)]
    val = [(f"c{c}/val{i:03d}", c) for c in range(n_classes) for i in range(6)] if with_val else []
    test = [(f"c{c}/test{i:03d}", c) for c in range(n_classes) for i in range(5)]
    return Dataset(name=name, classnames=[f"class {c}" for c in range(n_classes)], description="things",
                   load_image=lambda i: None, splits={"train": train, "val": val, "test": test})


def test_imagefolder_loads_classes_and_splits(image_folder):
    data = load_dataset("imagefolder", str(image_folder))
    assert data.classnames == ["blue lake", "green field", "red square"]  # sorted folders, readable
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 12, "val": 6, "test": 6}  # 8 per class cut 50/20/30 (4/2/2)
    all_ids = [i for v in data.splits.values() for i, _ in v]
    assert len(all_ids) == len(set(all_ids)) == 24
    image = data.load_image(data.splits["test"][0][0])
    assert image.size == (40, 40)


def test_imagefolder_with_split_folders(tmp_path):
    make_image_folder(tmp_path / "d" / "train", per_class=3)
    make_image_folder(tmp_path / "d" / "test", per_class=2)
    data = load_dataset("imagefolder", str(tmp_path / "d"))
    assert Counter(c for _, c in data.splits["train"]) == {0: 3, 1: 3, 2: 3}
    assert all(i.startswith("test/") for i, _ in data.splits["test"]) and len(data.splits["test"]) == 6
    assert data.splits["val"] == []


# ImageNet-style folders (WordNet IDs) and Stanford Dogs' (an ID, then the name).
WORDNET_FOLDERS = {"n02085620": (220, 30, 30), "n02123045": (30, 200, 40), "n09193705": (30, 40, 220)}
DOGS_FOLDERS = {"n02085620-Chihuahua": (220, 30, 30), "n02085782-Japanese_spaniel": (30, 200, 40)}


def test_wordnet_id_folders_start_from_their_wordnet_names_and_keep_their_folders(tmp_path):
    data = load_dataset("imagefolder", str(make_image_folder(tmp_path / "inet", classes=WORDNET_FOLDERS)))
    assert data.classnames == ["Chihuahua", "tabby", "alp"]
    assert data.folders == ["n02085620", "n02123045", "n09193705"]  # `folder,name` lines find them so
    dogs = load_dataset("imagefolder", str(make_image_folder(tmp_path / "dogs", classes=DOGS_FOLDERS)))
    assert dogs.classnames == ["Chihuahua", "Japanese spaniel"]


def test_wordnet_ids_that_share_a_name_take_another_or_keep_their_id():
    from promptclimb.evaluators.datasets import published_names

    # ImageNet's two cranes (the bird, the machine) have one WordNet name each; of its two
    # maillots one has a synonym (tank suit), so the other keeps the plain name
    assert published_names(["n02012849", "n03126707", "n03710637", "n03710721"]) == [
        "crane (n02012849)", "crane (n03126707)", "maillot", "tank suit"]
    # an ID WordNet's table lacks, and names that are not IDs, are made readable as before
    assert published_names(["n00000001", "sea_lake", "Ankle-boot"]) == ["n00000001", "sea lake", "Ankle boot"]
    # one space between words (Hugging Face's fashion_mnist ClassLabel read 'T   shirt / top')
    assert published_names(["T - shirt / top", "sea__lake"]) == ["T shirt / top", "sea lake"]


def test_a_classnames_file_names_wordnet_folders_by_their_ids(tmp_path):
    from promptclimb.agent.core.classnames import read_classnames

    data = load_dataset("imagefolder", str(make_image_folder(tmp_path / "inet", classes=WORDNET_FOLDERS)))
    names = tmp_path / "names.txt"
    names.write_text("n02123045,tabby cat\nn09193705,mountain meadow\nChihuahua,chihuahua dog\n")
    assert read_classnames(str(names), data.classnames, folders=data.folders) == (
        "chihuahua dog", "tabby cat", "mountain meadow")


def test_split_folders_with_other_classes_are_refused_naming_them(tmp_path):
    """The refusal said only that the classes differ, leaving the user to compare two lists
    of folders by eye."""
    make_image_folder(tmp_path / "d" / "train", per_class=3)
    test = make_image_folder(tmp_path / "d" / "test", per_class=2)
    (test / "red_square").rename(test / "red-square")
    with pytest.raises(PromptclimbError, match=r"test has different class folders than .*train "
                                               r"\(only in test/: 'red-square'; not in it: 'red_square'\)$"):
        load_dataset("imagefolder", str(tmp_path / "d"))


def test_fewshot_split_shapes_and_disjointness():
    data = _synthetic()
    for shots, want_val in [(1, 1), (4, 4), (8, 4)]:
        split = make_fewshot_split(data, shots, seed=3)
        assert Counter(c for _, c in split.splits["train"]) == {c: shots for c in range(4)}
        assert Counter(c for _, c in split.splits["val"]) == {c: want_val for c in range(4)}
        # no val pool: val comes from the rest of train, never overlapping the shots
        assert not set(split.splits["train"]) & set(split.splits["val"])
        assert split.splits["test"] == sorted(data.splits["test"])
    with_val = make_fewshot_split(_synthetic(with_val=True), 2, seed=3)
    assert all("/val" in i for i, _ in with_val.splits["val"])


def test_fewshot_split_is_deterministic_and_seeded():
    data = _synthetic()
    a = make_fewshot_split(data, 2, seed=1)
    b = make_fewshot_split(data, 2, seed=1)
    shuffled = _synthetic()
    random.Random(0).shuffle(shuffled.splits["train"])  # listing order must not matter
    c = make_fewshot_split(shuffled, 2, seed=1)
    assert a.splits == b.splits == c.splits
    assert make_fewshot_split(data, 2, seed=2).splits["train"] != a.splits["train"]
    assert make_fewshot_split(_synthetic(name="other"), 2, seed=1).splits["train"] != a.splits["train"]


def test_fewshot_split_is_the_same_in_another_python_process():
    """Python's hash() is salted per process; our draws must not depend on it."""
    code = (
        "import json, sys; sys.path.insert(0, 'tests');"
        "from test_datasets import _synthetic; from promptclimb.evaluators.datasets import make_fewshot_split;"
        "print(json.dumps(make_fewshot_split(_synthetic(), 3, seed=7).splits['train']))"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                             check=True)
        outputs.add(run.stdout.strip())
    here = json.dumps([list(x) for x in make_fewshot_split(_synthetic(), 3, seed=7).splits["train"]])
    assert outputs == {here}


def test_unlabeled_images_come_from_the_rest_of_the_train_pool_without_labels():
    from promptclimb.evaluators.datasets import UNLABELED

    data = _synthetic()  # 20 train images per class, no val pool: val comes from the rest of train
    plain = make_fewshot_split(data, 2, seed=1)
    split = make_fewshot_split(data, 2, seed=1, unlabeled=30)
    assert "unlabeled" not in plain.splits
    assert {k: v for k, v in split.splits.items() if k != "unlabeled"} == plain.splits  # train, val as before
    drawn = split.splits["unlabeled"]
    assert len(drawn) == len({i for i, _ in drawn}) == 30 and {label for _, label in drawn} == {UNLABELED}
    in_split = {i for s in ("train", "val") for i, _ in split.splits[s]}
    assert not {i for i, _ in drawn} & in_split
    assert {i for i, _ in drawn} <= {i for i, _ in data.splits["train"]}
    assert make_fewshot_split(data, 2, seed=1, unlabeled=30).splits == split.splits
    everything = make_fewshot_split(data, 2, seed=1, unlabeled=10_000).splits["unlabeled"]
    assert len(everything) == 4 * (20 - 2 - 2)  # all that is left, when fewer than asked
    small = _synthetic(per_class=2)  # 1 shot and 1 val image per class leave nothing
    with pytest.raises(PromptclimbError, match=r"synthetic: no image of its train pool is left outside the 1-shot "
                                               r"split .*--metric balance.*use another --metric"):
        make_fewshot_split(small, 1, seed=1, unlabeled=5)


def test_shots_larger_than_smallest_class_names_it():
    data = _synthetic()
    data.splits["train"] = [x for x in data.splits["train"] if not (x[1] == 2 and x[0] >= "c2/img003")]
    assert not data.splits.get("val")  # val is drawn from what train leaves: one image a class
    with pytest.raises(PromptclimbError, match=r"class 'class 2'.*\(3 training images\).*allows --shots 2 \(one "
                                               r"image a class is left for validation\)"):
        make_fewshot_split(data, 5, seed=1)
    with pytest.warns(UserWarning, match="fewer than 2 validation images for 1 class"):  # class 2 has 1 left
        split = make_fewshot_split(data, 2, seed=1)  # what it says runs, every class with its val image
    assert sorted({c for _, c in split.splits["val"]}) == list(range(len(data.classnames)))
    data.splits["val"] = [(f"v/{c}", c) for c in range(4)]  # a val split of its own: train's all
    with pytest.raises(PromptclimbError, match=r"\(3 training images\); the smallest class allows --shots 3$"):
        make_fewshot_split(data, 5, seed=1)
    data.splits["train"] = [x for x in data.splits["train"] if x[1] != 2]  # a label only test has
    with pytest.raises(PromptclimbError, match=r"class 'class 2' of synthetic has no training images \(only its test "
                                               r"images have this label\)$"):
        make_fewshot_split(data, 1, seed=1)


def test_an_image_folder_with_a_parquet_file_in_it_is_an_image_folder(tmp_path, image_folder):
    """A stray .parquet file (Hugging Face's ImageFolder keeps its metadata in one) made the
    folder read as a Hugging Face dataset, refused."""
    (image_folder / "metadata.parquet").write_bytes(b"PAR1")
    (image_folder / "red_square" / "deep").mkdir()
    (image_folder / "red_square" / "deep" / "x.parquet").write_bytes(b"PAR1")
    with pytest.warns(UserWarning, match=r"left out 1 file\(s\) of a kind not read as an image: \.parquet \(1\)"):
        data = load_dataset("imagefolder", str(image_folder))
    assert data.classnames == ["blue lake", "green field", "red square"]


def test_missing_and_empty_inputs(tmp_path, image_folder):
    with pytest.raises(PromptclimbError, match="does not exist"):
        load_dataset("imagefolder", str(tmp_path / "nowhere"))
    with pytest.raises(PromptclimbError, match="needs --data-root"):
        load_dataset("imagefolder", None)
    with pytest.raises(PromptclimbError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    (image_folder / "empty_class").mkdir()
    with pytest.raises(PromptclimbError, match="no readable images: empty_class$"):
        load_dataset("imagefolder", str(image_folder))
    (image_folder / "empty_class" / "IMG_0001.HEIC").write_bytes(b"not read")  # a phone's: said, not "unreadable"
    with pytest.raises(PromptclimbError, match=r"no readable images: empty_class \(files there: \.heic; the images "
                                               r"read are \.avif, \.bmp, "):
        load_dataset("imagefolder", str(image_folder))


@pytest.mark.parametrize("dataset", ["imagefolder", "coop"])
def test_a_data_root_that_is_a_file_says_so(tmp_path, dataset):
    """Given from the API (the command's click.Path refuses it first), it said 'does not exist'."""
    (tmp_path / "images.zip").write_bytes(b"PK")
    with pytest.raises(PromptclimbError, match=r"^data folder .*images.zip is a file, not a folder$"):
        load_dataset(dataset, str(tmp_path / "images.zip"))


def test_a_folder_that_is_not_a_classification_task_is_refused_saying_why(tmp_path):
    one = make_image_folder(tmp_path / "one", classes={"cat": (200, 40, 40)})
    with pytest.raises(PromptclimbError, match=r"has 1 class \(cat\); a classifier needs at least 2 \(is --data-root"):
        load_dataset("imagefolder", str(one))
    halves = tmp_path / "halves"  # train/ and val/, but no test/: not two classes named train and val
    for split in ("train", "val"):
        make_image_folder(halves / split, per_class=3)
    with pytest.raises(PromptclimbError, match=r"holds train, val/ only: split folders need train/ and test/"):
        load_dataset("imagefolder", str(halves))
    classes = make_image_folder(tmp_path / "vehicles", classes={"train": (9, 9, 9), "car": (90, 9, 9)})
    assert load_dataset("imagefolder", str(classes)).classnames == ["car", "train"]  # a class may be named train
    single = make_image_folder(tmp_path / "single", per_class=3)
    for extra in sorted((single / "blue_lake").iterdir())[1:]:
        extra.unlink()  # one class with one image: it would have no test image, and test accuracy leave it out
    with pytest.raises(PromptclimbError, match=r"class folder\(s\) with a single image: blue_lake \(1\) \(a folder of "
                                               r"class folders is split per class"):
        load_dataset("imagefolder", str(single))


def test_a_split_with_no_validation_image_is_refused_before_anything_is_encoded(tmp_path):
    two = make_image_folder(tmp_path / "two", per_class=2)  # 1 for train, 1 for test, none for val
    data = load_dataset("imagefolder", str(two))
    with pytest.raises(PromptclimbError, match=r"no image is left for the validation split at --shots 1 \(a folder"):
        make_fewshot_split(data, 1, seed=0)
    assert make_fewshot_split(load_dataset("imagefolder", str(make_image_folder(tmp_path / "three", per_class=3))),
                              1, seed=0).splits["val"]


def test_unreadable_images_are_skipped_counted_and_named(image_folder):
    (image_folder / "red_square" / "broken.png").write_bytes(b"not a png at all")
    (image_folder / "blue_lake" / "cut.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\): .*broken.png"):
        data = load_dataset("imagefolder", str(image_folder))
    ids = {i for v in data.splits.values() for i, _ in v}
    assert len(ids) == 24 and not any("broken" in i or "cut" in i for i in ids)


def test_an_image_too_large_for_pillow_to_open_is_skipped_as_unreadable(image_folder, monkeypatch):
    """Over 179 million pixels Pillow refuses to open an image (DecompressionBombError): the
    scan of the folder ended in a traceback. The limit is lowered here so a small image passes it."""
    from PIL import Image

    Image.new("L", (100, 100), 100).save(image_folder / "red_square" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000)  # refused past twice that: 100x100, not the 40x40 others
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): red_square/huge.png"):
        data = load_dataset("imagefolder", str(image_folder))
    assert not any("huge" in i for v in data.splits.values() for i, _ in v)


def test_what_a_system_leaves_in_an_image_folder_is_not_data(image_folder):
    """A Finder zip's __MACOSX/ became a class ('class folder(s) with no readable images:
    __MACOSX'); a Synology share's @eaDir/ and a hidden .thumbnails/ inside a class were read
    as its images (a thumbnail of a test image could sit in train); AppleDouble `._x.png`
    files were warned of one by one; `.avif` photos were passed over, unsaid."""
    from PIL import Image

    (image_folder / "__MACOSX" / "red_square").mkdir(parents=True)
    (image_folder / "__MACOSX" / "red_square" / "._a.png").write_bytes(b"\x00\x05\x16\x07")
    for hidden in ("@eaDir", ".thumbnails"):
        (image_folder / "blue_lake" / hidden).mkdir()
        Image.new("RGB", (8, 8)).save(image_folder / "blue_lake" / hidden / "thumb.png")
    (image_folder / "blue_lake" / "._photo.png").write_bytes(b"\x00\x05\x16\x07")
    (image_folder / "blue_lake" / "more").mkdir()
    Image.new("RGB", (8, 8), (0, 0, 200)).save(image_folder / "blue_lake" / "more" / "deep.avif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unreadable to warn of
        data = load_dataset("imagefolder", str(image_folder))
    ids = sorted(i for v in data.splits.values() for i, _ in v)
    assert data.classnames == ["blue lake", "green field", "red square"]
    assert len(ids) == 25 and "blue_lake/more/deep.avif" in ids
    assert not any("thumb" in i or "._" in i for i in ids)


def test_coop_folder(tmp_path):
    root = tmp_path / "coop"
    make_image_folder(root / "images", per_class=4)
    classes = sorted(p.name for p in (root / "images").iterdir())
    entries = {s: [] for s in ("train", "val", "test")}
    for c, name in enumerate(classes):
        files = sorted((root / "images" / name).iterdir())
        for f, split in zip(files, ["train", "train", "val", "test"]):
            entries[split].append([f"{name}/{f.name}", c, name])
    (root / "split_mine.json").write_text(json.dumps(entries))
    data = load_dataset("coop", str(root))
    assert data.classnames == ["blue lake", "green field", "red square"]
    with pytest.raises(PromptclimbError, match=rf"a CoOp split file is in {re.escape(str(root))}: --dataset coop "
                                               rf"--data-root {re.escape(str(root))}$"):  # the folder above it given
        load_dataset("coop", str(root.parent))
    (root / "split_other.json").write_text(json.dumps(entries))  # two: the one taken is said
    with pytest.warns(UserWarning, match=r"holds 2 split files \(split_mine.json, split_other.json\): using "
                                         r"split_mine.json"):
        load_dataset("coop", str(root))
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "val": 3, "test": 3}
    assert data.load_image(data.splits["val"][0][0]).size == (40, 40)


@pytest.mark.parametrize("content, message", [
    ([1, 2, 3], r"is not a CoOp split file \(expected an object with train, val and test lists, not list\)"),
    ({"train": [["a/1.png", 0, "a"]], "test": None}, r"has no 'train' or no 'test' entries"),
    ({"train": [["a/1.png", -1, "a"]], "test": [["a/2.png", 0, "a"]]}, r"bad entry .* \(a label is 0 or more\)"),
    ({"train": [["a/1.png", 0, "a"]], "test": [["a/2.png", 2, "c"]]}, r"no entry has label 1: labels must run"),
    ({"train": {"a": 1}, "test": []}, r"'train' is not a list of \[path, label, classname\] entries"),
    # one label, two names: the first was taken, unsaid
    ({"train": [["a/1.png", 0, "a"], ["a/3.png", 0, "Shirt"]], "test": [["a/2.png", 0, "a"]]},
     r"label 0 is named both 'a' and 'Shirt' \(entry \['a/3.png', 0, 'Shirt'\] in 'train'\): one class name per label"),
])
def test_a_malformed_coop_split_file_is_one_line_naming_it(tmp_path, content, message):
    root = tmp_path / "coop"
    make_image_folder(root / "images", per_class=2)
    (root / "split_mine.json").write_text(json.dumps(content))
    with pytest.raises(PromptclimbError, match=message) as caught:
        load_dataset("coop", str(root))
    assert "split_mine.json" in str(caught.value)


# ---------------------------------------------------------------- EuroSAT

# The download itself (progress, MD5, atomic unpacking, the mirror, offline, two processes at
# once) is tested against a local HTTP server in tests/test_eurosat_download.py.


def test_eurosat_data_root_without_data_does_not_download(monkeypatch, tmp_path):
    import promptclimb.evaluators.eurosat as eurosat

    monkeypatch.setattr(eurosat, "download_archive", lambda t: pytest.fail("must not download"))
    with pytest.raises(PromptclimbError, match=str(tmp_path)):
        load_dataset("eurosat", str(tmp_path))


def _fake_eurosat(root: Path, per_class=5) -> Path:
    from promptclimb.evaluators.eurosat import FOLDERS

    colours = {name: (20 * i, 255 - 20 * i, 100) for i, name in enumerate(FOLDERS)}
    make_image_folder(root / "2750", per_class=per_class, classes=colours, size=64)
    return root


def test_eurosat_from_a_folder_starts_from_its_folder_names_and_documented_split(tmp_path):
    root = _fake_eurosat(tmp_path / "eurosat")
    data = load_dataset("eurosat", str(root))
    # the published labels (its folder names) are the start; CoOp's names are the set `coop`
    assert data.classnames[0] == "AnnualCrop" and data.classnames[-1] == "SeaLake"
    assert data.named_sets["coop"][0] == "Annual Crop Land" and data.named_sets["coop"][-1] == "Sea or Lake"
    assert len(data.classnames) == 10
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 20, "val": 10, "test": 20}  # 5 -> 2/1/2
    assert "promptclimb-50-20-30" in data.identity
    import shutil

    shutil.rmtree(root / "2750" / "River")  # a copy that lost a class folder: not "EuroSAT images not found"
    with pytest.raises(PromptclimbError, match=rf"^{re.escape(str(root / '2750'))} has 9 of EuroSAT's 10 class "
                                               r"folders; missing: River$"):
        load_dataset("eurosat", str(root))
    assert data.load_image(data.splits["train"][0][0]).size == (64, 64)


def test_eurosat_identity_changes_when_an_image_is_replaced_in_place(tmp_path):
    from PIL import Image

    root = _fake_eurosat(tmp_path / "eurosat")
    before = load_dataset("eurosat", str(root))
    first = before.splits["train"][0][0]
    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / "2750" / first)  # same name, other picture
    after = load_dataset("eurosat", str(root))
    assert after.splits == before.splits and after.identity != before.identity


def test_eurosat_uses_split_zhou_when_present(tmp_path):
    from promptclimb.evaluators.eurosat import FOLDERS, SPLIT_FILE

    root = _fake_eurosat(tmp_path / "eurosat")
    entries = {"train": [], "val": [], "test": []}
    for c, name in enumerate(FOLDERS):
        files = sorted((root / "2750" / name).iterdir())
        entries["train"] += [[f"{name}/{f.name}", c, name] for f in files[:3]]
        entries["val"].append([f"{name}/{files[3].name}", c, name])
        entries["test"].append([f"{name}/{files[4].name}", c, name])
    (root / SPLIT_FILE).write_text(json.dumps(entries))
    data = load_dataset("eurosat", str(root))
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 30, "val": 10, "test": 10}
    assert "coop-zhou" in data.identity


def test_a_16_bit_image_is_scaled_to_8_bits_not_clipped(tmp_path):
    """A 16-bit grayscale PNG (PIL's I;16) is scaled to 8 bits: PIL's own conversion clips
    it at 255, which made a 16-bit photo a few shades of white."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(np.uint16)
    for c in ("dark", "light"):
        for i in range(4):
            (tmp_path / c).mkdir(exist_ok=True)
            Image.fromarray(ramp).save(tmp_path / c / f"{i}.png")
    data = load_dataset("imagefolder", str(tmp_path))
    image = data.load_image(data.splits["test"][0][0])
    pixels = np.asarray(image)
    assert image.mode == "L" and pixels.min() == 0 and pixels.max() == 255
    assert len(np.unique(pixels)) == 256  # the whole ramp, not clipped at 255 of 65535
    assert np.array_equal(np.asarray(image.convert("RGB"))[..., 0], pixels)  # what a backbone's preprocess reads
