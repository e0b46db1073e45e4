"""`ClipEvaluator`: scores prompt templates on a few-shot split (implements agent.core.protocol.Evaluator).

Scoring a batch of templates:
1. fill every template with every class name (agent.core.templates.fill, the one formatter);
2. look the strings up in the text-feature cache and encode only the missing ones, all in
   one batched pass (chunked, exact padding truncation where the model allows it, and each
   template's token prefix computed once for all its classes: `encode_text_shared_prefix`);
3. with the split's cached image features X [N, D] and the text features T [K*C, D], one
   matrix product X @ T.T gives every template's logits; accuracy and mean cross-entropy
   per template follow from a reshape to [N, K, C].

Image features are computed once per split (then read from the disk cache): images are
decoded and preprocessed in a worker thread one batch ahead of the encoder (`_prefetched`),
with a progress bar (images/s, time left) on stderr, and one line per split saying what was
encoded or reused (to the evaluator's `echo`; stderr when none is given, as the commands do).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from PIL.Image import DecompressionBombError
from tqdm import tqdm

from promptclimb.agent.core.chunks import assembly_bars
from promptclimb.agent.core.classnames import check_classnames, check_published, names_by_label, read_classnames
from promptclimb.agent.core.errors import DataError, PromptclimbError
from promptclimb.agent.core.format import bar_disable
from promptclimb.agent.core.protocol import UNLABELED_SPLIT, ClassReport, Score, Task
from promptclimb.agent.core.templates import check_templates, fill
from promptclimb.evaluators.backbones import Backbone
from promptclimb.evaluators.datasets import Dataset, FewShotSplit, ids_digest, why_unreadable
from promptclimb.evaluators.features import ImageFeatureCache, TextFeatureCache

LOGIT_ELEMENTS = 32_000_000  # bound on N * K * C floats held at once while scoring
LOADER_THREADS_GPU = min(4, os.cpu_count() or 1)  # decoding threads beside a GPU encoder (1 beside a CPU one)


class ClipEvaluator:
    def __init__(self, backbone: Backbone, dataset: Dataset, split: FewShotSplit,
                 image_batch: int | None = None, echo: Callable[[str], None] | None = None,
                 classnames: Sequence[str] | None = None, bars: bool = True):
        self.backbone = backbone
        self.dataset = dataset
        self.split = split
        self.image_batch = image_batch or backbone.image_batch  # per device: backbones.IMAGE_BATCH
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))  # one line per split's features
        self.bars = bars  # the encoding progress bar on stderr (when it is a terminal); False: never
        self.why_unreadable: dict[str, str] = {}  # image id -> why it could not be read (for the messages)
        # The start names: what is scored when no other names are given (None: the published labels).
        self.classnames = (tuple(dataset.classnames) if classnames is None
                           else check_classnames(classnames, len(dataset.classnames), "--classnames",
                                                 labels=dataset.classnames))
        self.task = Task(dataset=dataset.name, description=dataset.description, classnames=self.classnames)
        self.image_cache = ImageFeatureCache()
        self.text_cache = TextFeatureCache(backbone.feature_identity)
        self._image_features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.skipped: dict[str, list[str]] = {}  # split -> unreadable image ids

    # ------------------------------------------------------------ features

    @property
    def logit_scale(self) -> float:
        return self.backbone.logit_scale

    def image_features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, D] float32 L2-normalised, labels LongTensor [N]) of a split, computed
        once per (backbone, dataset, split, ids) and then read from the disk cache."""
        if split in self._image_features:
            return self._image_features[split]
        if split not in self.split.splits:
            raise PromptclimbError(f"unknown split {split!r}; have {', '.join(self.split.splits)}")
        items = self.split.splits[split]
        if not items:
            raise PromptclimbError(f"split {split!r} of {self.dataset.name} is empty")
        path = self.image_cache.path(self.backbone.feature_identity, f"{self.dataset.name}|{self.dataset.identity}",
                                     split, ids_digest(items))
        cached = self.image_cache.load(path)
        where = f"{self.dataset.name}/{split}"
        if cached is not None:
            features, labels, kept = cached
            self.skipped[split] = sorted({i for i, _ in items} - set(kept))
            self.echo(f"{where}: reused {len(kept):,} cached image features ({self._features_of()})")
        else:
            start = time.perf_counter()
            features, labels, kept = self._encode_split(split, items)
            seconds = time.perf_counter() - start
            self.echo(f"{where}: encoded {len(kept):,} images in {seconds:.1f} s "
                      f"({len(items) / max(seconds, 1e-9):.1f} images/s, {self._features_of()}); cached")
            self.image_cache.save(path, features, labels, kept, {
                "backbone": self.backbone.identity, "precision": self.backbone.precision,
                "dataset": self.dataset.name, "dataset_identity": self.dataset.identity, "split": split,
                "n": len(kept)})
        if self.skipped.get(split):
            bad = self.skipped[split]
            warnings.warn(f"{self.dataset.name}/{split}: skipped {len(bad)} unreadable image(s): "
                          f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}", stacklevel=2)
            lost = torch.bincount(labels, minlength=len(self.dataset.classnames)) == 0
            if split == "train" and lost.any():  # the few shots of a class: nothing to learn it from
                raise DataError(
                    f"{where}: no readable image of class(es) "
                    f"{', '.join(repr(self.dataset.classnames[c]) for c in lost.nonzero().flatten().tolist())} "
                    f"(every one chosen failed to decode: {', '.join(bad[:5])}); replace or remove those files")
        self._image_features[split] = (features, labels)
        return features, labels

    def _features_of(self) -> str:
        return f"{self.backbone.name} {self.backbone.precision}"

    def _encode_split(self, split: str, items) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Features of `items` in order, batch by batch; the next batch is decoded and
        preprocessed in a worker thread while the encoder runs (`_load_batch`, `_prefetched`)."""
        features, labels, kept, bad = [], [], [], []
        chunks = [items[i:i + self.image_batch] for i in range(0, len(items), self.image_batch)]
        desc = f"encoding {self.dataset.name}/{split} images"
        with tqdm(total=len(items), desc=desc, unit="img", leave=False, disable=bar_disable(self.bars),
                  file=sys.stderr, dynamic_ncols=True) as bar:
            threads = 1 if str(self.backbone.device) == "cpu" else LOADER_THREADS_GPU
            for images, readable, unreadable in _prefetched(self._load_batch, chunks, threads):
                bad += unreadable
                if readable:
                    features.append(self.backbone.encode_images(images))
                    labels.extend(label for _, label in readable)
                    kept.extend(image_id for image_id, _ in readable)
                bar.update(len(readable) + len(unreadable))
        self.skipped[split] = bad
        if not kept:  # what went wrong, said by one of them: a file gone, a format Pillow does not read
            example = f": {len(bad)} failed, e.g. {bad[0]} ({self.why_unreadable.get(bad[0], '?')})" if bad else ""
            raise DataError(f"no readable image in split {split!r} of {self.dataset.name}{example}")
        return torch.cat(features), torch.tensor(labels, dtype=torch.long), kept

    def _load_batch(self, chunk) -> tuple[torch.Tensor | None, list, list[str]]:
        """(preprocessed images [B, ...] or None, their (id, label) items, unreadable ids)."""
        images, readable, unreadable = [], [], []
        for image_id, label in chunk:
            try:
                images.append(self.backbone.preprocess(self.dataset.load_image(image_id)))
            except (OSError, ValueError, SyntaxError, DecompressionBombError) as exc:  # unreadable, cut, too large
                unreadable.append(image_id)
                self.why_unreadable.setdefault(image_id, why_unreadable(exc))
                continue
            readable.append((image_id, label))
        return (torch.stack(images) if images else None), readable, unreadable

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), D] normalised float32, encoding only strings not yet cached."""
        texts = list(texts)
        missing = self.text_cache.missing(texts)
        if missing:
            self.text_cache.add(missing, self.backbone.encode_texts(missing))
        return self.text_cache.get(texts)

    def _check(self, templates: Sequence[str]) -> list[str]:
        return check_templates(templates)

    def _names(self, classnames: Sequence[str] | None) -> tuple[str, ...]:
        """The names to fill in: the start names, or `classnames` checked (one per class,
        no braces, no two alike)."""
        if classnames is None or tuple(classnames) == self.classnames:
            return self.classnames
        return check_classnames(classnames, len(self.classnames))

    def _filled_text_features(self, pairs: list[tuple[str, tuple[str, ...]]]) -> torch.Tensor:
        """[K, C, D]: each (template, names) filled with every class's name. Text features
        are cached by string, so names that differ in one class cost one new text each."""
        texts = [fill(t, c) for t, names in pairs for c in names]
        features = self.text_features(texts)
        return features.view(len(pairs), len(self.classnames), -1)

    def _template_text_features(self, templates: list[str], classnames: Sequence[str] | None = None) -> torch.Tensor:
        """[K, C, D]: every template filled with every class name."""
        names = self._names(classnames)
        return self._filled_text_features([(t, names) for t in templates])

    def class_embeddings(self, templates: Sequence[str], classnames: Sequence[str] | None = None) -> torch.Tensor:
        """[C, D]: per class, the mean of the templates' normalised text features, renormalised."""
        features = self._template_text_features(self._check(templates), classnames)
        return F.normalize(features.mean(dim=0), dim=-1)

    def name_similarity(self, template: str, name: str, others: Sequence[str]) -> list[float]:
        """The cosine similarity of `template` filled with `name` to it filled with each of
        `others`: how the drift guard checks the judge (agent/search.py `drift_guard`)."""
        template = self._check([template])[0]
        features = self.text_features([fill(template, n) for n in (name, *others)])
        return (features[1:] @ features[0]).tolist()

    # ------------------------------------------------------------ scores

    def score(self, templates: Sequence[str], splits: Sequence[str] = ("train", "val"),
              classnames: Sequence[str] | None = None) -> list[Score]:
        """One Score (accuracy and mean cross-entropy per split) per template, in order,
        with `classnames` filled in (None: the start names)."""
        templates = self._check(templates)
        return self._scores(self._template_text_features(templates, classnames), splits)

    def score_names(self, template: str, variants: Sequence[Sequence[str]],
                    splits: Sequence[str] = ("train", "val")) -> list[Score]:
        """One Score per names tuple in `variants`, all with `template`, in one batch."""
        template = self._check([template])[0]
        if not variants:
            return []
        return self._scores(self._filled_text_features([(template, self._names(v)) for v in variants]), splits)

    def class_report(self, template: str, classnames: Sequence[str] | None, split: str) -> list[ClassReport]:
        """Per class: its images on `split`, how many were predicted as each class, and the
        mean probability of the true class (one template: one [N, C] logit matrix)."""
        names = self._names(classnames)
        weights = self._template_text_features(self._check([template]), names)[0]  # [C, D]
        images, labels = self.image_features(split)
        logits = self.logit_scale * images @ weights.T
        C = len(names)
        predicted = torch.zeros(C, C, dtype=torch.long)
        predicted.index_put_((labels, logits.argmax(-1)), torch.ones_like(labels), accumulate=True)
        prob = torch.softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
        counts = torch.bincount(labels, minlength=C)
        prob_sums = torch.zeros(C, dtype=prob.dtype).index_add_(0, labels, prob)
        return [ClassReport(index=c, name=names[c], count=int(counts[c]),
                            prob=float(prob_sums[c] / counts[c]) if counts[c] else 0.0,
                            predicted=tuple(int(n) for n in predicted[c].tolist()))
                for c in range(C)]

    def _scores(self, text: torch.Tensor, splits: Sequence[str]) -> list[Score]:
        """One Score per row of `text` [K, C, D] (one classifier each): X @ T.T per split."""
        K, C, D = text.shape
        accuracy, loss, prob, balance = {}, {}, {}, {}
        scale = self.logit_scale
        for s in splits:
            images, labels = self.image_features(s)
            N = images.shape[0]
            # Templates per chunk so that the [N, k, C] logits stay bounded in memory.
            step = max(1, LOGIT_ELEMENTS // max(1, N * C))
            accs, losses, probs, balances = [], [], [], []
            for start in range(0, K, step):
                chunk = text[start:start + step]  # [k, C, D]
                logits = scale * (images @ chunk.reshape(-1, D).T).view(N, -1, C)  # one matrix product
                if s == UNLABELED_SPLIT:  # no labels: only how the predictions spread
                    balances.append(prediction_balance(logits.argmax(-1), C))
                    continue
                accs.append((logits.argmax(-1) == labels[:, None]).float().mean(0))
                target = labels[:, None].expand(N, logits.shape[1])
                ce = F.cross_entropy(logits.permute(0, 2, 1), target, reduction="none")  # [N, k]
                losses.append(ce.mean(0))
                probs.append(torch.exp(-ce).mean(0))  # p(true class) = exp(-cross-entropy), per image
            if s == UNLABELED_SPLIT:
                balance[s] = torch.cat(balances).tolist()
            else:
                accuracy[s], loss[s], prob[s] = (torch.cat(x).tolist() for x in (accs, losses, probs))
        return [Score(accuracy={s: v[i] for s, v in accuracy.items()}, loss={s: v[i] for s, v in loss.items()},
                      prob={s: v[i] for s, v in prob.items()}, balance={s: v[i] for s, v in balance.items()})
                for i in range(K)]

    score_templates = score

    def score_ensemble(self, templates: Sequence[str], splits: Sequence[str] = ("test",),
                       classnames: Sequence[str] | None = None) -> Score:
        """Score of the classifier whose class embeddings average the templates' features."""
        weights = self.class_embeddings(templates, classnames)  # [C, D]
        accuracy, loss, prob, balance = {}, {}, {}, {}
        for s in splits:
            images, labels = self.image_features(s)
            logits = self.logit_scale * images @ weights.T
            if s == UNLABELED_SPLIT:
                balance[s] = float(prediction_balance(logits.argmax(-1)[:, None], len(weights))[0])
                continue
            accuracy[s] = float((logits.argmax(-1) == labels).float().mean())
            ce = F.cross_entropy(logits, labels, reduction="none")
            loss[s], prob[s] = float(ce.mean()), float(torch.exp(-ce).mean())
        return Score(accuracy=accuracy, loss=loss, prob=prob, balance=balance)

    def info(self) -> dict:
        dataset = {"name": self.dataset.name, "identity": self.dataset.identity,
                   "classes": len(self.dataset.classnames), "classnames": list(self.classnames)}
        if list(self.classnames) != list(self.dataset.classnames):
            # start names of its own (--classnames clean, FILE) name no class of other data: the
            # labels let a run's names be matched to another folder's classes by label
            # (agent/runs/recorded.py run_labels); start names that are the labels say them already
            dataset["labels"] = list(self.dataset.classnames)
        return {"backbone": self.backbone.info(), "dataset": dataset,
                "split": self.split.info(), "logit_scale": self.logit_scale}


def _prefetched(load: Callable, chunks: Iterable, threads: int = 1) -> Iterator:
    """load(chunk) for each chunk, in order, computed by `threads` worker threads, up to
    2 * threads chunks before the consumer asks for them.

    Threads, not processes: decoding and preprocessing (PIL, small torch ops) release the
    GIL; a thread needs no start-up, and no pickling of the dataset's loader. What it buys
    depends on the machine. Beside a GPU encoder, decoding is what the GPU waits for. On a
    CPU, the encoder keeps every core busy, and decoding beside it only shares the cores:
    on 2 cores (AMD EPYC, bench/bench_images.py --extra) ViT-B-32 encoded about as many
    images/s with this thread as with decoding in the main thread between batches or with
    a torch DataLoader worker process (fp32 19-21, bf16 32-37 images/s, within the noise of
    a shared machine); preprocessing is 1-2 ms of an image's 25-50 ms there."""
    chunks = iter(chunks)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="promptclimb-images")
    pending = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(load, chunk))
            if len(pending) > 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:  # the consumer stopped early (an error, Ctrl-C)
            future.cancel()
        pool.shutdown(wait=False)


def prediction_balance(predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[k] balance of `predicted` [N, k] (class indices): the entropy of each column's
    histogram of predicted classes over log(C); 1.0 when every class is predicted equally
    often, 0.0 when one class takes every image."""
    columns = predicted.T  # [k, N]
    counts = torch.zeros(columns.shape[0], num_classes, device=predicted.device).scatter_add_(
        1, columns, torch.ones(columns.shape, device=predicted.device))  # [k, C], without an [N, k, C] one-hot
    shares = counts / counts.sum(-1, keepdim=True)
    entropy = -(shares * shares.clamp_min(1e-12).log()).sum(-1)
    return entropy / math.log(num_classes) if num_classes > 1 else torch.ones_like(entropy)


def start_names(data: Dataset, classnames: Sequence[str] | Mapping[str, str] | str | None) -> tuple[str, ...] | None:
    """The start names `classnames` (as `build_evaluator` takes them) mean for `data`, in its
    class order, checked; None for the dataset's published labels (checked too)."""
    if isinstance(classnames, str):
        return read_classnames(classnames, data.classnames, data.named_sets, data.folders, data.folder_word)
    if isinstance(classnames, Mapping):
        return names_by_label(classnames, data.classnames, data.folders)
    if classnames is not None:
        return check_classnames(classnames, len(data.classnames), "--classnames", labels=data.classnames)
    check_published(data.classnames, data.folders, data.folder_word)
    return None


def build_evaluator(dataset: str, shots: int, seed: int, backbone: str, pretrained: str | None = None,
                    weights: str | None = None, data_root: str | None = None,
                    device: str | None = None, precision: str | None = None, image_column: str | None = None,
                    label_column: str | None = None,
                    classnames: Sequence[str] | Mapping[str, str] | str | None = None,
                    unlabeled: int = 0, echo: Callable[[str], None] | None = None,
                    bars: bool = True, loaded_dataset: Dataset | None = None) -> ClipEvaluator:
    """Load the dataset, draw the few-shot split and load the backbone (dataset first: a
    missing dataset or a bad --classnames is reported before a slow model load).
    `precision`: fp32 (the default) or bf16 (backbones.check_precision). `image_column`,
    `label_column`: an hf dataset's columns, when not found from its features
    (evaluators/hf.py). `classnames`: the start names, as a tuple of names, a
    `--classnames` spec (a set name such as `clean`, or a file: agent/core/classnames.py)
    or names keyed by the dataset's labels (a run's, on other data); None: the dataset's
    published labels. `unlabeled`: how many images of the train pool
    outside the split to draw as the split "unlabeled" (`--metric balance`; 0: none).
    `echo`: where each split's image-features line goes (None: stderr, as the commands do);
    `bars`: False draws no progress bar while a split's images are encoded. `loaded_dataset`:
    the dataset these settings name, as a caller already loaded it (`promptclimb eval` reads
    it to check names before the model loads), not read again (an hf dataset's labels: slow)."""
    from promptclimb.evaluators.backbones import load_backbone
    from promptclimb.evaluators.datasets import load_dataset, make_fewshot_split

    data = loaded_dataset or load_dataset(dataset, data_root, image_column=image_column, label_column=label_column)
    classnames = start_names(data, classnames)
    split = make_fewshot_split(data, shots, seed, unlabeled=unlabeled)
    with assembly_bars(bars):  # a backbone's files assembled on first use (demo-mpnet's): their bar too
        model = load_backbone(backbone, pretrained=pretrained, weights=weights, device=device, precision=precision)
    return ClipEvaluator(model, data, split, classnames=classnames, echo=echo, bars=bars)
