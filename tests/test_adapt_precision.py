"""One count of right images prints the same before and after the adapters: `search
--adapter all` printed `best ... test 89.0%`, then `(prompt 88.9%)` for the same prompt on
the same 1779 of 2000 test images. The scorer's accuracy is a float32 mean (0.88950002, which
`pct` rounds up); the adapters counted it exactly (0.8895, which it rounds down)."""

from __future__ import annotations

import json
import struct

from test_adapters import FakeEvaluator, make_run, separable  # noqa: F401 - separable is a fixture

from promptclimb.agent.core.format import pct

RIGHT, IMAGES = 1779, 2000


def as_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def test_the_prompt_alone_prints_and_records_as_the_search_scored_it(separable, tmp_path, monkeypatch):  # noqa: F811
    from promptclimb.agent.adapt import eval_run_adapter, fit_run_adapter
    from promptclimb.evaluators import adapters

    scored = as_float32(RIGHT / IMAGES)  # how the CLIP scorer (a float32 mean) recorded the best's test accuracy
    assert pct(scored) == "89.0%" and pct(RIGHT / IMAGES) == "88.9%"  # the two numbers of one count
    real_fit = adapters.select_and_fit

    def counted_exactly(*args, **kwargs):  # the fit's own counts, as evaluators/adapters.py makes them
        fit = real_fit(*args, **kwargs)
        fit.prompt_accuracy = {**fit.prompt_accuracy, "test": RIGHT / IMAGES}
        fit.accuracy = {**fit.accuracy, "test": (RIGHT + 1) / IMAGES}
        return fit

    monkeypatch.setattr(adapters, "select_and_fit", counted_exactly)
    evaluator = FakeEvaluator({"train": separable.train, "val": separable.val, "test": separable.test},
                              separable.means, separable.scale, "abcd")
    run = make_run(tmp_path / "run", {"seed": 1})
    summary = json.loads((run / "summary.json").read_text())
    summary["best"]["accuracy"]["test"] = scored
    (run / "summary.json").write_text(json.dumps(summary))

    said = []
    section = fit_run_adapter(run, ["cache"], evaluator=evaluator, echo=said.append)
    line = next(line for line in said if line.lstrip().startswith("cache"))
    assert f"(prompt {pct(scored)})" in line and "test 89.0% (prompt 89.0%)" in line, line
    assert section["prompt_accuracy"]["test"] == scored  # the same number as the best's, in summary.json too
    assert section["candidates"][0]["prompt_accuracy"]["test"] == scored

    monkeypatch.setattr(adapters, "prompt_and_adapter_accuracy",
                        lambda module, features, labels: {"prompt": RIGHT / IMAGES, "adapter": (RIGHT + 1) / IMAGES})
    applied = eval_run_adapter(run, evaluator=evaluator, splits=("test",))
    assert applied["accuracy"]["test"]["prompt"] == scored
