"""evaluators/backbones/compat.py: the private torch and open_clip calls the backbones rely
on, one test each. Each runs its function on a tiny real input and checks the outcome the
rest of the package relies on (not that a name exists), so a torch or open_clip release
that changes one of them fails here, under that function's name."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from promptclimb.evaluators.backbones import compat


def tiny(name: str, seed: int = 0):
    import open_clip
    import torch

    torch.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None).eval()


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


needs_onednn = pytest.mark.skipif("not __import__('torch').backends.mkldnn.is_available()",
                                  reason="torch built without oneDNN")


# ---------------------------------------------------------------- torch: oneDNN ops


@needs_onednn
def test_onednn_bf16_supported_agrees_with_the_cpu_flags():
    supported = compat.onednn_bf16_supported()
    assert isinstance(supported, bool)
    flags = cpu_flags()
    if not flags or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("no x86 CPU flags to compare with")
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert supported, "a CPU with bfloat16 instructions reported without them"
    if not flags & {"avx512f", "avx_ne_convert", "amx_bf16"}:
        assert not supported, "a CPU without any bfloat16 path reported with one"


@needs_onednn
def test_onednn_linear_is_f_linear_with_and_without_gelu(torch_threads):
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(1)
    x, w, b = (torch.randn(*shape, generator=generator) for shape in ((5, 7, 16), (24, 16), (24,)))
    with torch.inference_mode():
        assert torch.allclose(compat.onednn_linear(x, w, b), F.linear(x, w, b), atol=1e-5)
        assert torch.allclose(compat.onednn_linear(x, w, None), F.linear(x, w), atol=1e-5)
        got = compat.onednn_linear(x, w, b, gelu=True)
        assert torch.allclose(got, F.gelu(F.linear(x, w, b)), atol=1e-5)
        assert not torch.allclose(got, F.linear(x, w, b), atol=1e-3)  # the GELU really ran
    assert got.shape == (5, 7, 24) and got.dtype == torch.float32


@needs_onednn
def test_onednn_pack_linear_weight_gives_a_layout_the_linear_op_reads(torch_threads):
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(2)
    w, b = torch.randn(24, 16, generator=generator), torch.randn(24, generator=generator)
    dtypes = [torch.float32] + ([torch.bfloat16] if compat.onednn_bf16_supported() else [])
    for dtype in dtypes:
        packed = compat.onednn_pack_linear_weight(w.to(dtype), 12)
        assert packed.is_mkldnn and packed.shape == w.shape and packed.dtype == dtype
        for rows in (12, 5):  # the rows it was packed for, and others
            x = torch.randn(rows, 16, generator=generator)
            with torch.inference_mode():
                got = compat.onednn_linear(x.to(dtype), packed, b.to(dtype)).float()
            atol = 1e-5 if dtype == torch.float32 else 0.1
            assert torch.allclose(got, F.linear(x, w, b), atol=atol), (dtype, rows)


# ---------------------------------------------------------------- torch: building and loading


def test_parameters_on_meta_makes_parameters_on_meta_and_buffers_real(tiny_clip_config, torch_threads):
    import open_clip
    import torch

    register = torch.nn.Module.register_parameter
    with compat.parameters_on_meta():
        layer = torch.nn.Linear(4, 3)
        norm = torch.nn.BatchNorm1d(3)
        frozen = torch.nn.Module()
        frozen.register_parameter("p", torch.nn.Parameter(torch.ones(2), requires_grad=False))
        model = open_clip.create_model(tiny_clip_config, pretrained=None, device=None)  # as loading does
    assert torch.nn.Module.register_parameter is register  # restored
    assert isinstance(layer.weight, torch.nn.Parameter) and layer.weight.is_meta and layer.weight.shape == (3, 4)
    assert layer.bias.is_meta and layer.weight.requires_grad
    assert norm.weight.is_meta and not norm.running_mean.is_meta  # buffers are built for real
    assert frozen.p.is_meta and not frozen.p.requires_grad
    assert all(p.is_meta for p in model.parameters())
    assert model.attn_mask is not None and not model.attn_mask.is_meta  # open_clip's causal mask, a buffer
    assert not torch.nn.Linear(4, 3).weight.is_meta  # outside, as usual


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps (Linux)")
def test_torch_load_mmap_maps_the_file(tmp_path, torch_threads):
    import torch

    path = tmp_path / "t.pt"
    torch.save({"a": torch.arange(100_000.0)}, path)

    def mapped(tensor) -> bool:
        pointer = tensor.untyped_storage().data_ptr()
        for line in Path("/proc/self/maps").read_text().splitlines():
            if line.rstrip().endswith(str(path)):
                low, high = (int(v, 16) for v in line.split()[0].split("-"))
                if low <= pointer < high:
                    return True
        return False

    with compat.torch_load_mmap():
        inside = torch.load(path)["a"]
    outside = torch.load(path)["a"]
    assert torch.equal(inside, outside)
    assert mapped(inside), "torch.load read the file instead of mapping it"
    assert not mapped(outside), "the setting leaked out of the context"


# ---------------------------------------------------------------- open_clip: checkpoints and files


def test_load_checkpoint_with_hands_the_files_tensors_to_the_given_function(tiny_clip_config, tiny_clip_weights,
                                                                           torch_threads):
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(tiny_clip_weights))
    model = tiny(tiny_clip_config, seed=7)  # other weights than the file's
    calls = []

    def record(state_dict, strict=True):
        calls.append((sorted(state_dict), strict))
        return torch.nn.Module.load_state_dict(model, state_dict, strict=strict)

    compat.load_checkpoint_with(model, str(tiny_clip_weights), record)
    assert calls == [(sorted(model.state_dict()), True)]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert "load_state_dict" not in vars(model)  # for this call only

    def refuse(state_dict, strict=True):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"):
        compat.load_checkpoint_with(model, str(tiny_clip_weights), refuse)
    assert "load_state_dict" not in vars(model)


def test_hf_weights_filenames_are_the_files_open_clip_fetches(monkeypatch):
    import open_clip.pretrained

    assert compat.hf_weights_filenames("") == ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    assert compat.hf_weights_filenames("weights.pth") == ["weights.safetensors", "weights.pth"]
    assert compat.hf_weights_filenames("model.safetensors") == ["model.safetensors"]

    # The same files, in the same order, as open_clip's own download from the Hub tries.
    for filename in ("", "weights.bin"):
        tried = []

        def download(repo_id, filename, **kwargs):
            tried.append(filename)
            raise OSError("offline")

        monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", download)
        with pytest.raises(FileNotFoundError):
            open_clip.pretrained.download_pretrained_from_hf("org/repo", filename=filename)
        assert tried == compat.hf_weights_filenames(filename)


def test_image_preprocess_is_open_clips_eval_transform(tiny_clip_config, torch_threads):
    import open_clip
    import torch
    from PIL import Image

    model = tiny(tiny_clip_config)
    preprocess = compat.image_preprocess(model)
    _, _, reference = open_clip.create_model_and_transforms(tiny_clip_config, pretrained=None)
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (50, 40, 3), dtype=torch.uint8, generator=generator).numpy()
    image = Image.fromarray(pixels, "RGB")
    got = preprocess(image)
    assert got.shape == (3, 32, 32) and got.dtype == torch.float32
    assert torch.equal(got, reference(image))


# ---------------------------------------------------------------- open_clip: model layout


def test_text_tower_finds_causal_towers_and_refuses_others(tiny_clip_config, torch_threads):
    import torch

    from promptclimb.evaluators.demo.model import FashionImageTower

    clip = tiny("pc-tiny-vit")
    tower, pool_type, _ = compat.text_tower(clip)
    assert tower is clip and pool_type == "argmax"  # open_clip's default for CLIP text towers
    custom = tiny("pc-tiny-custom-text")
    assert compat.text_tower(custom)[0] is custom.text
    assert compat.text_tower(tiny("pc-tiny-bidirectional")) is None
    assert compat.text_tower(FashionImageTower()) is None

    # What the text module relies on: the mask is causal, and the tower's parts, in order,
    # give the model's own encode_text.
    length = tower.attn_mask.shape[0]
    assert torch.equal(torch.isinf(tower.attn_mask), torch.ones(length, length, dtype=torch.bool).triu(1))
    tokens = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 269, 49407] + [0] * (length - 8)])
    with torch.no_grad():
        x = tower.token_embedding(tokens) + tower.positional_embedding
        x = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask))
        pooled = x[torch.arange(1), tokens.argmax(dim=-1)] @ tower.text_projection
        assert torch.allclose(pooled, clip.encode_text(tokens), atol=1e-5)


def test_plain_attention_blocks_are_residual_attention_then_mlp(tiny_clip_config, torch_threads):
    import torch
    from open_clip.transformer import CustomResidualAttentionBlock

    model = tiny("pc-tiny-vit")
    blocks = model.transformer.resblocks
    assert compat.plain_attention_blocks(blocks)
    assert compat.plain_attention_blocks(model.visual.transformer.resblocks)
    assert not compat.plain_attention_blocks([CustomResidualAttentionBlock(32, 2)])

    # What "plain" promises: x + ls_1(attn(ln_1(x))), then + ls_2(mlp(ln_2(x))).
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(4))
    mask = model.attn_mask[:6, :6]
    block = blocks[0]
    with torch.no_grad():
        y = block.ln_1(x)
        expected = x + block.ls_1(block.attn(y, y, y, need_weights=False, attn_mask=mask)[0])
        expected = expected + block.ls_2(block.mlp(block.ln_2(expected)))
        assert torch.allclose(block(x, attn_mask=mask), expected, atol=1e-6)


def test_vision_tower_is_the_plain_vit_and_nothing_else(tiny_clip_config, torch_threads):
    import torch

    from promptclimb.evaluators.demo.model import FashionImageTower

    model = tiny("pc-tiny-vit")
    visual = compat.vision_tower(model)
    assert visual is model.visual
    assert visual.transformer.batch_first  # the blocks see [B, L, D]
    for block in visual.transformer.resblocks:
        assert isinstance(block.mlp.c_fc, torch.nn.Linear) and isinstance(block.mlp.c_proj, torch.nn.Linear)
        assert len(block.mlp) == 3 and "GELU" in type(block.mlp[1]).__name__  # c_fc, activation, c_proj
    assert compat.vision_tower(FashionImageTower()) is None
    assert compat.vision_tower(object()) is None
    model.visual.output_tokens = True  # a tower that returns its tokens too: not handled
    assert compat.vision_tower(model) is None


def _vit_forward(model, images):
    import torch

    visual = model.visual
    with torch.no_grad():
        x = compat.vit_embeds(visual, images)
        pooled = compat.vit_pool(visual, visual.transformer(x))
        return x, pooled, model.encode_image(images)


def test_vit_embeds_are_what_the_blocks_start_from(tiny_clip_config, torch_threads):
    import torch

    model = tiny("pc-tiny-vit")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    x, pooled, expected = _vit_forward(model, images)
    tokens = model.visual.positional_embedding.shape[0]  # (32 / 8)^2 patches + the class token
    assert x.shape == (3, tokens, 32) and tokens == 17
    assert torch.allclose(pooled @ model.visual.proj, expected, atol=1e-5)


def test_vit_pool_gives_the_feature_before_the_projection(tiny_clip_config, torch_threads):
    import torch

    model = tiny("pc-tiny-vit")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    _, pooled, expected = _vit_forward(model, images)
    assert torch.is_tensor(pooled) and pooled.shape == (3, 32)
    assert torch.allclose(pooled @ model.visual.proj, expected, atol=1e-5)
