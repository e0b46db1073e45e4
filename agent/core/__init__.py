"""Shared basics: the only part of `agent/` that `evaluators/` imports. Errors, paths, atomic
files, templates, the evaluator protocol, the run-file format, defaults, number formatting.
Nothing here imports torch, click, pandas or the rest of `agent/`."""
