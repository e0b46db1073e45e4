"""The initial pool of templates a restart samples from (`--pool`).

    curated    (the default) three sources, in this order, a template in several kept once:
               `prompts/pools/general.txt` (our hand-written photo templates),
               `prompts/pools/<dataset>.txt` when there is one, and OpenAI's 80 ImageNet
               templates, imported from `open_clip.zero_shot_metadata`;
    captions   `prompts/pools/captions.txt`: generic web-caption sentences, the paper's
               LAION-COCO-style start, far from the task (room to climb);
    FILE       a user's file.

The last one is read without importing torch: `open_clip/__init__.py` imports torch, so
the single file `zero_shot_metadata.py` is located and loaded on its own.
Pool files hold one template per line; blank lines and `#` comments are ignored, a whole
line or the end of one (`a photo of a {}.  # my note`: a `#` after a space and before a
space or the line's end); a `#` joined to a word is the template's (a caption's hashtag,
`{} #ootd`). A line that is not a valid template is a mistake in the file and stops with a
clear message.
"""

from __future__ import annotations

import importlib.util
import random
import re
from dataclasses import dataclass
from pathlib import Path

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import shortened
from promptclimb.agent.core.paths import prompts_dir
from promptclimb.agent.core.templates import template_problem


@dataclass(frozen=True)
class PoolTemplate:
    template: str
    source: str  # "general", the dataset's name, or "openai-imagenet"


POOLS = ("curated", "captions")
# Scored as template text, a note after a template would have been a different prompt.
INLINE_COMMENT = re.compile(r"\s#(?:\s|$)")


def read_pool_file(path: str | Path) -> list[str]:
    """The templates of a pool file; invalid lines are reported (the first five), with their numbers."""
    path = Path(path).expanduser()
    try:
        # utf-8-sig: a BOM (Windows editors write one) would be scored as the first template's text
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptclimbError(f"pool file {path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    templates, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = INLINE_COMMENT.split(line, maxsplit=1)[0].strip()
        if not line or line.startswith("#"):
            continue
        problem = template_problem(line)
        if problem:
            problems.append(f"line {number}: {shortened(line, 80)!r}: {problem}")
        else:
            templates.append(line)
    if problems:  # one line, as every error: the first few, which are what a fix starts from
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise PromptclimbError(f"pool file {path}: {len(problems)} invalid line(s) "
                               f"(a template has exactly one {{}} where the class name goes): {shown}")
    if not templates:
        raise PromptclimbError(f"pool file {path} holds no template (one per line, # for comments)")
    return templates


def openai_imagenet_templates() -> list[str]:
    """The 80 templates of CLIP's ImageNet zero-shot classifier (as `{}` strings), or []
    when open_clip is not installed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(list(spec.submodule_search_locations)[0]) / "zero_shot_metadata.py"
    if not path.exists():
        return []
    module_spec = importlib.util.spec_from_file_location("_promptclimb_open_clip_zero_shot_metadata", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return [make("{}") for make in module.OPENAI_IMAGENET_TEMPLATES]


def load_pool(dataset: str | None = None, pool: str = "curated") -> list[PoolTemplate]:
    """Every template of the pool `pool` (curated, captions or a file), without
    duplicates, in a fixed order."""
    if pool == "captions":
        return dedupe([("captions", read_pool_file(prompts_dir() / "pools" / "captions.txt"))])
    if pool != "curated":
        path = Path(pool).expanduser()
        if not path.is_file():
            raise PromptclimbError(f"--pool: {pool!r} is neither {' nor '.join(POOLS)} nor a file")
        return dedupe([("file", read_pool_file(path))])
    root = prompts_dir() / "pools"
    sources: list[tuple[str, list[str]]] = [("general", read_pool_file(root / "general.txt"))]
    if dataset and (root / f"{dataset}.txt").exists():
        sources.append((dataset, read_pool_file(root / f"{dataset}.txt")))
    sources.append(("openai-imagenet", [t for t in openai_imagenet_templates() if template_problem(t) is None]))
    return dedupe(sources)


def dedupe(sources: list[tuple[str, list[str]]]) -> list[PoolTemplate]:
    seen: set[str] = set()
    pool = []
    for source, templates in sources:
        for template in templates:
            if template not in seen:
                seen.add(template)
                pool.append(PoolTemplate(template, source))
    return pool


def sample_pool(pool: list[PoolTemplate], size: int | None, seed: int, restart: int) -> list[PoolTemplate]:
    """A reproducible sample of `size` templates for one restart (the whole pool when size
    is None, 0 or larger than the pool), kept in pool order."""
    if not size or size >= len(pool):
        return list(pool)
    rng = random.Random(f"pool:{seed}:{restart}")
    chosen = sorted(rng.sample(range(len(pool)), size))
    return [pool[i] for i in chosen]
