"""The package's layers import one way (README, Architecture). Read from the source with
`ast`, so a violation is found whether or not the import would run:

- `agent/core/` (the shared basics) imports nothing of promptclimb outside itself;
- `evaluators/` imports only `agent/core/` of the agent side, and never the LLM client;
- only `agent/cli/` imports click; nothing outside it imports it;
- `agent/` never imports torch (not even inside a function): it reaches CLIP through the
  evaluator factory, `evaluators.build_evaluator`;
- module-level imports have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "evaluators")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["promptclimb", *parts])


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the file; `from X import y`
    counts as X.y when X.y is a module of ours, else X."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    type_checking = {id(n) for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                     for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append((full if full in MODULES else node.module, id(node) in top_level))
    return out


FILES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
MODULES = {module_name(p): p for p in FILES}


def violations(rule) -> list[str]:
    found = []
    for name, path in MODULES.items():
        for target, top in imports_of(path):
            reason = rule(name, target, top)
            if reason:
                found.append(f"{path.relative_to(REPO)} imports {target}: {reason}")
    return found


def inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def core_rule(name, target, top):
    if inside(name, "promptclimb.agent.core") and inside(target, "promptclimb") \
            and not inside(target, "promptclimb.agent.core"):
        return "the shared basics import nothing else of promptclimb"


def evaluators_rule(name, target, top):
    if inside(name, "promptclimb.evaluators") and inside(target, "promptclimb.agent") \
            and not inside(target, "promptclimb.agent.core"):
        return "the CLIP side imports only agent.core of the agent side"
    if inside(name, "promptclimb.evaluators") and target.split(".")[0] in ("openai", "tenacity"):
        return "the CLIP side never talks to an LLM"


def click_rule(name, target, top):
    if target.split(".")[0] in ("click", "rich_click") and not inside(name, "promptclimb.agent.cli"):
        return "only agent.cli imports click"
    if inside(target, "promptclimb.agent.cli") and not inside(name, "promptclimb.agent.cli"):
        return "nothing below the command line imports it"


def torch_rule(name, target, top):
    if inside(name, "promptclimb.agent") and target.split(".")[0] in ("torch", "open_clip", "torchvision"):
        return "the agent never imports torch"


@pytest.mark.parametrize("rule", [core_rule, evaluators_rule, click_rule, torch_rule])
def test_layers_import_one_way(rule):
    assert violations(rule) == []


def test_module_level_imports_have_no_cycle():
    graph = {name: {t for t, top in imports_of(path) if top and t in MODULES and t != name}
             for name, path in MODULES.items()}
    # a package's __init__ importing its own sub-modules is not a cycle through them
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_rules_see_a_violation(tmp_path):
    """The walker itself: an evaluator module importing the command line is reported."""
    bad = REPO / "evaluators" / "_layer_probe.py"
    bad.write_text("from promptclimb.agent.cli import search\nimport click\n")
    try:
        MODULES[module_name(bad)] = bad
        assert any("_layer_probe" in v for v in violations(evaluators_rule))
        assert any("_layer_probe" in v for v in violations(click_rule))
    finally:
        MODULES.pop(module_name(bad), None)
        bad.unlink()


def test_the_readme_architecture_tree_names_every_module_of_both_sides():
    """The README's Architecture tree names agent/'s modules one by one, with those of llm/,
    runs/, sweep/ and tracking/, and evaluators/' (agent/core/, agent/cli/, evaluators/backbones/ and
    demo/ it sums up): agent/tracking.py and sweep/reaper.py were left out of it, then
    runs/compact.py and evaluators/hf.py."""
    import re

    section = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    tree = section.split("```")[1]
    modules = [path.relative_to(REPO).as_posix() for folder in ("agent", "agent/llm", "agent/runs", "agent/sweep",
                                                                "agent/tracking", "evaluators")
               for path in sorted((REPO / folder).glob("*.py")) if path.stem != "__init__"]
    assert modules and [m for m in modules if not re.search(rf"\b{re.escape(Path(m).name)}", tree)] == []


def test_docs_architecture_names_every_module():
    """docs/architecture.md's Layout lists every module of agent/ and evaluators/ (demo/ it
    sums up; backbones/ by concept, without .py): agent/tracking.py, evaluators/hf.py, cli's
    mlflow.py and params.py, core's backbones.py and classnames.py were missing."""
    import re

    layout = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8").split("\n## Layout\n", 1)[1]
    tree = layout.split("```")[1]
    modules = [path for path in sorted((REPO / "agent").rglob("*.py")) + sorted((REPO / "evaluators").glob("*.py"))
               if path.name != "__init__.py" or path.parent.name == "cli"]
    backbones = [path for path in sorted((REPO / "evaluators" / "backbones").glob("*.py")) if path.stem != "__init__"]
    missing = [p for p in modules if not re.search(rf"(?m)^ +{re.escape(p.name)} ", tree)]
    missing += [p for p in backbones if not re.search(rf"(?m)^ +{re.escape(p.stem)} ", tree)]
    assert modules and backbones and [p.relative_to(REPO).as_posix() for p in missing] == []
