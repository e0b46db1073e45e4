"""Typed settings both sides read, recorded in a run's config.json and read back on resume:
what the evaluator is built from, which LLM answers, and the soft-prompt optimizers' knobs
(the CLIP side runs them, the search side records and resumes them). The hill-climb's own
knobs are `agent.search.SearchConfig`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from promptclimb.agent.core.errors import PromptclimbError

SOFT_OPTIMIZERS = ("craft", "cbbt")


@dataclass(frozen=True)
class EvaluatorSettings:
    """The keywords of the evaluator factory (`evaluators.build_evaluator`): the dataset's
    few-shot split and the backbone. config.json: "evaluator_args"."""

    dataset: str
    shots: int
    seed: int
    backbone: str
    pretrained: str | None = None
    weights: str | None = None
    data_root: str | None = None
    precision: str = "fp32"
    image_column: str | None = None  # an hf dataset's columns, when not found from its features
    label_column: str | None = None
    # the start names: None (published), a named set or a file (--classnames); a resumed run's,
    # the names it recorded, keyed by its labels where it recorded them (agent/resume.py
    # `resumed_evaluator`)
    classnames: str | tuple[str, ...] | dict[str, str] | None = None
    unlabeled: int = 0  # images of the train pool outside the split scored without labels (--metric balance)

    def kwargs(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, recorded: dict) -> "EvaluatorSettings":
        return cls(**{f.name: recorded[f.name] for f in fields(cls) if f.name in recorded})


@dataclass(frozen=True)
class LLMSettings:
    """Which LLM answers (config.json: "llm"); never a key. `local`: the embedded llama.cpp
    server, started by the search; `served_model`: the GGUF a local server serves;
    `request_model`: the model name the requests carry (part of their keys: one name for the
    local LLM, embedded or `promptclimb llm serve`, so either answers the other's run; None in
    runs recorded before it, which asked a served local LLM as `local`); `secrets_left_out`:
    the endpoint's URL held a password or key, which `base_url` leaves out, so a resume that
    still has LLM turns to ask needs the URL given again. `no_cache`: the run reads and writes
    no LLM cache (--no-cache); its resume keeps that unless --cache is given (a resume that read
    the cache ended as a copy of another run that had asked the same)."""

    model: str
    local: bool = False
    llm_model_file: str | None = None
    timeout: float = 120.0  # an API's; the local LLM's is local.REQUEST_TIMEOUT_S
    max_tries: int = 6
    base_url: str | None = None
    served_model: str | None = None
    request_model: str | None = None
    secrets_left_out: bool = False
    no_cache: bool = False

    @classmethod
    def from_config(cls, recorded: dict) -> "LLMSettings":
        return cls(**{f.name: recorded[f.name] for f in fields(cls) if f.name in recorded})


@dataclass
class SoftPromptConfig:
    """Every knob of the soft-prompt search; the defaults are the papers' (CraFT's EuroSAT
    configuration; CBBT's Adam learning rate and 256 directions)."""

    optimizer: str = "craft"
    queries: int = 8000  # prompts scored on the train split by the optimizer
    seed: int = 0
    prompt_tokens: int = 4
    prompt_init: str = "a photo of a"  # the context starts as these words' token embeddings
    craft_popsize: int = 40
    craft_sigma: float = 0.02
    craft_bound: float = 5.0
    craft_intrinsic_dim: int = 512
    craft_lr: float = 0.001  # the refinement module's Adam
    craft_kl_weight: float = 0.01
    cbbt_lr: float = 0.002
    cbbt_directions: int = 256  # perturbed prompts per gradient estimate

    @property
    def queries_per_step(self) -> int:
        return self.craft_popsize if self.optimizer == "craft" else self.cbbt_directions + 1

    @property
    def steps(self) -> int:
        return self.queries // self.queries_per_step

    def check(self) -> "SoftPromptConfig":
        if self.optimizer not in SOFT_OPTIMIZERS:
            raise PromptclimbError(f"soft-prompt optimizer must be one of {', '.join(SOFT_OPTIMIZERS)}, not {self.optimizer!r}")
        for name in ("prompt_tokens", "craft_intrinsic_dim", "cbbt_directions"):
            if getattr(self, name) < 1:
                raise PromptclimbError(f"--{name.replace('_', '-')} must be at least 1")
        words = self.prompt_init.split()
        if not words or "{" in self.prompt_init or "}" in self.prompt_init:
            raise PromptclimbError(f"--prompt-init {self.prompt_init!r}: give the words the context starts from, "
                                   "without braces (such as 'a photo of a')")
        if len(words) > self.prompt_tokens:  # every word is one token or more, whatever the tokenizer
            raise PromptclimbError(f"--prompt-init {self.prompt_init!r} has {len(words)} words, more than "
                                   f"--prompt-tokens {self.prompt_tokens}; shorten it or raise --prompt-tokens")
        if self.craft_popsize < 3:  # the cma library's update fails on a population of 2
            raise PromptclimbError("--craft-popsize must be at least 3 (CMA-ES ranks a population)")
        for name in ("craft_sigma", "craft_bound", "craft_lr", "cbbt_lr"):
            if not 0 < getattr(self, name) < math.inf:
                raise PromptclimbError(f"--{name.replace('_', '-')} must be positive and finite")
        if self.craft_kl_weight < 0:
            raise PromptclimbError("--craft-kl-weight must not be negative")
        if self.steps < 1:
            knob = "--craft-popsize" if self.optimizer == "craft" else "--cbbt-directions"
            raise PromptclimbError(f"--queries {self.queries} buys no {self.optimizer} step: each step scores "
                                   f"{self.queries_per_step} prompts; raise --queries or lower {knob}")
        return self
