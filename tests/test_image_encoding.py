"""Image encoding (issue 18): overlapped decoding gives the features of a plain sequential
encode; the written-out vision blocks give open_clip's encode_image; --precision bf16 keys
the feature caches apart, is recorded in the run and refused on a resume that changes it;
a bad --precision is one readable line; a cached split says how many features it reused."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fake_llm import FakeLLM, WordEvaluator
from test_search import KEY, responder

from promptclimb.agent.core.errors import PromptclimbError


def bf16_cpu() -> bool:
    from promptclimb.evaluators.backbones import cpu_supports_bf16

    return cpu_supports_bf16()


needs_bf16 = pytest.mark.skipif("not bf16_cpu()", reason="this CPU has no bfloat16 instructions")


@pytest.fixture
def make_evaluator(tiny_clip_config, tiny_clip_weights, image_folder, torch_threads):
    from promptclimb.evaluators import build_evaluator

    def make(precision=None, **kwargs):
        evaluator = build_evaluator("imagefolder", 2, 1, tiny_clip_config, weights=str(tiny_clip_weights),
                                    data_root=str(image_folder), device="cpu", precision=precision)
        evaluator.lines = []
        evaluator.echo = evaluator.lines.append
        for key, value in kwargs.items():
            setattr(evaluator, key, value)
        return evaluator

    return make


def sequential_features(evaluator, split):
    """Today's recipe, one image at a time in this thread: open_clip's own encode_image."""
    import torch
    import torch.nn.functional as F

    backbone, data = evaluator.backbone, evaluator.dataset
    rows = []
    with torch.inference_mode():
        for image_id, _ in evaluator.split.splits[split]:
            image = backbone.preprocess(data.load_image(image_id))[None]
            rows.append(F.normalize(backbone.model.encode_image(image), dim=-1))
    return torch.cat(rows)


def test_overlapped_encoding_gives_the_sequential_features(make_evaluator):
    import torch

    evaluator = make_evaluator(image_batch=4)  # 6 images per split: a full batch, then a short one
    assert evaluator.backbone._image_block_weights()  # the written-out vision blocks are in use
    for split in ("train", "test"):
        features, labels = evaluator.image_features(split)
        expected = sequential_features(evaluator, split)
        assert features.shape == expected.shape
        assert torch.allclose(features, expected, atol=1e-6), (features - expected).abs().max()
        assert labels.tolist() == [c for _, c in evaluator.split.splits[split]]


@pytest.mark.parametrize("name,quick_gelu", [("pc-tiny-vit", False), ("pc-tiny-vit", True),
                                             ("pc-tiny-custom-text", False)])
def test_image_blocks_equal_open_clip_encode_image(name, quick_gelu, tiny_clip_config, torch_threads):
    import open_clip
    import torch

    from promptclimb.evaluators.backbones import encode_image_blocks, image_block_weights, supports_image_blocks

    torch.manual_seed(3)
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu).eval()
    assert supports_image_blocks(model)
    images = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        expected = model.encode_image(images)
        got = encode_image_blocks(model, images, image_block_weights(model))
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()


def test_the_onednn_check_is_not_fooled_by_a_first_call_under_autocast(torch_threads):
    import torch

    from promptclimb.evaluators import backbones

    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    backbones.onednn._onednn_linear_works.cache_clear()  # as in a fresh process whose first encode is bf16
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert backbones.onednn._onednn_linear_works()
    finally:
        backbones.onednn._onednn_linear_works.cache_clear()


def test_image_blocks_are_not_used_for_other_towers(torch_threads):
    from promptclimb.evaluators.backbones import supports_image_blocks
    from promptclimb.evaluators.demo.model import FashionImageTower

    assert not supports_image_blocks(FashionImageTower())
    assert not supports_image_blocks(object())


@needs_bf16
def test_bf16_features_are_cached_apart_and_close_to_fp32(make_evaluator, monkeypatch):
    import torch

    from promptclimb.evaluators.backbones import Backbone

    encoded = []
    original = Backbone.encode_images
    monkeypatch.setattr(Backbone, "encode_images", lambda self, batch: encoded.append(self.precision)
                        or original(self, batch))
    exact, _ = make_evaluator().image_features("train")
    assert encoded and set(encoded) == {"fp32"}
    encoded.clear()
    bf16 = make_evaluator("bf16")
    assert bf16.backbone.feature_identity != bf16.backbone.identity
    fast, _ = bf16.image_features("train")  # not read back from the fp32 cache
    assert encoded and set(encoded) == {"bf16"}
    assert not torch.equal(fast, exact) and torch.allclose(fast, exact, atol=5e-2)
    assert bf16.text_cache.folder != make_evaluator().text_cache.folder
    texts = bf16.text_features(["a photo of a red square."])
    assert torch.allclose(texts, make_evaluator().text_features(["a photo of a red square."]), atol=5e-2)
    encoded.clear()
    again, _ = make_evaluator().image_features("train")  # the fp32 cache, untouched by bf16
    assert encoded == [] and torch.equal(again, exact)
    assert bf16.info()["backbone"]["precision"] == "bf16" and "precision" not in make_evaluator().info()["backbone"]


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # autocast objects made without a GPU
def test_on_cuda_the_precision_means_what_it_says_and_bf16_is_keyed_apart(monkeypatch):
    """--precision fp32 on CUDA used to run under bf16 autocast anyway, and cache those features
    under the fp32 key a CPU run then read back (seen on an H100: 0.25 points of test accuracy
    apart). Without a GPU here: what each device and precision would run under, and its key."""
    import torch

    from promptclimb.evaluators import backbones
    from promptclimb.evaluators.backbones import Backbone

    def backbone(device, precision):
        return Backbone("m", "m:1", device, model=None, preprocess=None, tokenizer=None, precision=precision)

    before = torch.backends.cudnn.allow_tf32
    with backbone("cuda", "fp32")._autocast() as context:  # no autocast, and no TF32 convolutions
        assert not isinstance(context, torch.autocast) and torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 == before
    for device in ("cuda", "cuda:1", "cpu"):
        fast = backbone(device, "bf16")._autocast()
        assert isinstance(fast, torch.autocast) and fast.fast_dtype == torch.bfloat16
        assert fast.device == device.split(":")[0]

    keys = {(d, p): backbone(d, p).feature_identity for d in ("cpu", "cuda") for p in ("fp32", "bf16")}
    assert keys[("cpu", "fp32")] == keys[("cuda", "fp32")] == "m:1"  # the same features to ~1e-7
    assert len({keys[("cpu", "bf16")], keys[("cuda", "bf16")], "m:1"}) == 3

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(PromptclimbError, match="needs a GPU with bfloat16 support"):
        backbones.check_precision("bf16", "cuda")
    assert backbones.check_precision("fp32", "cuda") == "fp32"



def test_a_cached_split_says_how_many_features_it_reused(make_evaluator):
    first = make_evaluator()
    first.image_features("test")
    assert len(first.lines) == 1 and "imagefolder/test: encoded 6 images" in first.lines[0], first.lines
    assert "images/s" in first.lines[0]
    second = make_evaluator()
    second.image_features("test")
    assert second.lines == ["imagefolder/test: reused 6 cached image features (pc-tiny-vit fp32)"]


def test_eval_prints_the_reuse_line_on_stderr_only(tiny_clip_config, tiny_clip_weights, image_folder, torch_threads):
    from promptclimb.agent.cli import cli

    args = ["eval", "--dataset", "imagefolder", "--data-root", str(image_folder), "--shots", "2",
            "--backbone", tiny_clip_config, "--weights", str(tiny_clip_weights), "--device", "cpu", "--json"]
    first = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "imagefolder/test: reused 6 cached image features" in again.stderr
    assert json.loads(again.stdout)["results"] == json.loads(first.stdout)["results"]


def test_search_records_the_precision_and_a_resume_may_not_change_it(tmp_path, monkeypatch):
    from promptclimb.agent.cli import cli

    built = []
    evaluator_factory = lambda **kw: built.append(kw) or WordEvaluator(kw["dataset"])
    runs = str(tmp_path / "runs")
    small = ["--iterations", "1", "--search", "template", "--resets", "1", "--pool-sample", "4", "--runs-dir", runs]
    with FakeLLM(responder=responder) as fake:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
        for name, extra in (("half", ["--precision", "bf16"]), ("exact", [])):
            result = CliRunner().invoke(cli, ["search", "--dataset", "toy", "--name", name, *small, *extra], env=env, obj={"evaluator_factory": evaluator_factory})
            assert result.exit_code == 0, result.output
        assert [kw["precision"] for kw in built] == ["bf16", "fp32"]
        for name, precision in (("half", "bf16"), ("exact", "fp32")):
            config = json.loads((tmp_path / "runs" / name / "config.json").read_text())
            assert config["evaluator_args"]["precision"] == precision
        refused = CliRunner().invoke(cli, ["search", "--resume", "exact", "--precision", "bf16", "--runs-dir", runs],
                                     env=env, obj={"evaluator_factory": evaluator_factory})
        assert refused.exit_code == 1 and "--precision bf16 (the run's: fp32)" in refused.output
        assert "Traceback" not in refused.output
        built.clear()
        resumed = CliRunner().invoke(cli, ["search", "--resume", "half", "--runs-dir", runs], env=env, obj={"evaluator_factory": evaluator_factory})
        assert resumed.exit_code == 0, resumed.output
        assert [kw["precision"] for kw in built] == ["bf16"]  # the run's own setting


def test_a_bad_precision_is_one_readable_line(tmp_path, monkeypatch, tiny_clip_config, tiny_clip_weights,
                                              image_folder, torch_threads):
    import promptclimb
    from promptclimb.agent.cli import cli
    from promptclimb.evaluators import backbones

    for command in ("eval", "search"):
        result = CliRunner().invoke(cli, [command, "--dataset", "fashion-mnist", "--precision", "fp16"])
        assert result.exit_code == 2 and "Invalid value for '--precision': 'fp16' is not one of 'fp32', 'bf16'" \
            in result.output, result.output
        assert "Traceback" not in result.output
    with pytest.raises(PromptclimbError, match="--precision 'fp16': expected one of fp32, bf16"):
        promptclimb.evaluate("a photo of a {}.", "imagefolder", 2, backbone=tiny_clip_config,
                             weights=str(tiny_clip_weights), data_root=str(image_folder), device="cpu",
                             precision="fp16")
    with pytest.raises(PromptclimbError, match="precision"):
        promptclimb.search("toy", precision="half", runs_dir=str(tmp_path))
    monkeypatch.setattr(backbones.device, "cpu_supports_bf16", lambda: False)
    result = CliRunner().invoke(cli, ["eval", "--dataset", "imagefolder", "--data-root", str(image_folder),
                                      "--shots", "2", "--backbone", tiny_clip_config, "--weights",
                                      str(tiny_clip_weights), "--device", "cpu", "--precision", "bf16"])
    assert result.exit_code == 1 and "needs a CPU with bfloat16 instructions" in result.output, result.output
    assert "use --precision fp32" in result.output and "Traceback" not in result.output


@needs_bf16
def test_packed_bf16_weights_give_the_plain_ones_features(tiny_clip_config, torch_threads):
    import open_clip
    import torch

    from promptclimb.evaluators.backbones import encode_image_blocks, image_block_weights

    torch.manual_seed(4)
    model = open_clip.create_model("pc-tiny-vit", pretrained=None).eval()
    packed = image_block_weights(model, torch.bfloat16, pack_for=4)
    assert any(w.is_mkldnn for block in packed for w in block if w is not None)
    images = torch.randn(7, 3, 32, 32)  # not the 4 rows it was packed for
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = encode_image_blocks(model, images, image_block_weights(model, torch.bfloat16)).float()
        got = encode_image_blocks(model, images, packed).float()
        expected = model.encode_image(images).float()
    assert torch.allclose(got, plain, atol=1e-5), (got - plain).abs().max()
    assert torch.allclose(got, expected, atol=5e-2 * expected.abs().max())


def test_conv_towers_run_channels_last_with_the_same_features(torch_threads):
    import copy

    import torch
    import torch.nn.functional as F

    from promptclimb.evaluators.backbones import Backbone
    from promptclimb.evaluators.demo.model import FashionImageTower

    class ConvCLIP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = FashionImageTower(width=8, embed_dim=16).eval()
            self.logit_scale = torch.nn.Parameter(torch.tensor(1.0))

        def encode_image(self, images):
            return self.visual(images)

    torch.manual_seed(5)
    model = ConvCLIP()
    reference = copy.deepcopy(model)
    backbone = Backbone(name="conv", identity="conv", device="cpu", model=model, preprocess=None, tokenizer=None)
    images = torch.randn(6, 1, 28, 28)
    got = backbone.encode_images(images)
    with torch.no_grad():
        expected = F.normalize(reference.encode_image(images), dim=-1)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    conv = model.visual.features[4].weight  # (the first one, with 1 input channel, is both layouts at once)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_inference()
