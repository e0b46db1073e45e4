"""Backbone names, without torch: the project's own backbones, and a check of a name
against them and open_clip's model configs (read as files, open_clip not imported) that
the agent side can make before anything loads a model (`promptclimb sweep`'s grid)."""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import sys
from pathlib import Path

from promptclimb.agent.core.errors import PromptclimbError

# name -> "module:factory"; factory(device) -> (model, preprocess, tokenizer), open_clip semantics.
PROJECT_BACKBONES: dict[str, str] = {
    "demo": "promptclimb.evaluators.demo.model:build_demo_backbone",
    # all-mpnet-base-v2 text tower (768-d): needs the optional extra, pip install 'promptclimb[mpnet]'
    "demo-mpnet": "promptclimb.evaluators.demo.model:build_demo_mpnet_backbone",
}
MODEL_CONFIGS_ENV = "PROMPTCLIMB_MODEL_CONFIGS"
OPEN_CLIP_PREFIXES = ("hf-hub:", "local-dir:")  # a model open_clip finds elsewhere, by its own rules


def _config_names(path: Path) -> set[str]:
    """The model names of open_clip config files (a JSON file or a folder of them), as
    open_clip's own scan takes them: a JSON object with embed_dim, vision_cfg and text_cfg."""
    files = [path] if path.is_file() else sorted(path.glob("*.json")) if path.is_dir() else []
    names = set()
    for file in files:
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if file.suffix == ".json" and isinstance(config, dict) and {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
            names.add(file.stem)
    return names


def known_backbones() -> set[str] | None:
    """Every backbone name loadable here, or None when open_clip is not installed (nothing
    to check against)."""
    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it (and torch)
    if spec is None or not spec.submodule_search_locations:
        return None
    names = set(PROJECT_BACKBONES)
    for folder in spec.submodule_search_locations:
        names |= _config_names(Path(folder) / "model_configs")
    for part in os.environ.get(MODEL_CONFIGS_ENV, "").split(os.pathsep):
        if part.strip():
            names |= _config_names(Path(part.strip()).expanduser())
    open_clip = sys.modules.get("open_clip")  # already imported: configs registered in this process too
    if open_clip is not None:
        names |= set(open_clip.list_models())
    return names


def check_backbone_name(name: str, what: str = "--backbone") -> str:
    """`name` when it names a backbone that loading would find, else PromptclimbError in
    one line, with the close names. What the loader says for a name it cannot find, said
    before any model loads."""
    known = known_backbones()
    if known is None or name.startswith(OPEN_CLIP_PREFIXES) or name in known:
        return name
    close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise PromptclimbError(f"{what} {name!r}: unknown backbone.{hint} Use an open_clip architecture name "
                           "(python -c 'import open_clip; print(open_clip.list_models())'), a project backbone "
                           f"({', '.join(PROJECT_BACKBONES)}), or register a model config with ${MODEL_CONFIGS_ENV}.")
