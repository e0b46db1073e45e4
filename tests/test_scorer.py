"""ClipEvaluator: scores match a direct computation, the caches are used, bad input is refused."""

from __future__ import annotations

import pytest
from PIL import Image

from promptclimb.agent.core.errors import PromptclimbError

TEMPLATES = ["a photo of a {}.", "a {} thing.", "a blurry picture of the {}, seen from far away."]


@pytest.fixture
def make_evaluator(tiny_clip_config, tiny_clip_weights, image_folder, torch_threads):
    from promptclimb.evaluators import build_evaluator

    def make(shots=2, seed=1, weights=tiny_clip_weights):
        return build_evaluator("imagefolder", shots, seed, tiny_clip_config, weights=str(weights),
                               data_root=str(image_folder), device="cpu")

    return make


def count_calls(monkeypatch, obj, name):
    calls = []
    original = getattr(obj, name)

    def spy(self, arg):  # patched on the class: every instance, also ones made later
        calls.append(len(arg))
        return original(self, arg)

    monkeypatch.setattr(obj, name, spy)
    return calls


def test_scores_equal_a_direct_computation(make_evaluator):
    import torch
    import torch.nn.functional as F

    evaluator = make_evaluator()
    backbone, data = evaluator.backbone, evaluator.dataset
    scores = evaluator.score(TEMPLATES, splits=("train", "test"))
    assert len(scores) == len(TEMPLATES)
    for split in ("train", "test"):
        items = evaluator.split.splits[split]
        images = torch.stack([backbone.preprocess(data.load_image(i)) for i, _ in items])
        labels = torch.tensor([c for _, c in items])
        with torch.no_grad():
            image_features = F.normalize(backbone.model.encode_image(images), dim=-1)
        for template, score in zip(TEMPLATES, scores):
            tokens = backbone.tokenizer([template.format(c) for c in data.classnames])
            with torch.no_grad():
                text_features = F.normalize(backbone.model.encode_text(tokens), dim=-1)
            logits = backbone.logit_scale * image_features @ text_features.T
            assert score.accuracy[split] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
            assert score.loss[split] == pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-4)


def test_prediction_balance_is_the_entropy_of_the_predicted_classes_over_log_c():
    import math

    import torch

    from promptclimb.evaluators.scorer import prediction_balance

    predicted = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 1], [3, 0, 1]])  # [N=4, k=3]: one column per classifier
    balance = prediction_balance(predicted, 4).tolist()
    half = -(2 * 0.5 * math.log(0.5)) / math.log(4)  # two classes, two images each
    assert balance == pytest.approx([1.0, 0.0, half])


def test_the_unlabeled_split_is_scored_by_balance_alone(tiny_clip_config, tiny_clip_weights, image_folder,
                                                         torch_threads):
    import torch
    import torch.nn.functional as F

    from promptclimb.evaluators import build_evaluator
    from promptclimb.evaluators.scorer import prediction_balance

    # 8 images per class cut 4/2/2: 2 shots leave 2 train images per class unused
    evaluator = build_evaluator("imagefolder", 2, 1, tiny_clip_config, weights=str(tiny_clip_weights),
                                data_root=str(image_folder), device="cpu", unlabeled=100)
    assert len(evaluator.split.splits["unlabeled"]) == 6
    scores = evaluator.score(TEMPLATES, splits=("train", "unlabeled"))
    backbone, data = evaluator.backbone, evaluator.dataset
    images = torch.stack([backbone.preprocess(data.load_image(i)) for i, _ in evaluator.split.splits["unlabeled"]])
    with torch.no_grad():
        image_features = F.normalize(backbone.model.encode_image(images), dim=-1)
    for template, score in zip(TEMPLATES, scores):
        assert set(score.accuracy) == set(score.loss) == {"train"}  # no labels, no accuracy
        with torch.no_grad():
            text = F.normalize(backbone.model.encode_text(backbone.tokenizer(
                [template.format(c) for c in data.classnames])), dim=-1)
        predicted = (image_features @ text.T).argmax(1)
        assert score.balance == {"unlabeled": pytest.approx(float(prediction_balance(predicted[:, None], 3)[0]))}
    ensemble = evaluator.score_ensemble(TEMPLATES[:2], splits=("unlabeled",))
    assert set(ensemble.balance) == {"unlabeled"} and not ensemble.accuracy


def test_batch_scores_equal_one_at_a_time(make_evaluator):
    evaluator = make_evaluator()
    together = evaluator.score(TEMPLATES)
    alone = [make_evaluator().score([t])[0] for t in TEMPLATES]
    for a, b in zip(together, alone):
        assert a.accuracy == pytest.approx(b.accuracy) and a.loss == pytest.approx(b.loss, abs=1e-5)


def test_second_run_reads_image_and_text_features_from_the_cache(make_evaluator, monkeypatch):
    from promptclimb.evaluators.backbones import Backbone

    image_calls = count_calls(monkeypatch, Backbone, "encode_images")
    text_calls = count_calls(monkeypatch, Backbone, "encode_texts")
    first = make_evaluator().score(TEMPLATES, splits=("train", "val", "test"))
    assert sum(image_calls) == 18 and text_calls == [len(TEMPLATES) * 3]  # 3 classes, all in one pass

    image_calls.clear()
    text_calls.clear()
    again = make_evaluator()  # a new process would look like this: new objects, same disk cache
    second = again.score(TEMPLATES, splits=("train", "val", "test"))
    assert image_calls == [] and text_calls == []
    assert [s.accuracy for s in first] == [s.accuracy for s in second]

    again.score(TEMPLATES + ["an old photo of a {}."])  # only the new template's strings are encoded
    assert text_calls == [3]


def test_other_weights_or_split_do_not_hit_the_cache(make_evaluator, monkeypatch, tmp_path, torch_threads):
    import open_clip
    from safetensors.torch import save_file

    from promptclimb.evaluators.backbones import Backbone

    make_evaluator().image_features("train")
    calls = count_calls(monkeypatch, Backbone, "encode_images")
    make_evaluator(seed=2).image_features("train")  # other few-shot draw
    assert calls
    calls.clear()
    torch_threads.manual_seed(5)
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model("pc-tiny-vit").state_dict().items()}, str(other))
    make_evaluator(weights=other).image_features("train")
    assert calls


def test_ensemble_and_class_embeddings(make_evaluator):
    import torch

    evaluator = make_evaluator()
    weights = evaluator.class_embeddings(TEMPLATES)
    assert weights.shape == (3, 32)
    assert torch.allclose(weights.norm(dim=-1), torch.ones(3), atol=1e-5)
    single = evaluator.score_ensemble(TEMPLATES[:1], splits=("test", "val"))
    direct = evaluator.score(TEMPLATES[:1], splits=("test", "val"))[0]
    assert single.accuracy == pytest.approx(direct.accuracy) and single.loss == pytest.approx(direct.loss, abs=1e-5)
    features, labels = evaluator.image_features("test")
    assert features.dtype == torch.float32 and labels.dtype == torch.long and len(features) == len(labels) == 6


def test_name_similarity_is_the_cosine_of_the_filled_templates_text_features(make_evaluator):
    import torch
    import torch.nn.functional as F

    evaluator = make_evaluator()
    backbone = evaluator.backbone
    got = evaluator.name_similarity("a sketch of a {}.", "blue jeans", ["blue jeans", "trousers", "red bag"])
    with torch.no_grad():
        text = F.normalize(backbone.model.encode_text(backbone.tokenizer(
            ["a sketch of a blue jeans.", "a sketch of a trousers.", "a sketch of a red bag."])), dim=-1)
    assert got == pytest.approx([1.0, float(text[0] @ text[1]), float(text[0] @ text[2])], abs=1e-5)
    assert len({round(v, 4) for v in got}) == 3  # three different texts, three different similarities


def test_task_and_info(make_evaluator):
    import json

    evaluator = make_evaluator()
    assert evaluator.task.classnames == ("blue lake", "green field", "red square")
    info = json.loads(json.dumps(evaluator.info()))
    assert info["split"]["sizes"] == {"train": 6, "val": 6, "test": 6}
    assert info["backbone"]["identity"] == evaluator.backbone.identity


def test_invalid_templates_are_refused(make_evaluator):
    evaluator = make_evaluator()
    for bad in ["no placeholder", "{} and {}", "{0} photo", "a {name}"]:
        with pytest.raises(PromptclimbError, match="invalid template"):
            evaluator.score([bad])


def test_a_class_whose_few_shots_all_fail_to_decode_is_refused_naming_it(make_evaluator):
    evaluator = make_evaluator()
    lost = {image_id for image_id, label in evaluator.split.splits["train"] if label == 1}
    load = evaluator.dataset.load_image

    def flaky(image_id):
        if image_id in lost:
            raise OSError("image file is truncated")
        return load(image_id)

    evaluator.dataset.load_image = flaky
    name = evaluator.dataset.classnames[1]
    with pytest.warns(UserWarning), pytest.raises(PromptclimbError, match=rf"train: no readable image of class\(es\) "
                                                                          rf"'{name}' \(every one chosen failed"):
        evaluator.image_features("train")
    assert evaluator.image_features("test")[0].shape[0] == len(evaluator.split.splits["test"])  # a class left whole


@pytest.mark.parametrize("error", [OSError("image file is truncated"),
                                   # over 179 million pixels (a CoOp split's or a Hub dataset's image): a traceback
                                   Image.DecompressionBombError("Image size (196000000 pixels) exceeds limit")])
def test_image_that_fails_to_decode_is_skipped_counted_and_named(make_evaluator, error):
    evaluator = make_evaluator()
    broken = evaluator.split.splits["test"][0][0]
    load = evaluator.dataset.load_image

    def flaky(image_id):
        if image_id == broken:
            raise error
        return load(image_id)

    evaluator.dataset.load_image = flaky
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): " + broken):
        features, labels = evaluator.image_features("test")
    assert len(features) == len(labels) == 5
    assert evaluator.skipped["test"] == [broken]
