"""promptclimb's CLIP side: backbones (open_clip), datasets and few-shot splits, the
feature cache, template scoring and output-side adapters. Never talks to an LLM.

`build_evaluator` and `ClipEvaluator` are imported lazily so that importing a light
submodule (e.g. `evaluators.datasets`) does not pay for torch and open_clip.
"""

__all__ = ["build_evaluator", "ClipEvaluator"]


def __getattr__(name):
    if name in __all__:
        from promptclimb.evaluators import scorer

        return getattr(scorer, name)
    raise AttributeError(f"module 'evaluators' has no attribute {name!r}")
