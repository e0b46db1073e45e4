"""Backbones: exact padding truncation, identities, offline errors, project backbones."""

from __future__ import annotations

import pytest

from promptclimb.agent.core.errors import PromptclimbError

TEXTS = [
    "a photo of a cat.",
    "a centered satellite photo of Herbaceous Vegetation Land, seen from far above the clouds.",
    "x",
    "a photo of a {} with braces and punctuation!?",
    "an image of a very very very very very very very very very very long class name indeed.",
]


def _model(name, torch_threads, seed=0):
    import open_clip

    torch_threads.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None).eval()


@pytest.mark.parametrize("name", ["pc-tiny-vit", "pc-tiny-custom-text"])
def test_truncated_text_features_equal_open_clip_encode_text(name, tiny_clip_config, torch_threads):
    import open_clip
    import torch

    from promptclimb.evaluators.backbones import encode_text_truncated, supports_truncation
    from promptclimb.evaluators.backbones.compat import text_tower

    model = _model(name, torch_threads)
    assert supports_truncation(model)
    tokens = open_clip.get_tokenizer(name)(TEXTS)
    assert tokens.shape[1] == 77

    seen_lengths = []
    tower = text_tower(model)[0]
    hook = tower.transformer.register_forward_hook(lambda m, args, out: seen_lengths.append(args[0].shape[1]))
    with torch.no_grad():
        reference = model.encode_text(tokens)
        truncated = encode_text_truncated(model, tokens)
    hook.remove()

    longest = int((tokens != 0).sum(dim=1).max())
    assert seen_lengths == [77, longest]  # the truncated pass really ran on fewer positions
    assert (reference - truncated).abs().max().item() < 1e-5


def test_backbone_encode_texts_matches_open_clip_in_any_chunking(tiny_clip_config, tiny_clip_weights, torch_threads):
    import open_clip
    import torch
    import torch.nn.functional as F

    from promptclimb.evaluators.backbones import load_backbone

    backbone = load_backbone(tiny_clip_config, weights=tiny_clip_weights, device="cpu")
    assert backbone.truncate
    backbone.text_chunk = 2  # rows are sorted by length and chunked: order must come back right
    with torch.no_grad():
        reference = F.normalize(backbone.model.encode_text(open_clip.get_tokenizer(tiny_clip_config)(TEXTS)), dim=-1)
    features = backbone.encode_texts(TEXTS)
    assert features.dtype == torch.float32 and features.shape == (len(TEXTS), 32)
    assert (features - reference).abs().max().item() < 1e-5
    assert torch.allclose(features.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)


def test_bidirectional_text_tower_falls_back_to_encode_text(tiny_clip_config, torch_threads):
    from promptclimb.evaluators.backbones import supports_truncation

    assert not supports_truncation(_model("pc-tiny-bidirectional", torch_threads))


def test_identity_follows_the_weights_file(tiny_clip_config, tiny_clip_weights, tmp_path, torch_threads):
    from safetensors.torch import save_file

    from promptclimb.evaluators.backbones import load_backbone

    a = load_backbone(tiny_clip_config, weights=tiny_clip_weights, device="cpu")
    b = load_backbone(tiny_clip_config, weights=tiny_clip_weights, device="cpu")
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in _model(tiny_clip_config, torch_threads, seed=1).state_dict().items()},
              str(other))
    c = load_backbone(tiny_clip_config, weights=other, device="cpu")
    assert a.identity == b.identity
    assert a.identity != c.identity
    assert tiny_clip_config in a.identity


def test_weights_for_another_architecture_is_a_clear_error(tiny_clip_config, tiny_clip_weights):
    from promptclimb.evaluators.backbones import load_backbone

    with pytest.raises(PromptclimbError, match="could not load weights file"):
        load_backbone("pc-tiny-wide", weights=tiny_clip_weights, device="cpu")


def test_bad_arguments(tiny_clip_config, tmp_path):
    from promptclimb.evaluators.backbones import load_backbone

    with pytest.raises(PromptclimbError, match="not both"):
        load_backbone(tiny_clip_config, pretrained="openai", weights="x.pt")
    with pytest.raises(PromptclimbError, match="does not exist"):
        load_backbone(tiny_clip_config, weights=tmp_path / "missing.safetensors")
    with pytest.raises(PromptclimbError, match="Did you mean: RN50"):
        load_backbone("RN5O")
    with pytest.raises(PromptclimbError, match="known tags for RN50: openai"):
        load_backbone("RN50", pretrained="no-such-tag")


def test_offline_pretrained_tag_fails_fast_with_what_to_do(monkeypatch):
    import open_clip

    from promptclimb.evaluators.backbones import loading

    monkeypatch.setattr(loading, "_cached_pretrained_file", lambda cfg: None)  # as on a fresh machine
    monkeypatch.setattr(open_clip, "create_model",
                        lambda *a, **k: pytest.fail("must not start a download when offline"))
    with pytest.raises(PromptclimbError) as info:  # HF_HUB_OFFLINE=1 (conftest)
        loading.load_backbone("RN50", pretrained="openai", device="cpu")
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "--weights FILE" in message and "--backbone demo" in message

    # Not flagged offline, but the host does not answer: same kind of message, no download.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(loading, "_reachable", lambda host, *a, **k: False)
    with pytest.raises(PromptclimbError, match="huggingface.co is not reachable"):
        loading.load_backbone("RN50", pretrained="openai", device="cpu")


def tiny_factory(device):
    """A project backbone factory (as evaluators.demo.model:build_demo_backbone)."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("pc-tiny-vit", pretrained=None)
    preprocess = open_clip.image_transform(32, is_train=False)
    return model, preprocess, open_clip.get_tokenizer("pc-tiny-vit")


def test_project_backbone_factory(tiny_clip_config, monkeypatch, torch_threads):
    from PIL import Image

    import promptclimb.evaluators.backbones as backbones

    monkeypatch.setitem(backbones.PROJECT_BACKBONES, "tiny-project", "test_backbones:tiny_factory")
    backbone = backbones.load_backbone("tiny-project", device="cpu")
    assert backbone.identity.startswith("tiny-project:")
    assert backbone.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)
    image = backbone.preprocess(Image.new("RGB", (50, 40), (10, 200, 30)))
    features = backbone.encode_images(image[None])
    assert features.shape == (1, 32) and abs(float(features.norm()) - 1) < 1e-5
    assert backbone.encode_texts(["a photo of a cat."]).shape == (1, 32)
    with pytest.raises(PromptclimbError, match="ships its own weights"):
        backbones.load_backbone("tiny-project", weights="w.pt")


def test_the_demo_backbones_identity_does_not_depend_on_the_thread_count():
    """The identity keys the feature cache and a resume's evaluator check: a float sum over
    the weights made it differ between 1 and 2 threads (a sweep's Ray worker and the CLI)."""
    import torch

    from promptclimb.evaluators.backbones import load_backbone

    threads = torch.get_num_threads()
    try:
        identities = set()
        for n in (1, 2):
            torch.set_num_threads(n)
            identities.add(load_backbone("demo", device="cpu").identity)
    finally:
        torch.set_num_threads(threads)
    assert len(identities) == 1


# ---------------------------------------------------------------- shared prefixes

PREFIX_TEMPLATES = ["a photo of a {}.", "a photo of the {}, seen from far away.", "{} seen from above.",
                    "{}", "itap of a {}", "a centered satellite photo of {}"]
PREFIX_CLASSES = ["cat", "Herbaceous Vegetation Land", "x", "sea or lake", "a very very very long class name",
                  "Cat"]
EXTRA_CONFIGS = {  # tiny text towers with other block settings
    "pc-tiny-layerscale-eos": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                               "patch_size": 8, "head_width": 16},
                               "text_cfg": {"width": 32, "heads": 2, "layers": 2, "ls_init_value": 0.5,
                                            "pool_type": "eos", "eos_id": 49407}},
    "pc-tiny-custom-block": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                             "patch_size": 8, "head_width": 16},
                             "text_cfg": {"width": 32, "heads": 2, "layers": 2, "block_type": "custom",
                                          "qk_norm": True}},
}


@pytest.fixture
def extra_configs(tiny_clip_config, tmp_path):
    import json

    from promptclimb.evaluators.backbones import register_model_configs

    for name, config in EXTRA_CONFIGS.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
        register_model_configs(tmp_path / f"{name}.json")


@pytest.mark.parametrize("name", ["pc-tiny-vit", "pc-tiny-custom-text", "pc-tiny-layerscale-eos"])
@pytest.mark.parametrize("chunk", [64, 3])
def test_shared_prefix_features_equal_open_clip_encode_text(name, chunk, extra_configs, torch_threads):
    import open_clip
    import torch

    from promptclimb.evaluators.backbones import encode_text_shared_prefix, supports_shared_prefix
    from promptclimb.evaluators.backbones.text import _pool_index, _prefix_groups

    model = _model(name, torch_threads)
    assert supports_shared_prefix(model)
    texts = [t.format(c) for t in PREFIX_TEMPLATES for c in PREFIX_CLASSES] + TEXTS
    tokens = open_clip.get_tokenizer(name)(texts)
    with torch.no_grad():
        reference = model.encode_text(tokens)
        shared = encode_text_shared_prefix(model, tokens, chunk=chunk)  # chunk 3: many blocks and chunks
    assert (reference - shared).abs().max().item() < 1e-5

    # The prefixes really are shared: one template's texts are one group, its prefix
    # "<sot> a photo of a", and every row keeps at least its pooled token as suffix.
    group, prefix_len = _prefix_groups(tokens, _pool_index(model, tokens))
    photo = group[:len(PREFIX_CLASSES)]
    assert (photo == photo[0]).all() and int(prefix_len[photo[0]]) == 5
    assert (prefix_len[group] <= _pool_index(model, tokens)).all()
    assert len(prefix_len) < len(texts) / 3


def test_shared_prefix_falls_back_for_other_text_towers(extra_configs, torch_threads):
    import torch
    import torch.nn.functional as F

    from promptclimb.evaluators.backbones import load_backbone, supports_shared_prefix

    assert not supports_shared_prefix(_model("pc-tiny-bidirectional", torch_threads))
    assert not supports_shared_prefix(_model("pc-tiny-custom-block", torch_threads))  # custom attention
    with pytest.warns(UserWarning, match="random weights"):
        backbone = load_backbone("pc-tiny-custom-block", device="cpu")
    assert backbone.truncate and not backbone.shared_prefix
    texts = [t.format(c) for t in PREFIX_TEMPLATES for c in PREFIX_CLASSES]
    with torch.no_grad():
        reference = F.normalize(backbone.model.encode_text(backbone.tokenizer(texts)), dim=-1)
    assert (backbone.encode_texts(texts) - reference).abs().max().item() < 1e-5


def test_evaluator_scores_unchanged_by_shared_prefixes(tiny_clip_config, tiny_clip_weights, image_folder, tmp_path,
                                                       torch_threads):
    import torch

    from promptclimb.evaluators import build_evaluator
    from promptclimb.evaluators.features import TextFeatureCache

    evaluators = []
    for shared in (True, False):
        evaluator = build_evaluator("imagefolder", 2, 1, tiny_clip_config, weights=str(tiny_clip_weights),
                                    data_root=str(image_folder), device="cpu")
        assert evaluator.backbone.shared_prefix
        evaluator.backbone.shared_prefix = shared
        evaluator.text_cache = TextFeatureCache(evaluator.backbone.identity, root=tmp_path / f"texts-{shared}")
        evaluators.append(evaluator)
    scores = [e.score(PREFIX_TEMPLATES, splits=("train", "test")) for e in evaluators]
    for a, b in zip(*scores):
        assert a.accuracy == b.accuracy and a.loss == pytest.approx(b.loss, abs=1e-5)
    embeddings = [e.class_embeddings(PREFIX_TEMPLATES) for e in evaluators]
    assert torch.allclose(*embeddings, atol=1e-5)


def test_a_random_weights_backbone_leaves_the_processs_logging_as_it_was(tiny_clip_config, torch_threads, capfd):
    """open_clip's `logging.warning` gave the root logger a stderr handler (printing even with
    the API's echo=None), after which a notebook's own `logging.basicConfig` did nothing."""
    import logging

    from promptclimb.evaluators.backbones import load_backbone

    handlers = list(logging.root.handlers)
    logging.root.handlers[:] = []  # a fresh process's root logger: no handler
    try:
        with pytest.warns(UserWarning, match="random weights"):
            load_backbone(tiny_clip_config, device="cpu")
        assert logging.root.handlers == []
        assert "No pretrained weights loaded" not in capfd.readouterr().err
    finally:
        logging.root.handlers[:] = handlers
