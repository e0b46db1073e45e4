"""`promptclimb eval` end to end through the CLI (generated ImageFolder, local weights file)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from promptclimb.agent.cli import cli

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)


def test_eval_json_on_a_generated_imagefolder(tiny_clip_config, tiny_clip_weights, image_folder, torch_threads):
    result = run("--dataset", "imagefolder", "--data-root", str(image_folder), "--shots", "2", "--seed", "3",
                 "--backbone", tiny_clip_config, "--weights", str(tiny_clip_weights), "--device", "cpu",
                 "--prompt", "a photo of a {}.", "--prompt", "a {} thing.", "--prompt", "a photo of a {}.", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["template"] for r in out["results"]] == ["a photo of a {}.", "a {} thing."]  # a repeat scored once
    for row in out["results"]:
        assert set(row["accuracy"]) == {"train", "val", "test"}
        assert all(0.0 <= a <= 1.0 for a in row["accuracy"].values())
        assert all(loss > 0 for loss in row["loss"].values())
    assert out["info"]["split"]["sizes"] == {"train": 6, "val": 6, "test": 6}
    assert out["info"]["backbone"]["weights_sha256"]

    table = run("--dataset", "imagefolder", "--data-root", str(image_folder), "--shots", "2", "--seed", "3",
                "--backbone", tiny_clip_config, "--weights", str(tiny_clip_weights), "--device", "cpu")
    assert table.exit_code == 0, table.output
    assert "train" in table.output and "a photo of a {}." in table.output
    first = out["results"][0]["accuracy"]
    assert f"{100 * first['test']:6.2f}%" in table.output  # same numbers as --json
    header = [line for line in table.output.splitlines() if line.startswith("dataset ")]
    assert len(header) == 1 and "(bf16)" not in header[0]
    half = run("--dataset", "imagefolder", "--data-root", str(image_folder), "--shots", "2", "--seed", "3",
               "--backbone", tiny_clip_config, "--weights", str(tiny_clip_weights), "--device", "cpu",
               "--precision", "bf16")
    assert half.exit_code == 0, half.output
    assert [line for line in half.output.splitlines() if line.startswith("dataset ")][0].endswith(" on cpu (bf16)")


def test_user_mistakes_are_messages_not_tracebacks(tiny_clip_config, tiny_clip_weights, image_folder):
    base = ["--dataset", "imagefolder", "--data-root", str(image_folder), "--backbone", tiny_clip_config]
    cases = [
        (["--prompt", "a photo"], 2, "no {} placeholder"),
        (["--prompt", "a photo\tof a {}."], 2, "a line break, tab or other control character in it"),
        ([*base, "--weights", str(tiny_clip_weights), "--shots", "9"], 1, "smallest class allows --shots 4"),
        ([*base, "--pretrained", "openai"], 1, "unknown pretrained tag"),
        (["--dataset", "imagefolder", "--data-root", str(image_folder / "nope")], 1, "does not exist"),
        (["--dataset", "imagefolder", "--data-root", str(image_folder), "--backbone", "RN50",
          "--pretrained", "openai"], 1, "--backbone demo"),
    ]
    cases += [
        (["--with-adapter"], 2, "--with-adapter needs --run RUN"),
        (["--shots", "0"], 2, "Invalid value for '--shots': 0 is not in the range x>=1."),  # as search (it was 1)
        (["--run", "no-such-run", "--runs-dir", str(image_folder)], 1, "no run 'no-such-run'"),
    ]
    for args, code, message in cases:
        result = run(*args)
        assert result.exit_code == code, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_help_and_lazy_imports():
    result = run("--help")
    assert result.exit_code == 0 and "--pretrained" in result.output and "--json" in result.output
    code = "import sys, promptclimb.agent.cli.eval; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_eval_run_on_other_data_needs_the_runs_classes(tiny_clip_config, tiny_clip_weights, image_folder, tmp_path,
                                                       torch_threads):
    from conftest import make_image_folder

    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    labels = ["blue lake", "green field", "red square"]  # the folder's, as the run started from them
    (run_dir / "config.json").write_text(json.dumps({"v": 1, "run_id": "r", "evaluator_args": {
        "dataset": "imagefolder", "data_root": str(image_folder), "shots": 2, "seed": 3, "backbone": tiny_clip_config,
        "weights": str(tiny_clip_weights), "classnames": None}, "evaluator": {"dataset": {"classnames": labels}}}))
    found = ["lake", "green field", "crimson square"]
    (run_dir / "summary.json").write_text(json.dumps({"v": 1, "best": {
        "template": "a photo of a {}.", "names": found, "accuracy": {"train": 1.0, "val": 1.0, "test": 1.0}}}))
    again = run("--run", "r", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["info"]["dataset"]["classnames"] == found
    assert "ensemble" not in again.stderr
    # a run whose result is its ensemble: its best template alone was scored, unsaid
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(winner="ensemble", ensemble={"templates": ["a photo of a {}.", "a {}."], "accuracy": {"test": 0.5}})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    said = run("--run", "r", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "--json")
    assert said.exit_code == 0 and len(json.loads(said.stdout)["results"]) == 1, said.output
    assert "warning: r's result is its ensemble of 2 (test 50.0%); this scores its best template alone " \
        "(the others: --prompt TEMPLATE each)" in said.stderr


    other = make_image_folder(tmp_path / "other", per_class=4, classes={
        "red_square": (220, 30, 30), "green_field": (30, 200, 40), "yellow_sun": (220, 220, 30)})
    refused = run("--run", "r", "--runs-dir", str(tmp_path / "runs"), "--data-root", str(other), "--device", "cpu")
    assert refused.exit_code == 1, refused.output
    assert ("Error: the run's classes are not the data's: the data has 'yellow sun' and the run does not; "
            "the run has 'blue lake' and the data does not") in refused.output


def test_a_run_started_on_wordnet_id_folders_before_they_read_as_names_is_scored_again(tmp_path, torch_threads):
    """A run started on WordNet-ID folders (`n02085620/`) before they read as WordNet names
    recorded the IDs as its start names; `eval --run` (and --with-adapter) on that data, its
    labels now 'Chihuahua', ..., had refused it: 'the run's classes are not the data's'."""
    from conftest import make_image_folder
    from test_datasets import WORDNET_FOLDERS

    data = make_image_folder(tmp_path / "inet", per_class=4, classes=WORDNET_FOLDERS)
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    (runs / "r" / "config.json").write_text(json.dumps({"v": 1, "run_id": "r", "evaluator_args": {
        "dataset": "imagefolder", "data_root": str(data), "shots": 2, "seed": 0, "backbone": "demo",
        "classnames": None}, "evaluator": {"dataset": {"classnames": list(WORDNET_FOLDERS)}}}))
    (runs / "r" / "summary.json").write_text(json.dumps({"v": 1, "best": {
        "template": "a photo of a {}.", "names": ["small dog", "cat", "mountain"],
        "accuracy": {"train": 1.0, "val": 1.0, "test": 1.0}}}))
    fit = CliRunner().invoke(cli, ["adapt", "r", "--runs-dir", str(runs), "--kind", "cache", "--device", "cpu"])
    assert fit.exit_code == 0, fit.output
    for more in ((), ("--with-adapter",), ("--with-adapter", "--data-root", str(data),
                                           "--classnames", str(tmp_path / "names.txt"))):
        (tmp_path / "names.txt").write_text("n09193705,peak\nn02085620,small dog\nn02123045,cat\n")
        out = run("--run", "r", "--runs-dir", str(runs), "--device", "cpu", "--json", *more)
        assert out.exit_code == 0, out.output
        said = json.loads(out.stdout)
        expected = ["small dog", "cat", "peak" if "--classnames" in more else "mountain"]
        assert said["info"]["dataset"]["classnames"] == expected
        assert ("adapter" in said) == ("--with-adapter" in more)


def test_a_warning_is_one_line_when_it_happens(tiny_clip_config, tiny_clip_weights, image_folder, torch_threads):
    (image_folder / "red_square" / "broken.png").write_bytes(b"not a png at all")
    result = run("--dataset", "imagefolder", "--data-root", str(image_folder), "--backbone", tiny_clip_config,
                 "--weights", str(tiny_clip_weights), "--device", "cpu")
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if "skipped 1 unreadable image(s)" in line]
    assert len(said) == 1 and said[0].startswith("warning: ") and "broken.png" in said[0]
    assert "UserWarning" not in result.output and "warnings.warn" not in result.output


def test_split_sizes_count_the_images_scored(tiny_clip_config, tiny_clip_weights, tmp_path, torch_threads):
    import re

    import numpy as np
    from conftest import make_image_folder
    from PIL import Image

    root = tmp_path / "split"
    for split in ("train", "test"):
        make_image_folder(root / split, per_class=4)
    cut = root / "test" / "red_square" / "cut.jpg"  # its header reads, its body is cut short: fails when decoded
    noise = (np.random.default_rng(0).random((200, 200, 3)) * 255).astype("uint8")
    Image.fromarray(noise).save(cut, quality=95)
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    result = run("--dataset", "imagefolder", "--data-root", str(root), "--backbone", tiny_clip_config,
                 "--weights", str(tiny_clip_weights), "--device", "cpu")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("split sizes:"))
    assert re.search(r"test (\d+)", line)[1] == "12"  # 13 files, one not decoded
    assert line.endswith("(1 unreadable image(s) left out)")


def test_with_adapter_and_classnames_fill_in_the_names_given(tmp_path, torch_threads):
    """`eval --run RUN --with-adapter --classnames clean`: the adapter rows use the names of
    the template rows (a cache adapter), or are refused in one line (a trained adapter),
    before the model loads and the images are encoded (it had been refused only after); the
    names it was fit on (here the published ones) are taken."""
    from promptclimb.evaluators.demo.fashion_mnist import OFFICIAL_CLASSNAMES

    runs = tmp_path / "runs"
    for name, kind in (("cached", "cache"), ("trained", "residual-logits")):
        (runs / name).mkdir(parents=True)
        (runs / name / "config.json").write_text(json.dumps({"v": 1, "run_id": name, "evaluator_args": {
            "dataset": "fashion-mnist", "shots": 1, "seed": 0, "backbone": "demo", "classnames": None}}))
        (runs / name / "summary.json").write_text(json.dumps({"v": 1, "best": {
            "template": "a photo of a {}.", "names": list(OFFICIAL_CLASSNAMES),
            "accuracy": {"train": 0.5, "val": 0.5, "test": 0.5}}}))
        fit = CliRunner().invoke(cli, ["adapt", name, "--runs-dir", str(runs), "--kind", kind, "--device", "cpu"])
        assert fit.exit_code == 0, fit.output

    common = ["--run", "cached", "--runs-dir", str(runs), "--with-adapter", "--device", "cpu", "--json"]
    own, clean = (json.loads(run(*common, *more).stdout) for more in ((), ("--classnames", "clean")))
    assert clean["results"][0]["accuracy"] != own["results"][0]["accuracy"]  # the clean names score otherwise
    for out in (own, clean):  # "prompt alone" is the template row, with the same names
        assert {s: a["prompt"] for s, a in out["adapter"]["accuracy"].items()} == out["results"][0]["accuracy"]

    refused = run("--run", "trained", "--runs-dir", str(runs), "--with-adapter", "--classnames", "clean",
                  "--device", "cpu")
    assert refused.exit_code == 1, refused.output
    said = refused.output.splitlines()
    assert len(said) == 1, said  # no line of image features (encoded, or reused from the cache) before it
    assert said[0].startswith("Error: --classnames with --with-adapter: the run's residual-logits adapter")
    taken = run("--run", "trained", "--runs-dir", str(runs), "--with-adapter", "--classnames", "published",
                "--device", "cpu", "--json")
    assert taken.exit_code == 0, taken.output
    assert json.loads(taken.stdout)["adapter"]["kind"] == "residual-logits"


def test_a_data_root_without_the_fashion_mnist_subset_says_the_embedded_data_needs_none(tmp_path):
    """One --data-root meant for other data (a sweep's, a run's) reaching fashion-mnist is
    told so, not told to rebuild the shipped subset from a Debian package."""
    result = run("--dataset", "fashion-mnist", "--data-root", str(tmp_path), "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: --data-root {tmp_path} holds no fashion_mnist_subset.npz: fashion-mnist is read from the data "
        "embedded in promptclimb when no --data-root is given (a --data-root is for a subset built with "
        "`python -m promptclimb.evaluators.demo.build_subset --out DIR/fashion_mnist_subset.npz`)\n")


def fashion_in_two_orders(tmp_path: Path) -> None:
    """tmp_path/own: bag/, dress/, sneaker/, trouser/ (fashion-mnist images); tmp_path/other: the
    same classes, in another order (`Dress/` and `Trouser/` sort before `bag/`)."""
    import numpy as np
    from PIL import Image

    data = np.load(REPO / "evaluators" / "demo" / "data" / "fashion_mnist_subset.npz")
    classes = {1: "trouser", 3: "dress", 7: "sneaker", 8: "bag"}
    for root, spelled in (("own", {}), ("other", {"trouser": "Trouser", "dress": "Dress"})):
        for label, name in classes.items():
            folder = tmp_path / root / spelled.get(name, name)
            folder.mkdir(parents=True)
            for i in np.flatnonzero(data["test_labels"] == label)[:10]:
                Image.fromarray(data["test_images"][i]).save(folder / f"{i}.png")


def run_with_adapter_on_own_folder(tmp_path: Path, kind: str) -> Path:
    """The runs folder of run `r`, searched on tmp_path/own (`fashion_in_two_orders`, made
    here) from its labels, that found the names handbag, dress, sneaker, trousers, with an
    adapter of `kind` fit by `promptclimb adapt`."""
    fashion_in_two_orders(tmp_path)
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    labels = ["bag", "dress", "sneaker", "trouser"]  # the own folder's classes, in its order
    (runs / "r" / "config.json").write_text(json.dumps({"v": 1, "run_id": "r", "evaluator_args": {
        "dataset": "imagefolder", "data_root": str(tmp_path / "own"), "shots": 2, "seed": 0, "backbone": "demo",
        "classnames": None}, "evaluator": {"dataset": {"classnames": labels}}}))
    (runs / "r" / "summary.json").write_text(json.dumps({"v": 1, "best": {
        "template": "a photo of a {}.", "names": ["handbag", "dress", "sneaker", "trousers"],
        "accuracy": {"train": 1.0, "val": 1.0, "test": 1.0}}}))
    fit = CliRunner().invoke(cli, ["adapt", "r", "--runs-dir", str(runs), "--kind", kind, "--device", "cpu"])
    assert fit.exit_code == 0, fit.output
    return runs


def test_a_run_started_from_names_given_is_matched_by_label_on_other_data(tmp_path, torch_threads):
    """`eval --run RUN --data-root DIR` of a run started with `--classnames published` (its
    start names are the labels) or a names FILE (the evaluator records the labels beside
    them), DIR holding its classes in another order: each name goes to its class by label, as
    for a run started on the default names; they had been filled in by position (0% correct)."""
    fashion_in_two_orders(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("bag,handbag\ndress,dress\nsneaker,sneaker\ntrouser,trousers\n")
    runs = tmp_path / "runs"
    for spec, in_other_order in (("published", ["dress", "trouser", "bag", "sneaker"]),
                                 (str(names), ["dress", "trousers", "handbag", "sneaker"])):
        started = run("--dataset", "imagefolder", "--data-root", str(tmp_path / "own"), "--shots", "2",
                      "--backbone", "demo", "--classnames", spec, "--device", "cpu", "--json")
        assert started.exit_code == 0, started.output
        info = json.loads(started.stdout)["info"]  # as the search records it in config.json
        shutil.rmtree(runs / "r", ignore_errors=True)
        (runs / "r").mkdir(parents=True)
        (runs / "r" / "config.json").write_text(json.dumps({"v": 1, "run_id": "r", "evaluator_args": {
            "dataset": "imagefolder", "data_root": str(tmp_path / "own"), "shots": 2, "seed": 0, "backbone": "demo",
            "classnames": spec}, "evaluator": info}))
        (runs / "r" / "summary.json").write_text(json.dumps({"v": 1, "best": {
            "template": "a photo of a {}.", "names": info["dataset"]["classnames"],
            "accuracy": {"train": 1.0, "val": 1.0, "test": 1.0}}}))
        out = run("--run", "r", "--runs-dir", str(runs), "--data-root", str(tmp_path / "other"), "--device", "cpu",
                  "--json")
        assert out.exit_code == 0, out.output
        said = json.loads(out.stdout)
        assert said["info"]["dataset"]["classnames"] == in_other_order, spec
        assert said["results"][0]["accuracy"]["test"] > 0.5, spec  # by position: 0%


def test_a_run_from_names_of_its_own_that_recorded_no_labels_warns_that_other_data_is_matched_by_position(
        tmp_path, torch_threads):
    """`eval --run RUN --data-root DIR` of a run started from a names FILE before the labels
    were recorded beside its names: nothing says which class each name is, so they go to
    DIR's classes by position, and a warning line now says so (it was silent: 0% correct
    here); on the run's own data, where the order is the run's, nothing is said."""
    fashion_in_two_orders(tmp_path)
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    names = ["handbag", "dress", "sneaker", "trousers"]
    (runs / "r" / "config.json").write_text(json.dumps({"v": 1, "run_id": "r", "evaluator_args": {
        "dataset": "imagefolder", "data_root": str(tmp_path / "own"), "shots": 2, "seed": 0, "backbone": "demo",
        "classnames": str(tmp_path / "names.txt")}, "evaluator": {"dataset": {"classnames": names}}}))
    (runs / "r" / "summary.json").write_text(json.dumps({"v": 1, "best": {
        "template": "a photo of a {}.", "names": names, "accuracy": {"train": 1.0, "val": 1.0, "test": 1.0}}}))
    common = ["--run", "r", "--runs-dir", str(runs), "--device", "cpu"]
    other = run(*common, "--data-root", str(tmp_path / "other"))
    assert other.exit_code == 0, other.output
    warned = [line for line in other.output.splitlines() if line.startswith("warning: ")]
    assert warned == [f"warning: r started from --classnames {tmp_path / 'names.txt'} and recorded no labels for its "
                      f"names (a run started before they were recorded): its names are filled in to the classes of "
                      f"{tmp_path / 'other'} by position; give --classnames FILE ('folder,name' lines) to match them "
                      f"by class"]
    own = run(*common)
    assert own.exit_code == 0 and "warning: " not in own.output, own.output


def test_with_adapter_on_other_data_whose_classes_come_in_another_order(tmp_path, torch_threads):
    """`eval --run RUN --with-adapter --data-root DIR`, DIR holding the run's classes in another
    order (`Dress/` and `Trouser/` sort before `bag/`): the adapter rows match each class by its label, as
    the template rows do; they had filled the run's names in by position (0% correct). So do
    a cache adapter's rows with --classnames FILE, or refuse data of other classes."""
    runs = run_with_adapter_on_own_folder(tmp_path, "cache")

    out = run("--run", "r", "--runs-dir", str(runs), "--with-adapter", "--data-root", str(tmp_path / "other"),
              "--device", "cpu", "--json")
    assert out.exit_code == 0, out.output
    said = json.loads(out.stdout)
    assert said["info"]["dataset"]["classnames"] == ["dress", "trousers", "handbag", "sneaker"]
    assert said["results"][0]["accuracy"]["test"] > 0.9
    # "prompt alone" is the template row, with the same names on the same images
    assert {s: a["prompt"] for s, a in said["adapter"]["accuracy"].items()} == said["results"][0]["accuracy"]
    assert said["adapter"]["accuracy"]["test"]["adapter"] > 0.9

    # --classnames FILE, read against the other data's classes: the cache adapter's rows take
    # each name by its class, not by its place (they had: 0% with a cache term that decides)
    import torch

    payload = torch.load(runs / "r" / "adapter.pt", weights_only=True)
    torch.save({**payload, "hparams": {"alpha": 32.0, "beta": 8.0}}, runs / "r" / "adapter.pt")
    names = tmp_path / "names.txt"
    names.write_text("bag,handbag\ndress,dress\nsneaker,sneaker\ntrouser,trousers\n")
    given = ["--run", "r", "--runs-dir", str(runs), "--with-adapter", "--classnames", str(names), "--device", "cpu"]
    out = run(*given, "--data-root", str(tmp_path / "other"), "--json")
    assert out.exit_code == 0, out.output
    said = json.loads(out.stdout)
    assert said["info"]["dataset"]["classnames"] == ["dress", "trousers", "handbag", "sneaker"]
    assert said["adapter"]["accuracy"]["test"] == {"prompt": 1.0, "adapter": 1.0}
    # data of other classes: refused in one line before any image is encoded
    (tmp_path / "other" / "Trouser").rename(tmp_path / "other" / "shirt")
    names.write_text("bag,handbag\nDress,dress\nsneaker,sneaker\nshirt,shirt\n")
    refused = run(*given, "--data-root", str(tmp_path / "other"))
    assert refused.exit_code == 1 and refused.output == (
        "Error: --with-adapter: the run's classes are not the data's: the data has 'shirt' and the run does not; "
        "the run has 'trouser' and the data does not (the adapter's rows are the run's classes); drop --with-adapter "
        "to score the template alone\n")


def test_a_trained_adapter_takes_its_own_names_on_other_data_whose_classes_come_in_another_order(tmp_path,
                                                                                                torch_threads):
    """`eval --run RUN --with-adapter --classnames FILE --data-root DIR`, RUN's adapter trained
    (residual-logits), DIR holding its classes in another order and FILE the run's own names:
    taken, class by class, as without --classnames (it had been refused as other names); the
    same names on other classes are still refused, in one line before any image is encoded."""
    runs = run_with_adapter_on_own_folder(tmp_path, "residual-logits")

    names = tmp_path / "names.txt"
    names.write_text("trouser,trousers\nbag,handbag\nsneaker,sneaker\ndress,dress\n")
    common = ["--run", "r", "--runs-dir", str(runs), "--with-adapter", "--data-root", str(tmp_path / "other"),
              "--device", "cpu"]
    given, own = (run(*common, *more, "--json") for more in (("--classnames", str(names)), ()))
    assert given.exit_code == 0, given.output
    said = json.loads(given.stdout)
    assert said["info"]["dataset"]["classnames"] == ["dress", "trousers", "handbag", "sneaker"]
    assert said["adapter"] == json.loads(own.stdout)["adapter"]  # the names the run's own rows fill in
    names.write_text("trouser,handbag\nbag,trousers\nsneaker,sneaker\ndress,dress\n")  # two classes' names swapped
    refused = run(*common, "--classnames", str(names))
    assert refused.exit_code == 1, refused.output
    assert refused.output.startswith("Error: --classnames with --with-adapter: the run's residual-logits adapter "
                                     "was trained on the prompt filled in with the run's class names")
    assert len(refused.output.splitlines()) == 1  # no line of image features before it


def test_with_adapter_and_classnames_reads_the_dataset_once(tmp_path, torch_threads, monkeypatch):
    """`eval --run RUN --with-adapter --classnames FILE` reads the data's labels to check the
    names before the model loads; the evaluator takes that dataset, where it had read it again
    (an hf dataset's label column: slow). The figures are those of the names given."""
    from promptclimb.evaluators import datasets

    runs = run_with_adapter_on_own_folder(tmp_path, "cache")
    names = tmp_path / "names.txt"
    names.write_text("bag,handbag\ndress,dress\nsneaker,sneaker\ntrouser,trousers\n")  # the run's own
    common = ["--run", "r", "--runs-dir", str(runs), "--with-adapter", "--data-root", str(tmp_path / "other"),
              "--device", "cpu", "--json"]
    own = run(*common)
    reads, load_dataset = [], datasets.load_dataset

    def read(*args, **kwargs):
        reads.append(args)
        return load_dataset(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", read)
    given = run(*common, "--classnames", str(names))
    assert given.exit_code == 0, given.output
    assert reads == [("imagefolder", str(tmp_path / "other"))]
    said, own = json.loads(given.stdout), json.loads(own.stdout)
    assert (said["results"], said["adapter"]) == (own["results"], own["adapter"])


def test_with_adapter_refuses_another_backbone_whose_features_are_as_wide(tiny_clip_config, tiny_clip_weights,
                                                                         image_folder, tmp_path, torch_threads):
    """`eval --run RUN --with-adapter --weights OTHER` (or --backbone/--pretrained): an adapter
    fit on the run's backbone does not apply to another's features, even of the same width,
    where it had been applied and its figures printed as if it did."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = open_clip.create_model(tiny_clip_config, pretrained=None)
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(other))
    args = {"dataset": "imagefolder", "data_root": str(image_folder), "shots": 2, "seed": 3,
            "backbone": tiny_clip_config, "weights": str(tiny_clip_weights), "classnames": None}
    own = run("--dataset", "imagefolder", "--data-root", str(image_folder), "--shots", "2", "--seed", "3",
              "--backbone", tiny_clip_config, "--weights", str(tiny_clip_weights), "--device", "cpu", "--json")
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    (runs / "r" / "config.json").write_text(json.dumps({"v": 1, "run_id": "r", "evaluator_args": args,
                                                        "evaluator": json.loads(own.stdout)["info"]}))
    (runs / "r" / "summary.json").write_text(json.dumps({"v": 1, "best": {
        "template": "a photo of a {}.", "accuracy": {"train": 1.0, "val": 1.0, "test": 1.0}}}))
    fit = CliRunner().invoke(cli, ["adapt", "r", "--runs-dir", str(runs), "--kind", "cache", "--device", "cpu"])
    assert fit.exit_code == 0, fit.output

    common = ["--run", "r", "--runs-dir", str(runs), "--with-adapter", "--device", "cpu"]
    assert run(*common).exit_code == 0
    refused = run(*common, "--weights", str(other))
    assert refused.exit_code == 1, refused.output
    said = refused.output.splitlines()[-1]
    assert said.startswith(f"Error: {runs / 'r' / 'adapter.pt'} was fit on the run's backbone ({tiny_clip_config}:")
    assert "Traceback" not in refused.output and said == [x for x in refused.output.splitlines() if "Error" in x][0]
