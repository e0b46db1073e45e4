"""Class names on the CLIP side: each dataset's start names (its published labels) and named
sets, `build_evaluator(classnames=...)`, and ClipEvaluator scoring under other names
(`score(classnames=)`, `score_names`, `class_report`, `score_ensemble(classnames=)`)."""

from __future__ import annotations

import pytest

from promptclimb.agent.core.errors import PromptclimbError

TEMPLATE = "a photo of a {}."
START = ("blue lake", "green field", "red square")  # the image_folder fixture's folders, readable


@pytest.fixture
def make_evaluator(tiny_clip_config, tiny_clip_weights, image_folder, torch_threads):
    from promptclimb.evaluators import build_evaluator

    def make(classnames=None):
        return build_evaluator("imagefolder", 2, 1, tiny_clip_config, weights=str(tiny_clip_weights),
                               data_root=str(image_folder), device="cpu", classnames=classnames)

    return make


def test_start_names_are_the_published_labels_and_the_hand_made_sets_have_names():
    from promptclimb.evaluators.datasets import load_dataset
    from promptclimb.evaluators.demo.fashion_mnist import CLASSNAMES, OFFICIAL_CLASSNAMES

    data = load_dataset("fashion-mnist")
    assert data.classnames == OFFICIAL_CLASSNAMES and data.classnames[0] == "T-shirt/top"
    assert data.named_sets["clean"] == CLASSNAMES


def test_imagefolder_folder_names_become_readable_start_names(tmp_path):
    from conftest import make_image_folder
    from promptclimb.evaluators.datasets import load_dataset

    root = make_image_folder(tmp_path / "f", per_class=3, classes={"Ankle_boot": (1, 2, 3), "sea-lake": (200, 9, 9)})
    assert load_dataset("imagefolder", str(root)).classnames == ["Ankle boot", "sea lake"]


def test_the_evaluator_scores_with_other_names(make_evaluator):
    evaluator = make_evaluator()
    assert evaluator.task.classnames == START
    other = ("lake", "green field", "red square")
    plain = evaluator.score([TEMPLATE], ("train", "test"))[0]
    assert evaluator.score([TEMPLATE], ("train", "test"), classnames=START)[0] == plain
    renamed = evaluator.score([TEMPLATE], ("train", "test"), classnames=other)[0]
    # a one-class change scored in a batch of variants: the same numbers, one new text each
    encoded = []
    encode = evaluator.backbone.encode_texts
    evaluator.backbone.encode_texts = lambda texts: encoded.append(list(texts)) or encode(texts)
    variants = [other, ("blue lake", "meadow", "red square"), START]
    batch = evaluator.score_names(TEMPLATE, variants, ("train", "test"))
    assert encoded == [["a photo of a meadow."]]  # "lake" was encoded for `renamed`; the rest is cached
    assert batch[0].accuracy == pytest.approx(renamed.accuracy) and batch[0].loss == pytest.approx(renamed.loss)
    assert batch[2].accuracy == pytest.approx(plain.accuracy) and batch[2].prob == pytest.approx(plain.prob)
    assert evaluator.score_names(TEMPLATE, []) == []
    # the ensemble with other names; a single template's ensemble is the template
    ensemble = evaluator.score_ensemble([TEMPLATE], ("test",), classnames=other)
    assert ensemble.accuracy["test"] == pytest.approx(renamed.accuracy["test"])


def test_class_report_adds_up_to_the_score(make_evaluator):
    evaluator = make_evaluator()
    other = ("lake", "field", "square")
    for names in (None, other):
        report = evaluator.class_report(TEMPLATE, names, "test")
        score = evaluator.score([TEMPLATE], ("test",), classnames=names)[0]
        assert [r.name for r in report] == list(names or START) and [r.index for r in report] == [0, 1, 2]
        total = sum(r.count for r in report)
        assert total == len(evaluator.image_features("test")[1]) == sum(sum(r.predicted) for r in report)
        assert sum(r.predicted[r.index] for r in report) / total == pytest.approx(score.accuracy["test"])
        assert sum(r.prob * r.count for r in report) / total == pytest.approx(score.prob["test"], abs=1e-6)
        features, labels = evaluator.image_features("test")
        predicted = (features @ evaluator.class_embeddings([TEMPLATE], names).T).argmax(-1)
        for r in report:
            assert sum(r.predicted) == r.count == int((labels == r.index).sum())  # a row of the confusion matrix
            assert list(r.predicted) == [int(((labels == r.index) & (predicted == c)).sum()) for c in range(3)]
            assert 0 <= r.accuracy <= 1 and all(c != r.index and n > 0 for c, n in r.mistaken_for())


def test_names_the_evaluator_refuses(make_evaluator):
    evaluator = make_evaluator()
    for bad, message in [(("a", "b"), "2 names for 3 classes"), (("a", "{}", "c"), "braces"),
                         (("a", "b", "A"), "repeats class 1"), (("a", " ", "c"), "empty")]:
        with pytest.raises(PromptclimbError, match=message):
            evaluator.score([TEMPLATE], classnames=bad)


def test_build_evaluator_takes_start_names_a_set_or_a_file(make_evaluator, tmp_path, monkeypatch):
    names = tmp_path / "names.txt"
    names.write_text("red_square,crimson square\nblue lake,lake\ngreen field,meadow\n")
    evaluator = make_evaluator(str(names))
    assert evaluator.task.classnames == ("lake", "meadow", "crimson square")
    assert evaluator.info()["dataset"]["classnames"] == ["lake", "meadow", "crimson square"]
    assert make_evaluator(("a", "b", "c")).task.classnames == ("a", "b", "c")
    assert make_evaluator("published").task.classnames == START
    # a bad file is refused before the model loads
    import promptclimb.evaluators.backbones as backbones

    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("the model was loaded"))
    names.write_text("lake\nmeadow\n")
    with pytest.raises(PromptclimbError, match=r"names.txt: line 2 is the last, but 1 of the dataset's 3 classes"):
        make_evaluator(str(names))
    with pytest.raises(PromptclimbError, match="2 names for 3 classes"):
        make_evaluator(("a", "b"))


def _coop_of(folder):
    """A CoOp split file beside `folder`'s class folders, its class names the folder names."""
    import json

    classes = sorted(p.name for p in folder.iterdir())
    entries = {"train": [], "val": [], "test": []}
    for c, name in enumerate(classes):
        for f, split in zip(sorted((folder / name).iterdir()), ["train", "train", "train", "test"]):
            entries[split].append([f"{name}/{f.name}", c, name])
    (folder / "split_mine.json").write_text(json.dumps(entries))
    return folder


@pytest.mark.parametrize("dataset", ["imagefolder", "coop"])
@pytest.mark.parametrize("folders, message", [
    (("_", "dog"), r"^the dataset's own class names: folder '_' \(class 1\) reads as an empty name: "
                   r"give your own names with --classnames FILE \("),
    (("a_b", "a-b"), r"^the dataset's own class names: folder 'a_b' \(class 2\) reads as 'a b', the same as folder "
                     r"'a-b' \(class 1\): give your own names with --classnames FILE \("),
])
def test_a_refused_start_name_names_its_folder(tmp_path, monkeypatch, dataset, folders, message):
    """Folder names made readable (`_` and `-` as spaces) can be empty or the same: the
    refusal names the folders the user sees, not only class numbers, and the way out."""
    from conftest import make_image_folder
    import promptclimb.evaluators.backbones as backbones
    from promptclimb.evaluators import build_evaluator

    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("the model was loaded"))
    root = make_image_folder(tmp_path / "f", per_class=4, classes={f: (40 * i, 90, 9) for i, f in enumerate(folders)})
    if dataset == "coop":
        _coop_of(root)
    with pytest.raises(PromptclimbError, match=message) as caught:
        build_evaluator(dataset, 1, 1, "ViT-B-32", data_root=str(root), device="cpu")
    assert "\n" not in str(caught.value)


def test_folder_name_lines_find_each_folder_by_its_own_spelling(tmp_path, tiny_clip_config, tiny_clip_weights,
                                                               torch_threads):
    """Folders `a_b` and `a-b` both read 'a b': a `folder,name` line keyed by a folder's own
    spelling names that folder's class; one keyed by the readable name names both (refused,
    saying which folders), and one keyed by a readable name still works where it is one class."""
    from conftest import make_image_folder
    from promptclimb.evaluators import build_evaluator

    root = make_image_folder(tmp_path / "f", per_class=4,
                             classes={"a_b": (200, 9, 9), "a-b": (9, 200, 9), "sea_lake": (9, 9, 200)})

    def start_names(text):
        names = tmp_path / "names.txt"
        names.write_text(text)
        return build_evaluator("imagefolder", 1, 1, tiny_clip_config, weights=str(tiny_clip_weights),
                               data_root=str(root), device="cpu", classnames=str(names)).task.classnames

    # class order is the sorted folders: a-b, a_b, sea_lake
    assert start_names("a_b,first\na-b,second\nsea lake,water\n") == ("second", "first", "water")
    assert start_names("sea_lake,water\na-b,second\na_b,first\n") == ("second", "first", "water")
    with pytest.raises(PromptclimbError, match=r"line 1: 'a b' matches 2 classes \('a-b', 'a_b'\)"):
        start_names("a b,first\na-b,second\nsea lake,water\n")
    with pytest.raises(PromptclimbError, match=r"line 2 is the last, but 1 of the dataset's 3 classes has no name "
                                               r"\(a_b\)"):
        start_names("a-b,second\nsea lake,water\n")
