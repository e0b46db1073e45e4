"""What `pip install promptclimb` puts into a user's environment: one top-level name.

PyPI has unrelated packages called `agent`, `evaluators` and `prompts`; installed side by
side with ours they would overwrite each other's files. So: build the wheel from this
working tree (setuptools' PEP 517 hook, offline, the backend this venv has), install it with
pip `--no-deps` into a fresh venv that sees the test venv's packages for its dependencies,
and look at what landed at the top of site-packages and whether the installed command
works from a folder that is not the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What is not part of a build: the repository's ignored folders, its history, the top-level
# runs/ (agent/runs/ is source).
_IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


def NOT_SOURCE(folder, names):
    return set(_IGNORED(folder, names)) | ({"runs"} if Path(folder) == REPO else set())


def build_wheel(out: Path, work: Path) -> Path:
    """The wheel of the working tree, built from a copy (a build writes build/ and
    *.egg-info beside the sources; the repository is not touched)."""
    source = work / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    code = ("import contextlib, io, sys, setuptools.build_meta as backend\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    name = backend.build_wheel(sys.argv[1])\n"
            "print(name)\n")
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    # a folder Python could import that pyproject.toml does not list: setuptools warns it may
    # leave its files out of wheels to come
    assert "would be ignored" not in done.stderr, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


def test_the_wheel_installs_one_top_level_name_and_the_command_works(tmp_path):
    wheel = build_wheel(tmp_path / "dist", tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"promptclimb", "promptclimb-0.1.0.dist-info"}
    for data in ("promptclimb/prompts/meta/system.j2", "promptclimb/prompts/pools/general.txt",
                 "promptclimb/prompts/report/report.html.j2", "promptclimb/evaluators/demo/data/fashion_mnist_subset.npz"):
        assert data in names, f"{data} is missing from the wheel"
    assert not [n for n in names if n.startswith(("promptclimb/tests/", "promptclimb/bench/", "promptclimb/runs/"))]
    modules = sorted(f"promptclimb/{p.relative_to(REPO)}" for folder in ("agent", "evaluators")
                     for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)
    assert [m for m in modules if m not in names] == []  # every sub-package is declared in pyproject.toml

    venv = tmp_path / "fresh-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--quiet", str(wheel)], capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    assert sorted(p.name for p in site.iterdir()) == ["promptclimb", "promptclimb-0.1.0.dist-info"]

    # The dependencies: this test venv's packages, beside (after) the fresh site-packages. A
    # plain path line, so the test venv's own editable promptclimb (a .pth hook) stays out.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz-test-venv-packages.pth").write_text("\n".join(sorted(deps)) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = venv / "bin" / "promptclimb"
    help_text = subprocess.run([str(command), "--help"], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0, help_text.stderr
    assert "search" in help_text.stdout and "transfer" in help_text.stdout
    search_help = subprocess.run([str(command), "search", "--help"], cwd=elsewhere, capture_output=True, text=True,
                                 timeout=60)
    assert search_help.returncode == 0 and "--dataset" in search_help.stdout, search_help.stderr
    as_module = subprocess.run([str(python), "-m", "promptclimb", "--help"], cwd=elsewhere, capture_output=True,
                               text=True, timeout=60)  # was "No module named promptclimb.__main__"
    assert as_module.returncode == 0 and as_module.stdout == help_text.stdout, as_module.stderr
    # the installed copy is what runs, and it finds its own data files
    where = subprocess.run(
        [str(python), "-c", "import promptclimb; from promptclimb.agent.core.paths import prompts_dir; "
                            "print(promptclimb.__file__); print(prompts_dir()); print(promptclimb.search.__module__)"],
        cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    module_file, prompts, api = where.stdout.split()
    assert Path(module_file).is_relative_to(site) and Path(prompts).is_relative_to(site)
    assert api == "promptclimb.agent.api"
