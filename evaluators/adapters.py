"""Output-side adapters: a light model fit on top of the winning prompt, from cached features.

Black-box friendly: an adapter only sees what the CLIP model outputs (L2-normalised image
features, or the zero-shot logits made from them) and the prompt's class embeddings; it
never touches the model's weights. Every kind maps image features [N, D] to logits [N, C]
and starts from (or contains) the prompt-only classifier `logit_scale * f @ W.T`.

Kinds (the `ADAPTERS` registry):
  residual-logits   CraFT-style: logits + MLP(logits), trained with cross-entropy plus a
                    KL(prompt-only || adapted) term that keeps it near the prompt's prediction.
  feature-residual  CLIP-Adapter / CBBT-style: f' = normalise(a * MLP(f) + (1 - a) * f),
                    classified by the prompt's class embeddings.
  cache             Tip-Adapter, training-free: the train features are the keys, their
                    labels the values; logits + alpha * exp(-beta * (1 - f . keys)) @ onehot.

Hyper-parameters are chosen on val by a small grid (`select_and_fit`), never on test. Each
grid is ordered from the setting closest to zero-shot to the farthest, and a tie on val
accuracy (likely with 1 image per class) goes to the earlier one. Training is full-batch
Adam for a few hundred steps, seeded: the same inputs and seed give identical weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import shell_command
from promptclimb.agent.core.files import write_atomic

FORMAT_VERSION = 1


class AdapterModule(nn.Module):
    """Base: holds the prompt's class embeddings W [C, D] (not saved: they come from the
    templates) and the logit scale; `zero_shot_logits` is the prompt-only classifier."""

    kind = ""
    grid: tuple[dict, ...] = ()
    trained = True  # False: training-free (nothing is optimised)
    # Whether the adapter applies to class names other than those it was fit with. A trained
    # one learned from the prompt's classifier itself (its logits, or features pulled towards
    # its class embeddings): with other names it would correct a classifier it never saw.
    takes_other_names = False

    def __init__(self, class_embeddings: torch.Tensor, logit_scale: float, hparams: dict):
        super().__init__()
        self.register_buffer("class_embeddings", class_embeddings.detach().float().clone(), persistent=False)
        self.logit_scale = float(logit_scale)
        self.hparams = dict(hparams)

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.class_embeddings.shape[1]

    def zero_shot_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * features @ self.class_embeddings.T

    def size_bytes(self) -> int:
        """Bytes of what the adapter adds to the prompt (its saved tensors)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    # Subclasses: `fit` builds and trains a module; `from_state_dict` rebuilds a saved one.
    @classmethod
    def fit(cls, features, labels, class_embeddings, logit_scale, hparams, seed) -> "AdapterModule":
        raise NotImplementedError

    @classmethod
    def from_state_dict(cls, state: dict, class_embeddings, logit_scale, hparams) -> "AdapterModule":
        module = cls(class_embeddings, logit_scale, hparams)
        module.load_state_dict(state)
        return module


SMALL_PROBLEM = 2_000_000  # feature elements below which one CPU thread is fastest


def _train(module: nn.Module, loss_fn, steps: int, lr: float, weight_decay: float, n_elements: int) -> None:
    """Full-batch AdamW on `loss_fn()`; deterministic on CPU (no sampling, fixed order).
    Few-shot problems are tiny: per-step overhead dominates, and extra threads only add
    contention (3-10x slower on a busy 2-core machine), so they run on one thread."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    threads = torch.get_num_threads()
    if n_elements < SMALL_PROBLEM:
        torch.set_num_threads(1)
    module.train()
    try:
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            loss_fn().backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
        module.eval()


def _seeded_init(seed: int, build):
    """Build a module under its own seed without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class ResidualLogits(AdapterModule):
    """CraFT-style: logits + MLP(logits). The MLP sees the per-sample centred zero-shot
    logits (the softmax ignores a constant shift) and its last layer starts at zero, so the
    untrained adapter *is* the prompt-only classifier."""

    kind = "residual-logits"
    # Ordered from closest to zero-shot (strong KL pull) to freest.
    grid = tuple({"kl_weight": kl, "hidden": 64, "steps": 300, "lr": 1e-3, "weight_decay": 1e-2}
                 for kl in (3.0, 1.0, 0.3, 0.1))

    def __init__(self, class_embeddings, logit_scale, hparams):
        super().__init__(class_embeddings, logit_scale, hparams)
        c, hidden = self.num_classes, int(hparams["hidden"])
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, c))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.zero_shot_logits(features)
        return logits + self.mlp(logits - logits.mean(dim=-1, keepdim=True))

    @classmethod
    def fit(cls, features, labels, class_embeddings, logit_scale, hparams, seed):
        module = _seeded_init(seed, lambda: cls(class_embeddings, logit_scale, hparams))
        with torch.no_grad():
            prompt_log_probs = F.log_softmax(module.zero_shot_logits(features), dim=-1)
        kl_weight = float(hparams["kl_weight"])

        def loss():
            log_probs = F.log_softmax(module(features), dim=-1)
            kl = F.kl_div(log_probs, prompt_log_probs, log_target=True, reduction="batchmean")
            return F.nll_loss(log_probs, labels) + kl_weight * kl

        _train(module, loss, hparams["steps"], hparams["lr"], hparams["weight_decay"], features.numel())
        return module


class FeatureResidual(AdapterModule):
    """CLIP-Adapter / CBBT-style: f' = normalise(a * MLP(f) + (1 - a) * f), classified by
    the prompt's class embeddings. The MLP's last layer starts at zero, so the untrained
    adapter is the prompt-only classifier (the renormalisation removes the 1 - a)."""

    kind = "feature-residual"
    grid = tuple({"ratio": a, "reduction": 4, "steps": 300, "lr": 1e-3, "weight_decay": 1e-2}
                 for a in (0.2, 0.4, 0.6, 0.8))

    def __init__(self, class_embeddings, logit_scale, hparams):
        super().__init__(class_embeddings, logit_scale, hparams)
        d = self.feature_dim
        hidden = max(1, d // int(hparams["reduction"]))
        self.mlp = nn.Sequential(nn.Linear(d, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, d, bias=False))
        nn.init.zeros_(self.mlp[2].weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        a = float(self.hparams["ratio"])
        adapted = F.normalize(a * self.mlp(features) + (1 - a) * features, dim=-1)
        return self.logit_scale * adapted @ self.class_embeddings.T

    @classmethod
    def fit(cls, features, labels, class_embeddings, logit_scale, hparams, seed):
        module = _seeded_init(seed, lambda: cls(class_embeddings, logit_scale, hparams))
        _train(module, lambda: F.cross_entropy(module(features), labels),
               hparams["steps"], hparams["lr"], hparams["weight_decay"], features.numel())
        return module


class CacheModel(AdapterModule):
    """Tip-Adapter (training-free): logits + alpha' * exp(-beta * (1 - f . keys^T)) @ onehot.
    `alpha` is on Tip-Adapter's scale, where CLIP's logit scale is 100: the cache term is
    multiplied by logit_scale / 100 so that the same alpha means the same thing on a
    backbone with another logit scale (the demo's is about 19)."""

    kind = "cache"
    trained = False
    takes_other_names = True  # its term is of the image features alone, added to any names' logits
    grid = tuple({"alpha": alpha, "beta": beta}
                 for alpha in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0) for beta in (1.0, 3.0, 5.5, 8.0))

    def __init__(self, class_embeddings, logit_scale, hparams, keys=None, labels=None):
        super().__init__(class_embeddings, logit_scale, hparams)
        d = self.feature_dim
        self.register_buffer("keys", keys.float().clone() if keys is not None else torch.zeros(0, d))
        self.register_buffer("labels", labels.long().clone() if labels is not None else torch.zeros(0, dtype=torch.long))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        affinity = torch.exp(-float(self.hparams["beta"]) * (1 - features @ self.keys.T))  # [N, K]
        values = F.one_hot(self.labels, self.num_classes).to(affinity.dtype)  # [K, C]
        alpha = float(self.hparams["alpha"]) * self.logit_scale / 100.0
        return self.zero_shot_logits(features) + alpha * affinity @ values

    @classmethod
    def fit(cls, features, labels, class_embeddings, logit_scale, hparams, seed):
        return cls(class_embeddings, logit_scale, hparams, keys=features, labels=labels)

    @classmethod
    def from_state_dict(cls, state, class_embeddings, logit_scale, hparams):
        module = cls(class_embeddings, logit_scale, hparams, keys=state["keys"], labels=state["labels"])
        module.load_state_dict(state)
        return module


ADAPTERS: dict[str, type[AdapterModule]] = {cls.kind: cls for cls in (ResidualLogits, FeatureResidual, CacheModel)}


def get_adapter(kind: str) -> type[AdapterModule]:
    if kind not in ADAPTERS:
        raise PromptclimbError(f"unknown adapter kind {kind!r}; known kinds: {', '.join(ADAPTERS)}")
    return ADAPTERS[kind]


# ---------------------------------------------------------------- fitting with a val grid


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """As the CLIP scorer counts it (the float32 mean of right answers), so that the same count
    is the same number in a run: 1779 of 2000 printed 89.0% for the search and 88.9% here."""
    if not labels.numel():
        return 0.0
    return float((logits.argmax(dim=-1) == labels).float().mean())


def prompt_and_adapter_accuracy(module, features: torch.Tensor, labels: torch.Tensor,
                                order: list[int] | None = None) -> dict[str, float]:
    """Accuracy of a loaded adapter's prompt alone and with the adapter, on one split.
    `order`: for data whose classes come in another order than the adapter's, each data
    class's index among the adapter's classes."""
    if order is not None:
        labels = torch.as_tensor(order, dtype=labels.dtype)[labels]
    with torch.no_grad():
        return {"prompt": accuracy(module.zero_shot_logits(features), labels), "adapter": accuracy(module(features), labels)}


def _check_inputs(features, labels, class_embeddings, what: str) -> None:
    if features.ndim != 2 or class_embeddings.ndim != 2:
        raise PromptclimbError(f"{what}: expected features [N, D] and class embeddings [C, D], "
                               f"got {tuple(features.shape)} and {tuple(class_embeddings.shape)}")
    if features.shape[1] != class_embeddings.shape[1]:
        raise PromptclimbError(f"{what}: image features have dimension {features.shape[1]} but the class "
                               f"embeddings have {class_embeddings.shape[1]} (a different backbone?)")
    if labels.shape[0] != features.shape[0]:
        raise PromptclimbError(f"{what}: {features.shape[0]} features but {labels.shape[0]} labels")
    c = class_embeddings.shape[0]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise PromptclimbError(f"{what}: labels go up to {int(labels.max())} but there are only {c} classes "
                               "(class-count mismatch)")


@dataclass
class FitResult:
    kind: str
    module: AdapterModule
    hparams: dict
    accuracy: dict[str, float]  # adapted: train / val (/ test when given)
    prompt_accuracy: dict[str, float]  # prompt-only on the same splits
    grid: list[dict] = field(default_factory=list)  # every grid point: hparams, train and val accuracy
    fit_s: float = 0.0

    @property
    def size_bytes(self) -> int:
        return self.module.size_bytes()

    @property
    def beats_prompt_on_val(self) -> bool:
        return self.accuracy["val"] > self.prompt_accuracy["val"]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "hparams": self.hparams, "accuracy": self.accuracy,
                "prompt_accuracy": self.prompt_accuracy, "beats_prompt_on_val": self.beats_prompt_on_val,
                "size_bytes": self.size_bytes, "fit_s": round(self.fit_s, 3), "grid": self.grid}


def select_and_fit(kind: str, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   class_embeddings: torch.Tensor, logit_scale: float, seed: int = 0,
                   test: tuple[torch.Tensor, torch.Tensor] | None = None, grid: list[dict] | None = None) -> FitResult:
    """Fit `kind` on train for every grid point, keep the best on val (ties: the earlier,
    closer-to-zero-shot point), and report its accuracies (test only measured, never used)."""
    cls = get_adapter(kind)
    splits = {"train": train, "val": val, **({"test": test} if test is not None else {})}
    for name, (x, y) in splits.items():
        _check_inputs(x, y, class_embeddings, f"{kind} adapter, {name} split")
    started = time.perf_counter()
    tried, best, best_val = [], None, -1.0
    for hparams in (grid or cls.grid):
        module = cls.fit(train[0], train[1], class_embeddings, logit_scale, hparams, seed)
        with torch.no_grad():
            scores = {s: accuracy(module(splits[s][0]), splits[s][1]) for s in ("train", "val")}
        tried.append({"hparams": dict(hparams), "accuracy": scores})
        if scores["val"] > best_val:  # strict: a tie keeps the earlier grid point
            best, best_val = (module, dict(hparams)), scores["val"]
    module, hparams = best
    with torch.no_grad():
        adapted = {s: accuracy(module(x), y) for s, (x, y) in splits.items()}
        prompt = {s: accuracy(module.zero_shot_logits(x), y) for s, (x, y) in splits.items()}
    return FitResult(kind, module, hparams, adapted, prompt, tried, time.perf_counter() - started)


# ---------------------------------------------------------------- adapter.pt


def save_adapter(path: str | Path, module: AdapterModule, templates: list[str], classnames: list[str] | None = None,
                 extra: dict | None = None) -> int:
    """Write adapter.pt (state dict + everything needed to rebuild and check it); returns its size."""
    path = Path(path)
    payload = {
        "format": FORMAT_VERSION, "kind": module.kind, "hparams": module.hparams,
        "num_classes": module.num_classes, "feature_dim": module.feature_dim,
        "logit_scale": module.logit_scale, "templates": list(templates),
        "classnames": list(classnames) if classnames is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        **(extra or {}),
    }
    write_atomic(path, lambda tmp: torch.save(payload, tmp))
    return path.stat().st_size


def read_adapter(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        # the run's folder, as a user pastes it (the adapter file sits in it, agent/adapt.py)
        raise PromptclimbError(f"no adapter at {path}; fit one with: {shell_command('adapt', path.parent)} --kind KIND")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: say which, not a pickle traceback
        # (torch.load's own text on such files is long and about weights_only, not the file)
        raise PromptclimbError(f"{path} is not a readable adapter file (damaged, or not written by "
                               f"`promptclimb adapt`: {type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise PromptclimbError(f"{path}: not a promptclimb adapter file (format v{FORMAT_VERSION})")
    return payload


def load_adapter(path: str | Path, class_embeddings: torch.Tensor, logit_scale: float | None = None) -> AdapterModule:
    """Rebuild a saved adapter on `class_embeddings` (the templates' [C, D] classifier, as
    `ClipEvaluator.class_embeddings(payload["templates"])` gives it); a different class
    count or feature dimension is refused with a clear message."""
    payload = read_adapter(path)
    cls = get_adapter(payload["kind"])
    c, d = class_embeddings.shape
    if c != payload["num_classes"]:
        raise PromptclimbError(f"{path} was fit for {payload['num_classes']} classes but this data has {c} "
                               "(an adapter only applies to new data of the same classes)")
    if d != payload["feature_dim"]:
        raise PromptclimbError(f"{path} was fit on {payload['feature_dim']}-dimensional features but this "
                               f"backbone gives {d} (use the backbone the run used)")
    scale = payload["logit_scale"] if logit_scale is None else logit_scale
    module = cls.from_state_dict(payload["state_dict"], class_embeddings, scale, payload["hparams"])
    module.eval()
    return module
