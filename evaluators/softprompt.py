"""Soft prompts, and the two black-box optimizers of our seed papers that search them.

    "X X X X {class}."  ->  <start> v1 v2 v3 v4 <class-name tokens> . <end>

A soft prompt is n vectors in a text tower's token-embedding space, put in place of the n
"X" of each class's text. With the vectors set to the embeddings of "a photo of a" it is
exactly the hard template "a photo of a {}." (tests/test_softprompt.py checks it to 1e-5).
`SoftPromptText.class_features` encodes a population of soft prompts [P, n, width] in one
batched pass into class embeddings [P, C, D], which are scored against the evaluator's
cached image features: one query = one soft prompt scored on the train split.

Both optimizers need embedding access to the text tower (its token-embedding table and a
forward pass from embeddings); the LLM search needs only text in and scores out.

- CraFT (Wang et al., ICML 2024): CMA-ES (pycma) over z in R^d; the context is p0 + A z,
  p0 the embeddings of "a photo of a", A a fixed seeded random projection. Its prediction
  refinement (a residual MLP on the logits: evaluators.adapters.ResidualLogits) is trained
  in alternation, one Adam step per generation against the current prompt (the CMA-ES
  mean), and the CMA-ES fitness carries the KL term that ties the two.
- CBBT (Guo et al., Findings of EMNLP 2023): the gradient of the train loss with respect
  to the context, estimated from q prompts perturbed along random unit directions (forward
  differences), fed to Adam; then the feature adapter (evaluators.adapters.FeatureResidual).

Each optimizer's `step()` is one CMA-ES generation or one gradient step and returns its
numbers for the run's history; `state_dict()` / `load_state_dict()` let a killed run go on
to the same end (agent/softsearch.py drives them and writes the run folder).
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import write_atomic
from promptclimb.agent.core.protocol import Score
from promptclimb.agent.core.runfiles import ADAPTER_FILE, SOFT_PROMPT_FILE
from promptclimb.agent.core.settings import SoftPromptConfig
from promptclimb.agent.core.templates import fill
from promptclimb.evaluators.adapters import ResidualLogits, accuracy, save_adapter, select_and_fit
from promptclimb.evaluators.backbones import Backbone, encode_token_embeddings, supports_truncation, token_embedding

PLACEHOLDER = "X"  # the word whose token embeddings the context vectors replace (as CoOp)
ROWS_PER_PASS = 512  # texts per forward pass (rows of one population are all the same short length)
# BBT's scale rule for CraFT's projection: the first generation's contexts spread around p0
# by this many token-embedding standard deviations per coordinate, on any text tower
# (CraFT's code draws A with std 1 for CLIP alone; its config's `alpha: 1` is this knob).
PROJECTION_SPREAD = 1.0
# CBBT's finite differences: step eps = max(1 / dim, EPS_FLOOR) along unit directions, and
# the estimated gradient clipped to this norm (the values of CBBT's code).
EPS_FLOOR = 1e-3
GRAD_CLIP = 5.0


# ---------------------------------------------------------------- encoding


class SoftPromptText:
    """Class texts "X ... X {class}." of one backbone, with the X replaced by soft prompts."""

    def __init__(self, backbone: Backbone, classnames, n_tokens: int):
        self.backbone = backbone
        self.classnames = list(classnames)
        self.n_tokens = n_tokens
        self.template = " ".join([PLACEHOLDER] * n_tokens) + " {}."
        rows = self._token_rows([fill(self.template, c) for c in self.classnames])
        placeholder = int(self._token_rows([PLACEHOLDER])[0, 1])
        context = rows[:, 1:1 + n_tokens]
        if rows.shape[1] < n_tokens + 2 or not bool((context == placeholder).all()):
            raise PromptclimbError(f"backbone {backbone.name}: {PLACEHOLDER!r} does not tokenize to one token per "
                                   "context position; soft prompts are not supported for its tokenizer")
        self.table = self._embedding_table()  # [V, width]

    @property
    def width(self) -> int:
        return self.table.shape[1]

    @property
    def embedding_std(self) -> float:
        return float(self.table.std())

    def context_of(self, text: str) -> torch.Tensor:
        """[n, width]: the token embeddings of `text` as a soft prompt ("a photo of a" gives
        the hard template "a photo of a {}."). It must be exactly n tokens."""
        probe = self.classnames[0]
        mine, placeholder = self._token_rows([fill(text + " {}.", probe), fill(self.template, probe)])
        outside = torch.ones(len(mine), dtype=torch.bool)
        outside[1:1 + self.n_tokens] = False
        if not torch.equal(mine[outside], placeholder[outside]):
            raise PromptclimbError(f"--prompt-init {text!r} is not {self.n_tokens} tokens for backbone "
                                   f"{self.backbone.name}; give a text of {self.n_tokens} tokens or set --prompt-tokens")
        return self.table[mine[1:1 + self.n_tokens]].clone()

    def nearest_tokens(self, context: torch.Tensor) -> list[str]:
        """The vocabulary token closest (Euclidean, as CoOp reads its prompts) to each vector:
        a readable hint of what a soft prompt is near, not a text that scores the same."""
        ids = torch.cdist(context.float(), self.table.float()).argmin(dim=1).tolist()
        return [self._token_name(i) for i in ids]

    @torch.no_grad()  # not inference_mode: CraFT's refinement trains on these (autograd must accept them)
    def class_features(self, contexts: torch.Tensor) -> torch.Tensor:
        """[P, n, width] soft prompts -> [P, C, D] L2-normalised class embeddings (float32, CPU)."""
        if contexts.ndim != 3 or tuple(contexts.shape[1:]) != (self.n_tokens, self.width):
            raise PromptclimbError(f"soft prompts must be [P, {self.n_tokens}, {self.width}], "
                                   f"got {tuple(contexts.shape)}")
        features = self._encode(contexts.to(self.backbone.device, torch.float32))
        return F.normalize(features.float(), dim=-1).cpu()

    # per kind of text tower
    def _token_rows(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def _embedding_table(self) -> torch.Tensor:
        raise NotImplementedError

    def _token_name(self, token_id: int) -> str:
        raise NotImplementedError

    def _encode(self, contexts: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _with_context(fixed: torch.Tensor, contexts: torch.Tensor, n: int) -> torch.Tensor:
    """[P * C, L, width]: every class's token embeddings `fixed` [C, L, width], with the
    context positions 1..n replaced by each soft prompt's vectors."""
    P, C = contexts.shape[0], fixed.shape[0]
    x = fixed.unsqueeze(0).repeat(P, 1, 1, 1)
    x[:, :, 1:1 + n] = contexts.unsqueeze(1)
    return x.reshape(P * C, *fixed.shape[1:])


class OpenClipSoftPromptText(SoftPromptText):
    """A causal open_clip text tower: padding after the end token never matters, so every
    row is cut to the longest text (encode_token_embeddings)."""

    def __init__(self, backbone, classnames, n_tokens):
        super().__init__(backbone, classnames, n_tokens)
        self.tokens = self._token_rows([fill(self.template, c) for c in self.classnames]).to(backbone.device)
        with torch.no_grad():
            self.fixed = token_embedding(backbone.model)(self.tokens).float()  # [C, 77, width]

    def _token_rows(self, texts):
        return self.backbone.tokenizer(texts)

    def _embedding_table(self):
        return token_embedding(self.backbone.model).weight.detach().float().cpu()

    def _token_name(self, token_id):
        decode = getattr(self.backbone.tokenizer, "decode", None)
        return decode([token_id]).strip() if decode else f"#{token_id}"

    def _encode(self, contexts):
        P, C = contexts.shape[0], len(self.classnames)
        step = max(1, ROWS_PER_PASS // C)  # soft prompts per pass
        out = []
        for start in range(0, P, step):
            chunk = contexts[start:start + step]
            x = _with_context(self.fixed, chunk, self.n_tokens)
            out.append(encode_token_embeddings(self.backbone.model, x, self.tokens.repeat(len(chunk), 1)))
        return torch.cat(out).view(P, C, -1)


class SentenceSoftPromptText(SoftPromptText):
    """The demo's sentence encoders (bidirectional, mean-pooled): classes are grouped by
    their token count, so that every pass is free of padding (SentenceTextTower.encode_embeddings)."""

    def __init__(self, backbone, classnames, n_tokens):
        super().__init__(backbone, classnames, n_tokens)
        encoded = self.backbone.tokenizer([fill(self.template, c) for c in self.classnames])
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        embed = self.tower.transformer.get_input_embeddings()
        self.groups = []  # (class indices, their token embeddings [c, L, width]), one per length
        for length in sorted(set(lengths)):
            members = [i for i, n in enumerate(lengths) if n == length]
            ids = encoded["input_ids"][members, :length].to(backbone.device)
            with torch.no_grad():
                self.groups.append((members, embed(ids).float()))

    @property
    def tower(self):
        return self.backbone.model.text

    def _token_rows(self, texts):
        return self.backbone.tokenizer(texts)["input_ids"]

    def _embedding_table(self):
        return self.tower.transformer.get_input_embeddings().weight.detach().float().cpu()

    def _token_name(self, token_id):
        return self.backbone.tokenizer.hf_tokenizer.convert_ids_to_tokens(token_id)

    def _encode(self, contexts):
        P = contexts.shape[0]
        out = None
        for members, fixed in self.groups:
            step = max(1, ROWS_PER_PASS // len(members))
            pieces = []
            for start in range(0, P, step):
                chunk = contexts[start:start + step]
                pieces.append(self.tower.encode_embeddings(_with_context(fixed, chunk, self.n_tokens)))
            features = torch.cat(pieces).view(P, len(members), -1)
            if out is None:
                out = features.new_empty(P, len(self.classnames), features.shape[-1])
            out[:, members] = features
        return out


def soft_prompt_text(backbone: Backbone, classnames, n_tokens: int) -> SoftPromptText:
    """The soft-prompt encoder for a backbone's text tower, or a clear refusal."""
    from promptclimb.evaluators.demo.model import SentenceTextTower

    if n_tokens < 1:
        raise PromptclimbError("--prompt-tokens must be at least 1")
    if isinstance(getattr(backbone.model, "text", None), SentenceTextTower):
        return SentenceSoftPromptText(backbone, classnames, n_tokens)
    if supports_truncation(backbone.model):
        return OpenClipSoftPromptText(backbone, classnames, n_tokens)
    raise PromptclimbError(f"backbone {backbone.name}: soft prompts need a causal open_clip text tower or the "
                           "demo's sentence encoder (embedding access); use --optimizer llm, which needs text only")


# ---------------------------------------------------------------- scoring


def population_logits(class_features: torch.Tensor, features: torch.Tensor, scale: float) -> torch.Tensor:
    """[P, N, C] logits of P soft prompts' class embeddings [P, C, D] on images [N, D]."""
    return scale * torch.einsum("nd,pcd->pnc", features, class_features)


def cross_entropy_each(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[P] mean cross-entropy of each of P classifiers' logits [P, N, C]."""
    P, N, C = logits.shape
    return F.cross_entropy(logits.reshape(P * N, C), labels.repeat(P), reduction="none").view(P, N).mean(1)


def accuracy_each(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).float().mean(-1)


def score_class_features(class_features: torch.Tensor, splits: dict, scale: float) -> Score:
    """Score (accuracy, loss, prob per split) of one classifier [C, D] on {split: (features, labels)}."""
    acc, loss, prob = {}, {}, {}
    for name, (x, y) in splits.items():
        logits = scale * x @ class_features.T
        ce = F.cross_entropy(logits, y, reduction="none")
        acc[name], loss[name], prob[name] = accuracy(logits, y), float(ce.mean()), float(torch.exp(-ce).mean())
    return Score(accuracy=acc, loss=loss, prob=prob)


# ---------------------------------------------------------------- optimizers


class SoftPromptOptimizer:
    """What both optimizers share: the encoder, the cached train/val features, the count of
    steps and queries, and the record of the current prompt after each step."""

    name = ""
    module_kind = ""  # the output-side module of the paper

    def __init__(self, text: SoftPromptText, splits: dict, logit_scale: float, config: SoftPromptConfig):
        self.text, self.splits, self.scale, self.config = text, splits, logit_scale, config
        self.train_x, self.train_y = splits["train"]
        self.p0 = text.context_of(config.prompt_init)
        self.step_count = 0
        self.queries = 0

    @property
    def total_steps(self) -> int:
        return self.config.steps

    @property
    def done(self) -> bool:
        return self.step_count >= self.total_steps

    def context(self) -> torch.Tensor:
        """[n, width]: the current prompt (what the search would return now)."""
        raise NotImplementedError

    def prompt_record(self, class_features: torch.Tensor) -> dict:
        """Train and val accuracy and train loss of the current prompt, for the history.
        These scorings inform no decision of the optimizer and are not counted as queries."""
        score = score_class_features(class_features, {s: self.splits[s] for s in ("train", "val")}, self.scale)
        return {"accuracy": score.accuracy, "loss": {"train": score.loss["train"]}}

    def start_record(self) -> dict:
        """The record of step 0: the initial prompt p0, before any query."""
        return {"step": 0, "queries": 0, "prompt": self.prompt_record(self.text.class_features(self.p0[None])[0])}

    def finish(self, run_dir: Path, test: tuple[torch.Tensor, torch.Tensor], seed: int) -> dict:
        """The result: the final prompt's scores, its file and nearest tokens, and the
        output-side module fit on it (kept when it beats the prompt alone on val)."""
        context = self.context()
        class_features = self.text.class_features(context[None])[0]
        splits = {**self.splits, "test": test}
        score = score_class_features(class_features, splits, self.scale)
        nearest = self.text.nearest_tokens(context)
        save_soft_prompt(run_dir / SOFT_PROMPT_FILE, context, {
            "optimizer": self.name, "backbone": self.text.backbone.identity, "init": self.config.prompt_init,
            "template": self.text.template, "nearest_tokens": " ".join(nearest)})
        module, hparams = self.output_module(class_features, test, seed)
        with torch.no_grad():
            adapted = {s: accuracy(module(x), y) for s, (x, y) in splits.items()}
        beats = adapted["val"] > score.accuracy["val"]
        file_bytes = save_adapter(run_dir / ADAPTER_FILE, module, [], list(self.text.classnames),
                                  extra={"soft_prompt": SOFT_PROMPT_FILE, "optimizer": self.name})
        return {
            "nearest_tokens": nearest, "score": score,
            "adapter": {"kind": module.kind, "hparams": hparams, "accuracy": adapted,
                        "prompt_accuracy": dict(score.accuracy), "beats_prompt_on_val": beats,
                        "result": "adapter" if beats else "prompt-only", "size_bytes": module.size_bytes(),
                        "file": ADAPTER_FILE, "file_bytes": file_bytes},
        }

    def output_module(self, class_features, test, seed):
        raise NotImplementedError


class CraftOptimizer(SoftPromptOptimizer):
    """CraFT: CMA-ES on a random projection of the context, refinement trained in alternation."""

    name = "craft"
    module_kind = ResidualLogits.kind

    def __init__(self, text, splits, logit_scale, config):
        import cma

        super().__init__(text, splits, logit_scale, config)
        d, n, width = config.craft_intrinsic_dim, text.n_tokens, text.width
        generator = torch.Generator().manual_seed(config.seed)
        std = PROJECTION_SPREAD * text.embedding_std / (math.sqrt(d) * config.craft_sigma)
        self.projection = torch.randn(n * width, d, generator=generator) * std  # A, fixed by the seed
        options = {"popsize": config.craft_popsize, "bounds": [-config.craft_bound, config.craft_bound],
                   # pycma's own seeding goes through numpy's global RNG; its samples come from
                   # a generator of our own instead, which pickles with the strategy (resume).
                   "seed": np.nan, "randn": SeededNormal(config.seed), "verbose": -9}
        self.es = cma.CMAEvolutionStrategy(np.zeros(d), config.craft_sigma, inopts=options)
        hparams = {"hidden": 256, "lr": config.craft_lr, "kl_weight": config.craft_kl_weight}  # CraFT's 256-wide MLP
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.refinement = ResidualLogits(text.class_features(self.p0[None])[0], logit_scale, hparams)
        self.adam = torch.optim.Adam(self.refinement.parameters(), lr=config.craft_lr)

    def contexts(self, z: np.ndarray) -> torch.Tensor:
        """[P, n, width] = p0 + A z for z [P, d]."""
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32)
        return self.p0 + (z @ self.projection.T).view(len(z), *self.p0.shape)

    def context(self):
        return self.contexts(self.es.result.xfavorite[None])[0]  # the mean (as bounded), as CraFT uses it

    def refined(self, class_features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of the prompt `class_features` [C, D] through the refinement module."""
        self.refinement.class_embeddings = class_features
        return self.refinement(x)

    def step(self) -> dict:
        from threadpoolctl import threadpool_limits

        kl_weight = self.config.craft_kl_weight
        sigma = float(self.es.sigma)
        # numpy's eigendecomposition in pycma, 512 x 512: multi-threaded BLAS is 10x slower on
        # a busy 2-core machine, one thread takes 0.1 s.
        with threadpool_limits(limits=1, user_api="blas"):
            population = self.es.ask()
        class_features = self.text.class_features(self.contexts(population))  # [P, C, D]: the queries
        with torch.no_grad():
            logits = population_logits(class_features, self.train_x, self.scale)
            refined = torch.stack([self.refined(w, self.train_x) for w in class_features])
            # CraFT's fitness: cross-entropy + KL(refined prediction || the prompt's own)
            kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(refined, -1), log_target=True,
                          reduction="none").sum(-1).mean(-1)
            fitness = cross_entropy_each(logits, self.train_y) + kl_weight * kl
        with threadpool_limits(limits=1, user_api="blas"):
            self.es.tell(population, fitness.tolist())
        self.queries += len(population)
        self.step_count += 1

        # The refinement: one Adam step on the current prompt's predictions (CraFT trains it one
        # epoch per generation; our few-shot train split is one batch), cross-entropy of the
        # refined prediction + KL(the prompt's || refined).
        current = self.text.class_features(self.context()[None])[0]
        prompt_log_probs = F.log_softmax(self.scale * self.train_x @ current.T, -1)
        self.refinement.train()
        self.adam.zero_grad(set_to_none=True)
        log_probs = F.log_softmax(self.refined(current, self.train_x), -1)
        loss = F.nll_loss(log_probs, self.train_y) + kl_weight * F.kl_div(
            log_probs, prompt_log_probs, log_target=True, reduction="batchmean")
        loss.backward()
        self.adam.step()
        self.refinement.eval()

        record = self.prompt_record(current)
        with torch.no_grad():
            record["accuracy"]["val_refined"] = accuracy(self.refined(current, self.splits["val"][0]), self.splits["val"][1])
        population_accuracy = accuracy_each(logits, self.train_y)
        return {"step": self.step_count, "queries": self.queries, "sigma": sigma, "prompt": record,
                "population": {"fitness_best": float(fitness.min()), "fitness_median": float(fitness.median()),
                               "train_accuracy_best": float(population_accuracy.max())},
                "refinement_loss": float(loss.detach())}

    def output_module(self, class_features, test, seed):
        self.refinement.class_embeddings = class_features
        return self.refinement, self.refinement.hparams

    def state_dict(self) -> dict:
        return {"step": self.step_count, "queries": self.queries, "es": pickle.dumps(self.es),
                "refinement": self.refinement.state_dict(), "adam": self.adam.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.queries = state["step"], state["queries"]
        self.es = pickle.loads(state["es"])
        self.refinement.load_state_dict(state["refinement"])
        self.adam.load_state_dict(state["adam"])


class SeededNormal:
    """pycma's `randn(lam, N)` from a numpy Generator of our own (picklable, seeded)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape):
        return self.rng.standard_normal(shape)


class CbbtOptimizer(SoftPromptOptimizer):
    """CBBT: forward-difference gradient estimates from q perturbed prompts, Adam, cosine schedule."""

    name = "cbbt"
    module_kind = "feature-residual"

    def __init__(self, text, splits, logit_scale, config):
        super().__init__(text, splits, logit_scale, config)
        self.parameter = torch.nn.Parameter(self.p0.clone())
        self.adam = torch.optim.Adam([self.parameter], lr=config.cbbt_lr)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.adam, T_max=max(1, self.total_steps))
        self.generator = torch.Generator().manual_seed(config.seed)
        self.dim = self.p0.numel()
        self.eps = max(1.0 / self.dim, EPS_FLOOR)

    def context(self):
        return self.parameter.detach().clone()

    def step(self) -> dict:
        q = self.config.cbbt_directions
        directions = torch.randn(q, self.dim, generator=self.generator)
        directions = directions / directions.norm(dim=1, keepdim=True)
        base = self.parameter.detach()
        contexts = torch.cat([base[None], base[None] + self.eps * directions.view(q, *base.shape)])
        class_features = self.text.class_features(contexts)  # [q + 1, C, D]: the queries
        with torch.no_grad():
            losses = cross_entropy_each(population_logits(class_features, self.train_x, self.scale), self.train_y)
            slopes = (losses[1:] - losses[0]) / self.eps  # directional derivatives
            gradient = (self.dim / q) * (slopes[:, None] * directions).sum(0)
            norm = float(gradient.norm())
            if norm > GRAD_CLIP:
                gradient = gradient * (GRAD_CLIP / norm)
        lr = float(self.schedule.get_last_lr()[0])
        self.parameter.grad = gradient.view(base.shape)
        self.adam.step()
        self.schedule.step()
        self.queries += q + 1
        self.step_count += 1
        current = self.text.class_features(self.context()[None])[0]
        return {"step": self.step_count, "queries": self.queries, "lr": lr, "gradient_norm": norm,
                "loss_before": float(losses[0]), "prompt": self.prompt_record(current)}

    def output_module(self, class_features, test, seed):
        fit = select_and_fit(self.module_kind, self.splits["train"], self.splits["val"], class_features,
                             self.scale, seed=seed, test=test)
        return fit.module, fit.hparams

    def state_dict(self) -> dict:
        return {"step": self.step_count, "queries": self.queries, "context": self.parameter.detach().clone(),
                "adam": self.adam.state_dict(), "schedule": self.schedule.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.queries = state["step"], state["queries"]
        with torch.no_grad():
            self.parameter.copy_(state["context"])
        self.adam.load_state_dict(state["adam"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])


OPTIMIZERS = {cls.name: cls for cls in (CraftOptimizer, CbbtOptimizer)}


def build_optimizer(evaluator, config: SoftPromptConfig) -> SoftPromptOptimizer:
    """The optimizer named by config, on the evaluator's backbone, classes and cached train/val features."""
    text = soft_prompt_text(evaluator.backbone, evaluator.task.classnames, config.prompt_tokens)
    splits = {s: evaluator.image_features(s) for s in ("train", "val")}
    return OPTIMIZERS[config.optimizer](text, splits, evaluator.logit_scale, config)


# ---------------------------------------------------------------- files


def save_soft_prompt(path: Path, context: torch.Tensor, metadata: dict) -> Path:
    """The soft prompt [n, width] as a safetensors file (tensor "context"), with where it belongs."""
    from safetensors.torch import save_file

    return write_atomic(path, lambda tmp: save_file({"context": context.detach().float().contiguous().cpu()},
                                                      str(tmp), metadata={k: str(v) for k, v in metadata.items()}))


def load_soft_prompt(path: Path) -> tuple[torch.Tensor, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("context"), dict(f.metadata() or {})


def save_state(path: Path, optimizer: SoftPromptOptimizer) -> Path:
    """The optimizer's whole state (CMA-ES strategy, Adam, generators), replaced atomically."""
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    return write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def load_state(path: Path, optimizer: SoftPromptOptimizer) -> int:
    """Restore a state saved by `save_state` (our own file: it holds a pickled CMA-ES); the step it is at."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state)
    return optimizer.step_count
