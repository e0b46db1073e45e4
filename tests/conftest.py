"""Shared test fixtures: no network, no ~/.cache, tiny models, generated images.

- Every test runs with PROMPTCLIMB_HOME in its own tmp dir and HF_HUB_OFFLINE=1.
- `tiny_clip_config`: the open_clip model configs of TINY_CONFIGS, e.g. "pc-tiny-vit" (a 2-layer ViT and a 2-layer
  causal text transformer, 32 wide) registered through open_clip's own mechanism
  (`PROMPTCLIMB_MODEL_CONFIGS` -> `open_clip.add_model_config`).
- `tiny_clip_weights`: generated weights for it, saved to a local .safetensors file.
- `image_folder`: a generated ImageFolder (3 classes x 8 images of distinct colours).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_MODEL = "pc-tiny-vit"
_VISION = {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16}
_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TINY_CONFIG = {"embed_dim": 32, "vision_cfg": _VISION, "text_cfg": _TEXT}
# More tiny configs for the other text-tower kinds: open_clip's CustomTextCLIP (separate
# `text` module; truncation applies) and a bidirectional tower (no causal mask; it does not).
TINY_CONFIGS = {
    TINY_MODEL: TINY_CONFIG,
    "pc-tiny-custom-text": {"embed_dim": 32, "custom_text": True, "vision_cfg": _VISION, "text_cfg": _TEXT},
    "pc-tiny-bidirectional": {"embed_dim": 32, "custom_text": True, "vision_cfg": _VISION,
                              "text_cfg": {**_TEXT, "no_causal_mask": True, "pool_type": "first"}},
    "pc-tiny-wide": {"embed_dim": 48, "vision_cfg": _VISION, "text_cfg": _TEXT},  # other shapes
}
CLASS_COLOURS = {"red_square": (220, 30, 30), "green_field": (30, 200, 40), "blue_lake": (30, 40, 220)}


def require_extra(module: str, extra: str):
    """The optional extra's module, or a skip; a failure where `make test` installed the
    extras (PROMPTCLIMB_REQUIRE_EXTRAS), so CI covers every extra it ships."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("PROMPTCLIMB_REQUIRE_EXTRAS"):
            pytest.fail(f"PROMPTCLIMB_REQUIRE_EXTRAS is set but {module} (the {extra} extra) is not installed",
                        pytrace=False)
        pytest.skip(f"needs the {extra} extra: pip install 'promptclimb[{extra}]'", allow_module_level=True)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Caches go to a per-test folder; nothing touches the network or ~/.cache."""
    home = tmp_path / "promptclimb-home"
    monkeypatch.setenv("PROMPTCLIMB_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(1)  # the test machine's cores are shared
    return torch


@pytest.fixture(scope="session")
def tiny_config_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model-configs")
    for name, config in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def tiny_clip_config(tiny_config_dir, monkeypatch) -> str:
    """The name of the tiny open_clip config, registered for this test (and the CLI)."""
    monkeypatch.setenv("PROMPTCLIMB_MODEL_CONFIGS", str(tiny_config_dir))
    from promptclimb.evaluators.backbones import register_model_configs

    register_model_configs(tiny_config_dir)
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_clip_weights(tiny_config_dir, tmp_path_factory, torch_threads) -> Path:
    """Generated (seeded random) weights of the tiny model, saved as a local .safetensors."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from promptclimb.evaluators.backbones import register_model_configs

    register_model_configs(tiny_config_dir)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_MODEL, pretrained=None)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def make_image_folder(root: Path, per_class: int = 8, classes=CLASS_COLOURS, size: int = 40) -> Path:
    """One sub-folder of PNGs per class; each class a colour, each image a little different."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for c, (name, colour) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(exist_ok=True)
        for i in range(per_class):
            shade = tuple(max(0, min(255, v + 6 * i - 20)) for v in colour)
            image = Image.new("RGB", (size, size), shade)
            image.putpixel((i % size, (3 * i) % size), (255, 255, 255))
            image.save(folder / f"{name}_{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


# The user's cache home, read before the autouse fixture points PROMPTCLIMB_HOME at a tmp dir:
# the 1.1 GB local LLM model is assembled (once) there and reused, not copied into every
# test's home (tests/test_e2e_local.py, tests/test_local_llm_serve.py).
USER_HOME = os.environ.get("PROMPTCLIMB_HOME")


@pytest.fixture(scope="session")
def model_file() -> Path:
    """The embedded local LLM's GGUF, assembled in the user's cache home."""
    from promptclimb.agent.llm.local import ensure_model

    saved = os.environ.get("PROMPTCLIMB_HOME")
    try:
        if USER_HOME is None:
            os.environ.pop("PROMPTCLIMB_HOME", None)
        else:
            os.environ["PROMPTCLIMB_HOME"] = USER_HOME
        return ensure_model()
    finally:
        if saved is None:
            os.environ.pop("PROMPTCLIMB_HOME", None)
        else:
            os.environ["PROMPTCLIMB_HOME"] = saved


@pytest.fixture
def llm(monkeypatch):
    """A scripted LLM (test_search's responder) that the search reaches through the
    environment, as a user's OPENAI_BASE_URL and OPENAI_API_KEY."""
    from fake_llm import FakeLLM
    from test_search import KEY, responder

    with FakeLLM(responder=responder) as fake:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        yield fake
