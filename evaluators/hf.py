"""Hugging Face datasets: `--dataset hf:OWNER/NAME[:CONFIG]` and `--dataset hf --data-root FOLDER`.

Needs the optional extra `promptclimb[hf]` (the `datasets` library), imported only here and
only when such a dataset is loaded.

Where the data comes from:
- `hf:OWNER/NAME[:CONFIG]`: `datasets.load_dataset(OWNER/NAME, CONFIG)` with the user's
  Hugging Face datasets cache (`HF_DATASETS_CACHE`, by default ~/.cache/huggingface/datasets).
  With `HF_HUB_OFFLINE=1` only what is already in that cache is used. `hf:OWNER/NAME:` and
  `hf:OWNER/NAME:default` load the same data as `hf:OWNER/NAME`, its one spelling
  (`canonical_hub_name`); each is loaded as spelled, its name drawing its split (a run keeps its).
- `hf --data-root FOLDER`: a `save_to_disk` folder (it has dataset_dict.json or state.json),
  or a folder of parquet files (split names from the file names as on the Hub, e.g.
  `data/train-00000-of-00001.parquet`, `test.parquet`; files without one are all train).
  Parquet is converted once to arrow files under the promptclimb cache (`datasets/hf/<digest>`,
  one folder per state of the files: names, sizes, times); the same file in two folders is
  refused (every row would be read twice).

Columns: the image column is the one `Image` feature, the label column the one `ClassLabel`
(`image_column` / `label_column`, i.e. --image-column / --label-column, choose another or
one of several). A label column that is not a ClassLabel (strings, integers) must be named;
its distinct values, sorted, are then the classes. The start class names are the
ClassLabel names made readable as imagefolder's are ('sea_lake' -> 'sea lake'). The test
split's ClassLabel integers are read by its own names (splits encoded one by one number their
classes each in their own order); a class that train lacks is refused. Rows without a label
(None, -1 as some test splits have, or NaN; "-1" in a column of strings) are left out.

Splits: the few-shot train and val images are drawn from the `train` split (val from what
train's shots leave: `make_fewshot_split` with an empty val pool). Test is the `test`
split, else `validation` (or `valid`, `val`), passing over (with a warning) one without the
label column or without any label. With none of them, test is a deterministic
held-out 30% of each class of train (`deterministic_split`, the test share of imagefolder's
50/20/30 cut, seeded by the dataset's name), and the rest stays train.

Image ids are `<split>/<row>`. Images are decoded one at a time when the evaluator asks for
them (the image column is read as undecoded bytes, in arrow format), so a large dataset is
never held decoded in memory. The dataset's identity, which keys the feature cache and is
compared on --resume, is a digest of each used split's `datasets` fingerprint, its arrow
files' names and sizes, the image files its rows name by path (sizes and times: what
`to_parquet` writes for a dataset of image files holds no image bytes; runs on such data
from before resume with a warning that the evaluator changed), and the two columns, and
how images are decoded (`DECODING`: each time it changed - 16-bit images scaled to 8 bits,
as a folder's are, then by their brightest value - a run started before resumes with a
warning that says so).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import sha256_of
from promptclimb.agent.core.paths import cache_dir
from promptclimb.evaluators.datasets import (DECODING, Dataset, Labelled, check_data_folder, deterministic_split,
                                             eight_bits, is_hf_save, published_names)

if TYPE_CHECKING:
    import datasets

TRAIN_SPLIT = "train"
TEST_SPLITS = ("test", "validation", "valid", "val")  # the first one present (with labels) is test
INSTALL_HINT = "pip install 'promptclimb[hf]'"


def load_hf(data_root: str | None, name: str = "hf", image_column: str | None = None,
            label_column: str | None = None) -> Dataset:
    """The Dataset of `name` ("hf" with a local folder, or "hf:OWNER/NAME[:CONFIG]")."""
    splits, where, source = open_splits(name, data_root)
    if TRAIN_SPLIT not in splits:
        raise PromptclimbError(f"{where} has no 'train' split (it has: {', '.join(splits) or 'none'}); "
                               "the few-shot images are drawn from train")
    train = splits[TRAIN_SPLIT]
    image_col = find_image_column(train, image_column, where)
    label_col = find_label_column(train, label_column, where)
    check_label_kinds(train, splits, label_col, where)
    classnames, label_of, labels = class_labels(train, label_col, splits, where)

    items = {TRAIN_SPLIT: labelled(train, TRAIN_SPLIT, label_col, label_of)}
    test_split = None
    for candidate in (s for s in TEST_SPLITS if s in splits):
        # a test split shipped without labels (competition data) is one without a label column
        if label_col not in splits[candidate].column_names:
            warnings.warn(f"{where}: split {candidate!r} has no column {label_col!r} (no labels); "
                          "not used as the test split", stacklevel=2)
            continue
        if image_col not in splits[candidate].column_names:
            raise PromptclimbError(f"split {candidate!r} of {where} has no column {image_col!r}")
        test_label_of = split_label_of(train, splits[candidate], candidate, label_col, label_of, where)
        test_items = labelled(splits[candidate], candidate, label_col, test_label_of)
        if test_items:
            test_split, items["test"] = candidate, test_items
            break
        warnings.warn(f"{where}: split {candidate!r} has no labels; not used as the test split", stacklevel=2)
    if test_split is None:  # no labelled test/validation split: hold out part of train
        by_class: dict[int, list[str]] = {c: [] for c in range(len(classnames))}
        for image_id, label in items[TRAIN_SPLIT]:
            by_class[label].append(image_id)
        cut = deterministic_split(by_class, tag=f"hf:{source}")
        items = {TRAIN_SPLIT: sorted(cut["train"] + cut["val"]), "test": cut["test"]}

    used = {s: splits[s] for s in (TRAIN_SPLIT, test_split) if s}
    return Dataset(
        name=name, classnames=classnames, description="photos",
        load_image=image_loader(used, image_col),
        splits={"train": items[TRAIN_SPLIT], "val": [], "test": items["test"]},
        identity=f"{source}:{identity_digest(used, image_col, label_col)}:{DECODING}",
        folders=labels, folder_word="label",
    )


# ---------------------------------------------------------------- opening

def import_datasets():
    try:
        import datasets
    except ImportError:
        raise PromptclimbError(f"Hugging Face datasets need the `datasets` library: {INSTALL_HINT}") from None
    return datasets


def open_splits(name: str, data_root: str | None) -> tuple[dict[str, "datasets.Dataset"], str, str]:
    """(split name -> datasets.Dataset, how to name the data in messages, a stable source name)."""
    if name == "hf":
        if not data_root:
            raise PromptclimbError("--dataset hf needs --data-root FOLDER (a save_to_disk folder or a folder of "
                                   "parquet files); for a dataset in the Hugging Face cache use --dataset hf:OWNER/NAME")
        root = Path(data_root).expanduser().resolve()
        return open_folder(root), str(root), root.name
    if data_root:
        raise PromptclimbError(f"--data-root is for --dataset hf (a local folder); --dataset {name} reads the "
                               "Hugging Face cache (HF_DATASETS_CACHE)")
    repo, config = hub_repo_and_config(name)
    return open_hub(repo, config), name, name[len("hf:"):]


# The config `datasets.load_dataset(OWNER/NAME)` loads where the data has one of this name: a Hub dataset
# without configs has only it, and one with several takes it as its default (`MetadataConfigs.get_default_config_name`;
# marking another one `default: true` beside it is refused as two defaults). Config names are read as spelled:
# 'Default' is another config (not found), so case is not folded.
DEFAULT_CONFIG = "default"


def hub_repo_and_config(name: str) -> tuple[str, str | None]:
    """(OWNER/NAME, CONFIG or None) of `hf:OWNER/NAME[:CONFIG]`, or PromptclimbError in one line
    that says what is wrong with the spelling. An empty CONFIG (`hf:owner/name:`) is none."""
    spec = name[len("hf:"):]
    repo, _, config = spec.partition(":")
    expected = f"--dataset {name!r}: expected hf:OWNER/NAME or hf:OWNER/NAME:CONFIG"
    # the Hub's names hold no spaces: one around it was looked for as 'owner___name ', said "not in the cache"
    if spec != spec.strip() or repo != repo.strip() or config != config.strip():
        raise PromptclimbError(f"{expected}, without spaces around its parts (hf:{repo.strip()}"
                               f"{':' + config.strip() if config.strip() else ''})")
    if repo.endswith("/") and repo.count("/") == 2 and all(repo[:-1].split("/")):
        raise PromptclimbError(f"{expected}, without a '/' at the end of its name (hf:{repo[:-1]}"
                               f"{':' + config if config else ''})")
    # 'hf:/x' was a local path to datasets, 'hf:owner/' a repo named ''
    if not repo or repo.count("/") > 1 or any(not part for part in repo.split("/")):
        raise PromptclimbError(expected)
    return repo, config or None


def canonical_hub_name(name: str) -> str:
    """The one spelling of `hf:OWNER/NAME[:CONFIG]` for what loads the same data: without an empty
    config or the default one (`hf:owner/name:`, `hf:owner/name:default` -> `hf:owner/name`).
    The dataset's name draws its few-shot split and keys its features, so each spelling had drawn
    its own split of the same images. A spelling refused by `hub_repo_and_config` is returned as it
    is (refused where it is loaded)."""
    try:
        repo, config = hub_repo_and_config(name)
    except PromptclimbError:
        return name
    return f"hf:{repo}" + (f":{config}" if config and config != DEFAULT_CONFIG else "")


def open_folder(root: Path) -> dict[str, "datasets.Dataset"]:
    check_data_folder(root)
    saved = is_hf_save(root)
    if not saved and not any(root.rglob("*.parquet")):
        raise PromptclimbError(f"{root} is neither a save_to_disk folder (no dataset_dict.json or state.json) "
                               "nor a folder of parquet files")
    datasets = import_datasets()
    try:
        if saved:
            loaded = datasets.load_from_disk(str(root))
        else:
            loaded = datasets.load_dataset("parquet", data_dir=str(root), cache_dir=str(parquet_cache(root)))
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as exc:
        raise PromptclimbError(f"cannot read {root} as a Hugging Face dataset: {one_line(exc)}") from exc
    return as_splits(loaded)


def parquet_cache(root: Path) -> Path:
    """Where the datasets library converts `root`'s parquet files: a folder per state of them
    (names, sizes, times). Its own cache goes by the files' times: one replaced by another
    with the old time (`cp -p`, `rsync -a`) was read as the old data. PromptclimbError where
    one file lies in two folders (a dataset copied beside itself, v1/ and v2/), which the
    library reads as one dataset, every row twice."""
    files = sorted(root.rglob("*.parquet"))
    alike: dict[tuple[str, int], list[Path]] = {}
    for f in files:
        alike.setdefault((f.name, f.stat().st_size), []).append(f)
    for group in (g for g in alike.values() if len(g) > 1):  # hashed only where name and size agree
        by_content: dict[str, Path] = {}
        for f in group:
            digest = sha256_of(f)
            if digest in by_content:
                first = by_content[digest].relative_to(root)
                raise PromptclimbError(f"{root} holds the same parquet file twice ({first}, "
                                       f"{f.relative_to(root)}): its rows would be read twice; give one dataset's "
                                       "folder as --data-root")
            by_content[digest] = f
    h = hashlib.sha256()
    for f in files:
        stat = f.stat()
        h.update(f"{f.relative_to(root)}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}\x1e".encode())
    return cache_dir("datasets") / "hf" / h.hexdigest()[:16]


def open_hub(repo: str, config: str | None) -> dict[str, "datasets.Dataset"]:
    """A Hub dataset through the Hugging Face datasets cache (only the cache when offline)."""
    datasets = import_datasets()
    hf_cache = Path(datasets.config.HF_DATASETS_CACHE)  # read now: HF_DATASETS_CACHE / HF_HOME
    what = f"hf:{repo}" + (f":{config}" if config else "")
    try:
        loaded = datasets.load_dataset(repo, config, cache_dir=str(hf_cache))
    except ConnectionError as exc:  # not reachable (or offline) and not in the cache
        looked = hf_cache / "___".join(repo.split("/"))
        if datasets.config.HF_HUB_OFFLINE:
            raise PromptclimbError(
                f"{what} is not in the Hugging Face datasets cache (looked in {looked}) and HF_HUB_OFFLINE is set: "
                f"load it once with network access (python -c \"import datasets; datasets.load_dataset("
                f"{', '.join(repr(a) for a in (repo, config) if a)})\"), "
                "or use a save_to_disk or parquet folder with --dataset hf --data-root FOLDER") from exc
        raise PromptclimbError(f"cannot reach the Hugging Face Hub for {what}, and it is not in the cache "
                               f"(looked in {looked}): {one_line(exc)}") from exc
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as exc:
        raise PromptclimbError(f"cannot load {what}: {one_line(exc)}") from exc
    return as_splits(loaded)


def as_splits(loaded) -> dict[str, "datasets.Dataset"]:
    """A DatasetDict's splits; a lone Dataset (a save_to_disk of one split) is train."""
    if hasattr(loaded, "keys"):
        return {str(split): ds for split, ds in loaded.items()}
    return {TRAIN_SPLIT: loaded}


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------- columns and labels

def describe_columns(ds: "datasets.Dataset") -> str:
    return ", ".join(f"{c} ({feature_kind(f)})" for c, f in ds.features.items())


def feature_kind(feature) -> str:
    dtype = getattr(feature, "dtype", None)
    return f"{type(feature).__name__}({dtype})" if type(feature).__name__ == "Value" else type(feature).__name__


def named_column(ds: "datasets.Dataset", chosen: str, option: str, where: str):
    if chosen not in ds.features:
        raise PromptclimbError(f"{option} {chosen!r}: no such column in {where} (columns: {describe_columns(ds)})")
    return ds.features[chosen]


def find_image_column(ds: "datasets.Dataset", chosen: str | None, where: str) -> str:
    from datasets import Image

    if chosen:
        if not isinstance(named_column(ds, chosen, "--image-column", where), Image):
            raise PromptclimbError(f"--image-column {chosen!r} of {where} is {feature_kind(ds.features[chosen])}, "
                                   "not an Image feature (image bytes or paths become one with "
                                   f"ds.cast_column({chosen!r}, datasets.Image()) before it is saved)")
        return chosen
    found = [c for c, f in ds.features.items() if isinstance(f, Image)]
    if not found:
        raise PromptclimbError(f"{where} has no image column (no Image feature among: {describe_columns(ds)}; image "
                               "bytes or paths become one with ds.cast_column(COLUMN, datasets.Image()) before it is "
                               "saved)")
    if len(found) > 1:
        raise PromptclimbError(f"{where} has several image columns ({', '.join(found)}); choose one with --image-column")
    return found[0]


def find_label_column(ds: "datasets.Dataset", chosen: str | None, where: str) -> str:
    from datasets import ClassLabel, Value

    if chosen:
        feature = named_column(ds, chosen, "--label-column", where)
        if not isinstance(feature, (ClassLabel, Value)):
            raise PromptclimbError(f"--label-column {chosen!r} of {where} is {feature_kind(feature)}, not one label "
                                   "per image (a ClassLabel, or strings or integers)")
        return chosen
    found = [c for c, f in ds.features.items() if isinstance(f, ClassLabel)]
    if not found:
        raise PromptclimbError(f"{where} has no ClassLabel column (columns: {describe_columns(ds)}); name the label "
                               "column with --label-column (its distinct values become the class names)")
    if len(found) > 1:
        raise PromptclimbError(f"{where} has several ClassLabel columns ({', '.join(found)}); "
                               "choose one with --label-column")
    return found[0]


def label_kind(feature) -> str:
    """'strings' for a label column of strings, else its feature's kind (ClassLabel, Value(int64))."""
    return "strings" if str(getattr(feature, "dtype", "")) in ("string", "large_string") else feature_kind(feature)


def check_label_kinds(train: "datasets.Dataset", splits: dict, column: str, where: str) -> None:
    """A test split's label column holds strings where train's does, or PromptclimbError: a
    split of strings beside one of integers or ClassLabel integers (`class_encode_column` on
    one split alone) had failed to sort its labels, or had been passed over as having none."""
    ours = label_kind(train.features[column])
    for split in (s for s in TEST_SPLITS if s in splits and column in splits[s].column_names):
        theirs = label_kind(splits[split].features[column])
        if (theirs == "strings") != (ours == "strings"):  # integers and ClassLabel integers compare by value
            raise PromptclimbError(
                f"split {split!r} of {where} has its label column {column!r} as {theirs}, the train split as "
                f"{ours}: encode the splits alike (e.g. cast_column({column!r}, train.features[{column!r}]))")


def column_values(ds: "datasets.Dataset", column: str) -> list:
    """One column of every row (in arrow: nothing else is read or decoded)."""
    return ds.with_format("arrow", columns=[column])[:].column(0).to_pylist()


def unlabelled(value) -> bool:
    """A row's label that means "no label" (None, -1 as some test splits have, or NaN; in a
    column of strings, "-1")."""
    if isinstance(value, str):
        # integer labels read as text (a CSV, a cast) keep ClassLabel's -1 for "no label"; as a
        # class it had been named "1", the "-" read as a separator as in a folder's name
        return value.strip() == "-1"
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value is None
    # pandas writes an integer column with missing labels as floats, the missing ones NaN:
    # each NaN is unequal to every other, so each had become a class of its own
    return value == -1 or math.isnan(value)


def class_labels(train: "datasets.Dataset", column: str, splits: dict,
                 where: str) -> tuple[list[str], dict, list[str]]:
    """(class names, raw label value -> class index, the labels as the data spells them). A
    ClassLabel's names, in its order; other columns: their distinct values over the train and
    test splits, sorted. The names are the labels made readable (`n02085620` reads
    'Chihuahua'); the labels are kept as `Dataset.folders` are, so that a `folder,name` line
    of --classnames FILE and a run read back on other data find a class by its own spelling."""
    from datasets import ClassLabel

    feature = train.features[column]
    if isinstance(feature, ClassLabel):
        return published_names(feature.names), {i: i for i in range(feature.num_classes)}, list(feature.names)
    values, minus_one = set(), False
    for split in (TRAIN_SPLIT, *TEST_SPLITS):
        if split in splits and column in splits[split].column_names:
            read = set(column_values(splits[split], column))
            values |= {v for v in read if not unlabelled(v)}
            minus_one = minus_one or -1 in read or "-1" in {v.strip() for v in read if isinstance(v, str)}
    if not values:
        raise PromptclimbError(f"label column {column!r} of {where} has no values")
    if len(values) == 1 and minus_one:  # labels -1 and 1 (or +1) as one class and its opposite
        raise PromptclimbError(f"label column {column!r} of {where} has one class ({next(iter(values))}) besides "
                               "rows labelled -1, which mean 'no label' (as in a ClassLabel) and are left out: "
                               "give the other class another label")
    ordered = sorted(values)
    names = [name or str(v) for name, v in zip(published_names([str(v) for v in ordered]), ordered)]
    return names, {v: i for i, v in enumerate(ordered)}, [str(v) for v in ordered]


def split_label_of(train: "datasets.Dataset", ds: "datasets.Dataset", split: str, column: str, label_of: dict,
                   where: str) -> dict:
    """`label_of` for the label integers of split `split`: by its own ClassLabel's names when
    they are not train's (splits encoded one by one, e.g. `class_encode_column` on each, number
    their classes each in its own order), so that integer i of this split is the train class
    named as its name i."""
    from datasets import ClassLabel

    ours, theirs = train.features[column], ds.features[column]
    if not (isinstance(ours, ClassLabel) and isinstance(theirs, ClassLabel)) or theirs.names == ours.names:
        return label_of
    index = {name: i for i, name in enumerate(ours.names)}
    used = {v for v in column_values(ds, column) if not unlabelled(v)}
    unknown = sorted({theirs.names[v] for v in used if 0 <= v < theirs.num_classes} - set(index))
    if unknown:  # as a class with no training images is refused: it could never be predicted
        raise PromptclimbError(
            f"split {split!r} of {where} has images of class(es) {', '.join(map(repr, unknown[:5]))} that the "
            f"train split's ClassLabel {column!r} does not have (train's: {', '.join(ours.names[:10])}"
            f"{' ...' if len(ours.names) > 10 else ''}); the few-shot images of every class come from train")
    return {i: label_of[index[name]] for i, name in enumerate(theirs.names) if name in index}


def labelled(ds: "datasets.Dataset", split: str, column: str, label_of: dict) -> Labelled:
    """(id, class) of every row with a known label; ids are `<split>/<row>`."""
    return sorted((f"{split}/{row}", label_of[v]) for row, v in enumerate(column_values(ds, column))
                  if v in label_of)


# ---------------------------------------------------------------- images and identity

def image_loader(used: dict[str, "datasets.Dataset"], column: str):
    """load_image(`<split>/<row>`): that row's image, decoded now (the column is read as
    bytes or a path, never decoded in bulk), with 8 bits per channel as a folder's images
    (`eight_bits`: a 16-bit image was clipped to two shades), then in the column's mode."""
    from datasets import Image

    mode = used[TRAIN_SPLIT].features[column].mode
    decoder = Image()
    readers = {split: ds.with_format("arrow", columns=[column]) for split, ds in used.items()}

    def load_image(image_id: str):
        split, row = image_id.rsplit("/", 1)
        value = readers[split][int(row)].column(0)[0].as_py()
        if value is None:
            raise ValueError(f"row {image_id} has no image")
        image = eight_bits(decoder.decode_example(value))
        return image.convert(mode) if mode and image.mode != mode else image

    return load_image


def identity_digest(used: dict[str, "datasets.Dataset"], image_col: str, label_col: str) -> str:
    """A short hash of each split's fingerprint and arrow files (names, sizes) and the columns."""
    h = hashlib.sha256(f"image={image_col}\x1flabel={label_col}\x1e".encode())
    for split, ds in sorted(used.items()):
        h.update(f"{split}\x1f{ds._fingerprint}\x1e".encode())
        for cache_file in ds.cache_files:
            path = cache_file["filename"]
            size = os.path.getsize(path) if os.path.exists(path) else -1
            h.update(f"{os.path.basename(path)}\x1f{size}\x1e".encode())
        # images a row points to by path (what `to_parquet` writes for a dataset of image files):
        # edited or deleted, their features were reused from the cache, as an image folder's are not
        for path in referenced_images(ds, image_col):
            try:
                stat = os.stat(path)
                h.update(f"{path}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}\x1e".encode())
            except OSError:
                h.update(f"{path}\x1f-1\x1e".encode())
    return h.hexdigest()[:16]


def referenced_images(ds: "datasets.Dataset", image_col: str) -> list[str]:
    """The files an Image column names where a row holds no image bytes of its own (read from
    the arrow table's struct fields: no image is decoded)."""
    try:
        column = ds.data.table.column(image_col)
    except (KeyError, AttributeError):
        return []
    paths = []
    for chunk in column.chunks:
        if chunk.type.num_fields < 2 or chunk.type.get_field_index("path") < 0 \
                or chunk.type.get_field_index("bytes") < 0:
            return []  # not an Image feature's {bytes, path}
        no_bytes = chunk.field("bytes").is_null().to_pylist()
        paths += [p for p, missing in zip(chunk.field("path").to_pylist(), no_bytes) if missing and p]
    return paths
