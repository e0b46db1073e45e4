"""The search loop (agent.search) and `promptclimb search` (agent.cli.search), end to end
against the fake OpenAI-compatible server and an in-memory evaluator: no torch, no network."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from promptclimb.agent.llm.answers import LLMError
from promptclimb.agent.llm.client import LLMClient
from promptclimb.agent.core.pools import PoolTemplate
from promptclimb.agent.runs.store import RunStore
from promptclimb.agent.search import HillClimber, SearchConfig
from fake_llm import FakeLLM, WordEvaluator, signal_child_at_request

TESTS = Path(__file__).resolve().parent
KEY = "sk-test-TOPSECRET-abcdef0123456789"
POOL = [PoolTemplate(t, "general") for t in
        ["a {}.", "itap of a {}.", "a drawing of a {}.", "a photo of a {}.", "a sketch of the {}.", "the {}."]]
SMALL = dict(restarts=1, resets=2, iterations=3, proposals=5, pool_sample=0, search="template")  # the template climb

WORDS = ["photo", "clothing", "grayscale", "product", "garment", "studio", "blurry", "tiny", "dark", "bright"]


def responder(body: dict) -> str:
    """Proposals that are a pure function of the request (so a resumed run gets the same)."""
    h = int(hashlib.sha256(json.dumps([body["messages"], body["seed"]]).encode()).hexdigest(), 16)
    return "\n".join(
        f"{i + 1}. a {WORDS[(h >> 4 * i) % 10]} {WORDS[(h >> 4 * i + 24) % 10]} image of a {{}}." for i in range(5)
    )


def climb(tmp_path, base_url, name="run", evaluator=None, cache="cache", echo=lambda msg: None, **config):
    evaluator = evaluator or WordEvaluator()
    llm = LLMClient("fake", base_url=base_url, api_key=KEY, timeout=5, cache_dir=tmp_path / cache,
                    wait_initial=0.001, wait_max=0.01, max_tries=config.pop("max_tries", 4),
                    max_calls=config.get("max_calls"), max_tokens=config.get("max_tokens"),
                    context_tokens=config.pop("context_tokens", None))
    run_dir = tmp_path / "runs" / name
    store = RunStore.resume(run_dir) if (run_dir / "config.json").exists() else RunStore.create(run_dir, {"t": 1})
    with store:
        result = HillClimber(evaluator, llm, store, SearchConfig(**{**SMALL, **config}), pool=POOL,
                             echo=echo).run()
    return result, evaluator, run_dir


def history(run_dir):
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def comparable(summary: dict) -> dict:
    """A summary without what legitimately differs between two equivalent runs."""
    return {k: v for k, v in summary.items() if k not in ("ledger", "timings", "run_id")}


def comparable_events(run_dir) -> list[dict]:
    drop = ("time", "latency_s", "cached", "source")
    return [{k: v for k, v in e.items() if k not in drop} for e in history(run_dir)]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))


def test_the_best_is_the_best_of_everything_scored_and_a_later_worse_one_does_not_displace_it(tmp_path):
    """The LLM proposes templates that score better than the pool, worse than it, the best
    of the run, and then ones that beat the pool but not that best: the result is the best
    of every score event of the history by the run's ranking, whatever came after it."""
    from promptclimb.agent.ranking import rank_key, selection_value

    script = ["a grayscale photo of a {}.\na blurry {}.",  # better than the pool; worse
              "a grayscale photo of clothing: a {}.\na dark {}.",  # the best; worse
              "a photo of a garment {}.\nthe {} again."]  # later: better than the pool, not the best; worse
    with FakeLLM(script=script) as fake:
        result, evaluator, run_dir = climb(tmp_path, fake.base_url)
    scores = [e for e in history(run_dir) if e["event"] == "score"]
    value = {e["template"]: selection_value(e["accuracy"], e["prob"], ("train",), "accuracy") for e in scores}
    best = min(scores, key=lambda e: rank_key(value[e["template"]], e["loss"], ("train",), e["seq"]))
    assert result.best["template"] == best["template"] == "a grayscale photo of clothing: a {}."
    # the decision was not made for it: proposals went both ways against the pool ...
    pool_best = max(value[e["template"]] for e in scores if e["origin"] == "pool")
    proposed = [e for e in scores if e["origin"] == "llm"]
    assert any(value[e["template"]] > pool_best for e in proposed)
    assert any(value[e["template"]] < pool_best for e in proposed)
    # ... and a proposal scored after the best, better than the pool, did not displace it
    later = [e for e in proposed if e["seq"] > best["seq"] and value[e["template"]] > pool_best]
    assert [e["template"] for e in later] == ["a photo of a garment {}."]
    assert value["a photo of a garment {}."] < value[result.best["template"]]
    assert set(result.best["accuracy"]) == {"train", "val", "test"} and result.best["origin"] == "llm"
    # every ensemble size scores the same here: the smallest, 2, is kept; it beats the best alone on val
    assert result.ensemble["templates"][0] == result.best["template"] and len(result.ensemble["templates"]) == 2
    assert result.ensemble["chosen"] and result.summary["winner"] == "ensemble"
    assert result.stopped == "completed" and fake.count == 6  # 2 resets x 3 iterations
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["v"] == 2 and summary["best"] == result.best and summary["ledger"]["calls"] == 6
    assert {"config.json", "history.jsonl", "prompts.csv", "summary.json"} <= {p.name for p in run_dir.iterdir()}
    # test accuracy is computed once, at the end, for the best template and the ensemble only
    assert [s for s in evaluator.splits_asked if "test" in s] == [("test",)]
    assert len(evaluator.ensembles) == 2  # sizes 2 and 3 tried


def test_conversation_feedback_resets_and_seeds(tmp_path):
    answers = ["a grayscale photo of a {}.", "a dark {}.", "a {} in the dark.", "a {} at night.", "a small {}.",
               "a large {}."]
    with FakeLLM(script=answers) as fake:
        climb(tmp_path, fake.base_url)
    sizes = [len(r["messages"]) for r in fake.requests]
    assert sizes == [2, 4, 6, 2, 4, 6]  # the conversation grows inside a reset and starts over
    assert fake.requests[0]["messages"][0]["role"] == "system"
    assert "T-shirt, trousers, bag" in fake.requests[0]["messages"][0]["content"]
    first = fake.requests[0]["messages"][1]["content"]
    assert re.search(r"^[\d.]+%  a photo of a \{\}\.$", first, flags=re.M)
    feedback = fake.requests[1]["messages"][-1]["content"]
    assert re.search(r"^[\d.]+%  a grayscale photo of a \{\}\.  \(better than the best before it, [\d.]+%\)$",
                     feedback, flags=re.M)
    feedback = fake.requests[2]["messages"][-1]["content"]
    assert re.search(r"^[\d.]+%  a dark \{\}\.  \(worse than the best before it, [\d.]+%\)$", feedback, flags=re.M)
    # the new conversation starts from the kept scoreboard: its best is the LLM's template
    assert "a grayscale photo of a {}." in fake.requests[3]["messages"][1]["content"]
    assert len({r["seed"] for r in fake.requests}) == 6


def test_an_answer_with_nothing_to_score_is_followed_by_a_fresh_conversation(tmp_path):
    # the 1.5B model, given back only its refused or repeated lines, writes them again
    answers = ["a grayscale photo of a {}.", "a {{}} broken\na grayscale photo of a {}.", "a dark {}.", "a small {}."]
    with FakeLLM(script=answers) as fake:
        _, _, run_dir = climb(tmp_path, fake.base_url, resets=1, iterations=4)
    assert [len(r["messages"]) for r in fake.requests] == [2, 4, 2, 4]
    fresh = fake.requests[2]["messages"]
    assert fresh[0]["role"] == "system" and "a {{}} broken" not in fresh[1]["content"]
    assert "a grayscale photo of a {}." in fresh[1]["content"]  # the board as it is now
    assert len({r["seed"] for r in fake.requests}) == 4
    exchanges = [e for e in history(run_dir) if e["event"] == "llm_exchange"]
    assert [e["n_messages"] for e in exchanges] == [2, 4, 2, 4]
    assert [len(e["messages"]) for e in exchanges] == [2, 2, 2, 2]  # each records what it added


class FitsTheTrainImages(WordEvaluator):
    """A template with the word "overfit" scores better on train and worse on val and test:
    it fits the few training images, not the task."""

    def _value(self, template: str, split: str) -> tuple[float, float]:
        acc, loss = super()._value(template, split)
        if "overfit" in template:
            acc = round(acc + {"train": 0.3, "val": -0.1, "test": -0.1}[split], 4)
            loss = round(2.0 - acc, 4)
        return acc, loss


def test_a_new_best_template_worse_on_val_is_held_back_and_the_llm_reads_why(tmp_path):
    from promptclimb.agent.core.format import pct
    from promptclimb import load_run
    from promptclimb.agent.search import HELD_BACK

    script = ["an overfit photo of a {}.\na grayscale photo of a {}.", "a dark {}."]
    with FakeLLM(script=script) as fake:
        result, ev, run_dir = climb(tmp_path, fake.base_url, evaluator=FitsTheTrainImages(), resets=1, iterations=2)
    events = history(run_dir)
    pool = [e for e in events if e["event"] == "score" and e["origin"] == "pool"]
    before = max(pool, key=lambda e: (e["accuracy"]["train"], -e["loss"]["train"]))  # the best when it was proposed
    overfit = ev.score(["an overfit photo of a {}."], splits=("train", "val"))[0]
    assert overfit.accuracy["train"] > before["accuracy"]["train"]  # it would have been the new best
    held = [e for e in events if e["event"] == "reject" and e["reason"] == HELD_BACK]
    assert [(e["template"], e["detail"]) for e in held] == [
        ("an overfit photo of a {}.", f"val {pct(overfit.accuracy['val'])} vs {pct(before['accuracy']['val'])}")]
    assert "an overfit photo of a {}." not in {e["template"] for e in events if e["event"] == "score"}
    assert result.best["template"] == "a grayscale photo of a {}."
    read = load_run(run_dir)  # the reader ranks as the search did, and shows why it was held back
    assert read.ranked()["template"].iloc[0] == "a grayscale photo of a {}."
    assert {"template": "an overfit photo of a {}.", "reason": f"{HELD_BACK} ({held[0]['detail']})"} in \
        read.iterations()[0]["rejected"]
    assert (f"an overfit photo of a {{}}.  (better than the best before it, {pct(before['accuracy']['train'])}, "
            f"but worse on held-out images, {held[0]['detail']}: not kept)") in fake.requests[1]["messages"][-1]["content"]
    with FakeLLM(script=script) as fake:  # unconfirmed, it wins on train and loses on test
        off, _, _ = climb(tmp_path, fake.base_url, name="off", cache="cache-off", evaluator=FitsTheTrainImages(),
                          resets=1, iterations=2, confirm="off")
    assert off.best["template"] == "an overfit photo of a {}."
    assert off.best["accuracy"]["test"] < result.best["accuracy"]["test"]
    with FakeLLM(script=script) as fake:  # ranked on train and val together, nothing is held out to check it on
        pooled, _, run_dir = climb(tmp_path, fake.base_url, name="pooled", cache="cache-pooled",
                                   evaluator=FitsTheTrainImages(), resets=1, iterations=2, select="train+val")
    assert not [e for e in history(run_dir) if e["event"] == "reject" and e["reason"] == HELD_BACK]
    assert "an overfit photo of a {}." in {e["template"] for e in history(run_dir) if e["event"] == "score"}


def test_a_held_back_template_proposed_again_is_a_repeat(tmp_path):
    from promptclimb.agent.proposals import DUPLICATE
    from promptclimb.agent.search import HELD_BACK

    # The LLM is told the held-back template's score; writing it again spends a line, as a
    # template on the board does (in the bench the LLM wrote one again in four more turns).
    script = ["an overfit photo of a {}.", "An overfit photo of a {}\na dark {}.", "a plain {}."]
    with FakeLLM(script=script) as fake:
        _, _, run_dir = climb(tmp_path, fake.base_url, evaluator=FitsTheTrainImages(), resets=1, iterations=3)
    events = history(run_dir)
    assert [e["iteration"] for e in events if e["event"] == "reject" and e["reason"] == HELD_BACK] == [1]
    assert [(e["iteration"], e["template"]) for e in events if e["event"] == "reject" and e["reason"] == DUPLICATE] \
        == [(2, "An overfit photo of a {}")]
    assert "1 of your lines repeated templates already scored" in fake.requests[2]["messages"][-1]["content"]


@pytest.mark.parametrize("metric, new, old, why", [
    ("accuracy", (0.8, 0.5, 0.6), (0.9, 0.5, 0.6), "val 80.0% vs 90.0%"),
    ("accuracy", (0.9, 0.5, 0.677), (0.9, 0.5, 0.535), "val cross-entropy 0.677 vs 0.535"),
    # a difference below the usual decimals is shown with as many more as it takes
    ("accuracy", (0.9, 0.5, 0.69242), (0.9, 0.5, 0.69218), "val cross-entropy 0.6924 vs 0.6922"),
    ("prob", (0.9, 0.75012, 0.6), (0.9, 0.75034, 0.6), "val 75.01% vs 75.03%"),
    ("accuracy", (0.9, 0.5, 0.5), (0.9, 0.5, 0.5), ""),  # level passes
])
def test_why_a_new_best_is_held_back_reads_two_different_figures(metric, new, old, why):
    from promptclimb.agent.ranking import worse_on

    as_split = lambda acc, prob, loss: ({"val": acc}, {"val": prob}, {"val": loss})  # noqa: E731
    assert worse_on(("val",), metric, as_split(*new), as_split(*old)) == why


class SpreadsEvenly(WordEvaluator):
    """WordEvaluator with a balance on the unlabeled images: 0.95 for a template with
    "sketch" or "drawing", 0.99 with "overfit" or "clothing", 0.9 for any other (what
    `--metric balance` ranks by: the accuracy winner, "a photo of a {}.", spreads worst)."""

    SPREAD = {"sketch": 0.95, "drawing": 0.95, "overfit": 0.99, "clothing": 0.99}

    def _score_with(self, template, names, splits):
        labelled = [s for s in splits if s != "unlabeled"]
        score = super()._score_with(template, names, labelled)
        if "unlabeled" not in splits:
            return score
        words = set(re.findall(r"[a-z]+", template.lower()))
        balance = max([0.9] + [v for w, v in self.SPREAD.items() if w in words])
        return type(score)(accuracy=score.accuracy, loss=score.loss, prob=score.prob, balance={"unlabeled": balance})

    def _value(self, template: str, split: str) -> tuple[float, float]:
        acc, loss = super()._value(template, split)
        if "overfit" in template:  # spreads evenly and gets the labelled images wrong
            acc = round(acc - 0.1, 4)
        if "sketch" in template:  # fewer images right than "a drawing of a {}.", a lower cross-entropy
            return acc, 0.5
        return acc, round(2.0 - acc, 4)


def test_metric_balance_ranks_by_the_unlabeled_images_then_accuracy_and_confirms_on_val_accuracy(tmp_path):
    from promptclimb import load_run
    from promptclimb.agent.core.format import pct
    from promptclimb.agent.search import HELD_BACK

    script = ["an overfit drawing of a {}.\na clothing drawing of a {}.", "a dark {}."]
    with FakeLLM(script=script) as fake:
        result, ev, run_dir = climb(tmp_path, fake.base_url, evaluator=SpreadsEvenly(), resets=1, iterations=2,
                                    metric="balance")
    assert all("unlabeled" in asked for asked in ev.splits_asked if "train" in asked)
    first_ask = fake.requests[0]["messages"][-1]["content"]
    # the pool's best by balance; "a sketch of the {}." spreads as evenly and gets fewer train images right
    assert first_ask.splitlines()[1:4] == ["95.0%  a drawing of a {}.", "95.0%  a sketch of the {}.",
                                            "90.0%  a photo of a {}."]  # the balance; ties by accuracy, not CE
    assert "how evenly the classifier spreads unlabeled images" in first_ask.splitlines()[0]
    events = history(run_dir)
    scored = {e["template"]: e for e in events if e["event"] == "score"}
    assert scored["a photo of a {}."]["balance"] == {"unlabeled": 0.9}
    assert scored["a photo of a {}."]["accuracy"]["train"] > scored["a drawing of a {}."]["accuracy"]["train"]
    # spreads better, but loses val accuracy against the best it would replace: held back
    overfit = ev.score(["an overfit drawing of a {}."], splits=("train", "val"))[0]
    held = [e for e in events if e["event"] == "reject" and e["reason"] == HELD_BACK]
    assert [(e["template"], e["detail"]) for e in held] == [
        ("an overfit drawing of a {}.",
         f"val {pct(overfit.accuracy['val'])} vs {pct(scored['a drawing of a {}.']['accuracy']['val'])}")]
    assert result.best["template"] == "a clothing drawing of a {}."
    assert load_run(run_dir).ranked()["template"].iloc[0] == "a clothing drawing of a {}."  # read back alike
    with FakeLLM(script=script) as fake:  # ranked by accuracy: another board, nothing unlabeled scored
        _, ev, run_dir = climb(tmp_path, fake.base_url, name="acc", cache="cache-acc",
                                         evaluator=SpreadsEvenly(), resets=1, iterations=2)
    assert not any("unlabeled" in asked for asked in ev.splits_asked)
    assert fake.requests[0]["messages"][-1]["content"].splitlines()[1].endswith("  a photo of a {}.")
    assert not [e for e in history(run_dir) if e["event"] == "reject" and e["reason"] == HELD_BACK]
    assert not any("balance" in e for e in history(run_dir) if e["event"] == "score")


class LabelledOnly(WordEvaluator):
    """A user's evaluator that leaves the split "unlabeled" out of its scores."""

    def _score_with(self, template, names, splits):
        return super()._score_with(template, names, [s for s in splits if s != "unlabeled"])


@pytest.mark.parametrize("evaluator, why", [(WordEvaluator, "KeyError: 'unlabeled'"),
                                            (LabelledOnly, "it returned no balance for it")])
def test_metric_balance_refuses_an_evaluator_without_unlabeled_images_before_the_first_turn(tmp_path, evaluator, why):
    from promptclimb.agent.core.errors import PromptclimbError

    with FakeLLM(script=["a dark {}."]) as fake:
        with pytest.raises(PromptclimbError) as caught:
            climb(tmp_path, fake.base_url, evaluator=evaluator(), resets=1, iterations=1, metric="balance")
        assert not fake.requests
    assert str(caught.value).startswith("--metric balance ranks by how evenly the predictions spread over images "
                                        "scored without their labels (the split 'unlabeled'), and the evaluator "
                                        f"cannot score that split ({why}); ")
    assert "run_start" not in (tmp_path / "runs" / "run" / "history.jsonl").read_text()


def test_cli_metric_balance_draws_the_unlabeled_images_and_a_resume_draws_them_again(tmp_path):
    from click.testing import CliRunner

    from promptclimb.agent.cli.search import search_cmd
    from promptclimb.agent.core.defaults import UNLABELED_IMAGES

    asked = []

    def factory(**settings):
        asked.append(settings.get("unlabeled"))
        return SpreadsEvenly(settings["dataset"])

    runs = tmp_path / "runs"
    with FakeLLM(script=["a clothing drawing of a {}."]) as fake:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
        base = ["--dataset", "toy", "--iterations", "1", "--resets", "1", "--search", "template", "--runs-dir", str(runs)]
        for name, metric in (("bal", "balance"), ("acc", "accuracy")):
            result = CliRunner().invoke(search_cmd, [*base, "--metric", metric, "--name", name, "--json"], env=env,
                                        obj={"evaluator_factory": factory})
            assert result.exit_code == 0, result.output
        assert asked == [UNLABELED_IMAGES, 0]
        assert json.loads((runs / "bal" / "config.json").read_text())["evaluator_args"]["unlabeled"] == UNLABELED_IMAGES
        assert json.loads((runs / "bal" / "summary.json").read_text())["best"]["balance"] == {"unlabeled": 0.99}
        resumed = CliRunner().invoke(search_cmd, ["--resume", "bal", "--runs-dir", str(runs), "--json"], env=env,
                                     obj={"evaluator_factory": factory})
        assert resumed.exit_code == 0, resumed.output
        assert asked[-1] == UNLABELED_IMAGES
    from promptclimb.agent.cli import cli

    shown = CliRunner().invoke(cli, ["show", "bal", "--runs-dir", str(runs)])
    assert shown.exit_code == 0 and "ranked by balance on unlabeled images, then accuracy on train" in shown.output


def test_hostile_proposals_are_rejected_with_reasons_and_never_evaluated(tmp_path):
    hostile = "\n".join(["{0} photo", "a {name}", "{.__class__.__mro__}", "{} {}", "a {{}}", "a } {}",
                         "x" * 400 + "{}", "A PHOTO OF A {}", "a photo of a {}.", "a fine {}"])
    with FakeLLM(script=[hostile]) as fake:
        result, evaluator, run_dir = climb(tmp_path, fake.base_url, resets=1, iterations=1)
    rejects = [e for e in history(run_dir) if e["event"] == "reject"]
    assert len(rejects) == 9 and all(e["reason"] for e in rejects)
    assert sum("duplicate" in e["reason"] for e in rejects) == 2
    llm_scored = [t for t in evaluator.scored if t not in {p.template for p in POOL}]
    assert llm_scored == ["a fine {}"]  # WordEvaluator also asserts every template it gets is valid


def test_a_rerun_hits_the_cache_with_zero_requests(tmp_path):
    with FakeLLM(responder=responder) as fake:
        first, _, _ = climb(tmp_path, fake.base_url, name="first")
        made = fake.count
        second, _, run2 = climb(tmp_path, fake.base_url, name="second")
    assert made == 6 and fake.count == made
    assert comparable(second.summary) == comparable(first.summary)
    assert second.summary["ledger"]["cache_hits"] == 6 and second.summary["ledger"]["calls"] == 0


def test_budget_cap_ends_the_search_cleanly_with_results(tmp_path):
    with FakeLLM(responder=responder) as fake:
        result, evaluator, run_dir = climb(tmp_path, fake.base_url, max_calls=2)
    assert fake.count == 2 and result.stopped.startswith("budget: max calls")
    events = [e["event"] for e in history(run_dir)]
    assert events.count("llm_exchange") == 2 and "stop" in events and events[-1] == "final"
    assert "test" in result.best["accuracy"]


def test_select_train_plus_val_and_restarts(tmp_path):
    with FakeLLM(responder=responder) as fake:
        result, _, run_dir = climb(tmp_path, fake.base_url, select="train+val", restarts=2, resets=1,
                                   iterations=1, pool_sample=3)
    restarts = [e for e in history(run_dir) if e["event"] == "restart"]
    assert len(restarts) == 2 and restarts[0]["pool"] != restarts[1]["pool"] and len(restarts[0]["pool"]) == 3
    scored = [e for e in history(run_dir) if e["event"] == "score"]
    best = max(scored, key=lambda e: (e["accuracy"]["train"] + e["accuracy"]["val"], -e["loss"]["train"]))
    assert result.best["template"] == best["template"]
    assert "on the training and validation images" in fake.requests[0]["messages"][1]["content"]


def test_user_meta_prompt_overrides_ours(tmp_path):
    from promptclimb.agent.metaprompt import MetaPrompt

    mine = tmp_path / "meta"
    mine.mkdir()
    (mine / "system.j2").write_text("Give me {{ n }} templates for {{ task.dataset }}.")
    with FakeLLM(responder=responder) as fake:
        evaluator = WordEvaluator()
        llm = LLMClient("fake", base_url=fake.base_url, api_key=KEY, cache_dir=tmp_path / "c")
        with RunStore.create(tmp_path / "r", {}) as store:
            HillClimber(evaluator, llm, store, SearchConfig(**{**SMALL, "resets": 1, "iterations": 1, "spare": 0}),
                        meta=MetaPrompt(mine), pool=POOL, echo=lambda m: None).run()
    messages = fake.requests[0]["messages"]
    assert messages[0]["content"] == "Give me 5 templates for toy."
    assert "best templates so far" in messages[1]["content"]  # ours, where the user has none


def test_llm_failure_leaves_a_resumable_run(tmp_path):
    with FakeLLM(responder=responder) as fake:
        whole, _, _ = climb(tmp_path, fake.base_url, name="whole", cache="cache-whole")
    with FakeLLM(responder=responder) as fake:
        fake.faults.extend(["ok"] * 3 + ["500"] * 10)  # "ok" is no fault: three answers, then down
        with pytest.raises(LLMError, match="after 2 tries"):
            climb(tmp_path, fake.base_url, name="broken", max_tries=2)
        assert not (tmp_path / "runs" / "broken" / "summary.json").exists()
        fake.faults.clear()
        before = fake.count
        resumed, _, _ = climb(tmp_path, fake.base_url, name="broken")
        assert fake.count - before == 3  # only the calls not answered before
    assert comparable(resumed.summary) == comparable(whole.summary)


CHILD = r"""
import sys
sys.path.insert(0, sys.argv[3])
from test_search import climb
from pathlib import Path
climb(Path(sys.argv[2]), sys.argv[1])
"""


def test_resume_after_a_kill_gives_the_same_result(tmp_path):
    with FakeLLM(responder=responder) as fake:
        whole, _, whole_dir = climb(tmp_path / "a", fake.base_url)
        calls = fake.count
    kill_at = 4
    with FakeLLM(responder=responder, signal_at=kill_at) as fake:
        env = {**os.environ, "PROMPTCLIMB_HOME": str(tmp_path / "home-b")}
        signal_child_at_request(fake, [sys.executable, "-c", CHILD, fake.base_url, str(tmp_path / "b"), str(TESTS)],
                                env, signal.SIGKILL)
        run_dir = tmp_path / "b" / "runs" / "run"
        assert not (run_dir / "summary.json").exists()
        assert sum(e["event"] == "llm_exchange" for e in history(run_dir)) == kill_at - 1
        resumed, _, _ = climb(tmp_path / "b", fake.base_url)
        assert fake.count - kill_at == calls - (kill_at - 1)  # nothing answered before is asked again
    assert comparable(resumed.summary) == comparable(whole.summary)
    assert comparable_events(run_dir) == comparable_events(whole_dir)


def test_the_model_that_answered_is_recorded_when_the_endpoint_names_another(tmp_path):
    """OpenAI answers a request for "gpt-4o" as a dated snapshot, a router as the model it
    chose: which model wrote the answers was not kept anywhere a reader of the run could see."""
    from promptclimb.agent.cli.runs import answered_said
    from promptclimb.agent.runs.run import load_run

    with FakeLLM(responder=responder, answered_as="fake-2026-01-01") as fake:
        _, _, run_dir = climb(tmp_path, fake.base_url)
        asked = fake.count
        fake.answered_as = None  # another run asking the same gets the cache's answers, with their model
        _, _, again = climb(tmp_path, fake.base_url, name="again")
        assert fake.count == asked
    answers = [e for e in history(run_dir) if e["event"] == "llm_exchange"]
    assert answers and all(e["answered_by"] == "fake-2026-01-01" and e["model"] == "fake" for e in answers)
    run = load_run(run_dir)
    assert run.answered_by == ["fake-2026-01-01"] and answered_said(run) == " (answered as fake-2026-01-01)"
    from click.testing import CliRunner
    from promptclimb.agent.cli import cli

    shown = CliRunner().invoke(cli, ["show", str(run_dir)])
    assert shown.exit_code == 0 and "(answered as fake-2026-01-01), pool curated" in shown.output, shown.output
    assert {ex["answered_by"] for ex in run.conversation()} == {"fake-2026-01-01"}
    assert all(e["answered_by"] == "fake-2026-01-01" for e in history(again) if e["event"] == "llm_exchange")
    # an endpoint that answers as the model asked for adds nothing
    with FakeLLM(responder=responder) as fake:
        _, _, plain = climb(tmp_path, fake.base_url, name="plain", cache="other")
    assert not any("answered_by" in e for e in history(plain)) and answered_said(load_run(plain)) == ""
    assert {ex["answered_by"] for ex in load_run(plain).conversation()} == {None}  # not the model asked for


def test_agent_modules_do_not_import_torch():
    code = "import sys, promptclimb.agent.search, promptclimb.agent.cli.search, promptclimb.agent.llm.client, promptclimb.agent.runs.store, promptclimb.agent.core.pools; " \
           "promptclimb.agent.core.pools.load_pool('fashion-mnist'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_cli_search_prints_json_and_leaks_no_secret(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from promptclimb.agent.cli.search import search_cmd

    built = []

    def fake_build_evaluator(dataset, shots, seed, backbone, **settings):
        built.append((dataset, shots, seed, backbone))
        return WordEvaluator(dataset)

    evaluator_factory = fake_build_evaluator
    with FakeLLM(responder=responder) as fake:
        fake.faults.append("429")
        url = fake.base_url.replace("http://", "http://someone:pw-SECRET99@") + "?api-key=qs-SECRET77"
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": url}
        args = ["--dataset", "toy", "--shots", "2", "--iterations", "2", "--search", "template", "--resets", "1",
                "--pool-sample", "8", "--runs-dir", str(tmp_path / "runs"), "--name", "cli", "--json"]
        result = CliRunner().invoke(search_cmd, args, env=env, obj={"evaluator_factory": evaluator_factory})
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["run_id"] == "cli" and summary["counts"]["llm_answers"] == 2
        assert built == [("toy", 2, 0, "ViT-B-32")]
        assert "iteration 2/2" in result.stderr and "best" in result.stderr
        run_dir = tmp_path / "runs" / "cli"
        config = json.loads((run_dir / "config.json").read_text())
        assert config["llm"]["model"] == "gpt-4o-mini" and config["llm"]["base_url"] == fake.base_url
        assert config["search"]["iterations"] == 2 and config["evaluator"]["dataset"]["name"] == "toy"
        # a second invocation resumes the finished run: same summary, no request (the answers
        # come back from the run's history: the LLM cache is gone)
        count = fake.count
        cache_files = list((tmp_path / "home" / "llm").rglob("*.json"))
        assert len(cache_files) == 2
        for path in cache_files:
            path.unlink()
        again = CliRunner().invoke(search_cmd, ["--resume", "cli", "--runs-dir", str(tmp_path / "runs"), "--json"],
                                   env=env, obj={"evaluator_factory": evaluator_factory})
        assert again.exit_code == 0, again.output
        assert fake.count == count
        assert comparable(json.loads(again.stdout)) == comparable(summary)
        # no secret anywhere: run folder, LLM cache, console
        texts = [result.output, again.output]
        for root in (run_dir, tmp_path / "home"):
            texts += [p.read_text(errors="replace") for p in root.rglob("*") if p.is_file()]
        for secret in (KEY, "TOPSECRET", "pw-SECRET99", "qs-SECRET77"):
            assert not any(secret in text for text in texts), secret


def test_cli_errors_are_readable(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from promptclimb.agent.cli.search import search_cmd

    result = CliRunner().invoke(search_cmd, ["--runs-dir", str(tmp_path)])
    # a usage error, as click's own missing options are (README: exit code 2)
    assert result.exit_code == 2 and "--dataset is required" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(search_cmd, ["--resume", "nope", "--runs-dir", str(tmp_path)])
    assert result.exit_code != 0 and "no run 'nope'" in result.output
    # a known dataset: an unknown one ("toy", which only tests' evaluators know) is refused first
    result = CliRunner().invoke(search_cmd, ["--dataset", "fashion-mnist", "--adapter", "lora", "--runs-dir",
                                             str(tmp_path)])
    assert result.exit_code != 0 and "unknown adapter kind 'lora'" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # refused before a run folder
    result = CliRunner().invoke(search_cmd, ["--help"])
    assert result.exit_code == 0 and "--max-calls" in result.output and "--select" in result.output


def test_cli_search_with_the_real_clip_evaluator(tmp_path, tiny_clip_config, tiny_clip_weights, image_folder,
                                                 torch_threads):
    """The whole wiring once, with the real evaluator (a tiny open_clip model with generated
    weights, generated images) and the fake LLM."""
    from click.testing import CliRunner

    from promptclimb.agent.cli.search import search_cmd

    with FakeLLM(responder=responder) as fake:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
        args = ["--dataset", "imagefolder", "--data-root", str(image_folder), "--shots", "2",
                "--backbone", tiny_clip_config, "--weights", str(tiny_clip_weights), "--device", "cpu",
                "--iterations", "2", "--search", "template", "--resets", "1", "--pool-sample", "6",
                "--adapter", "cache", "--adapter", "feature-residual",
                "--runs-dir", str(tmp_path / "runs"), "--name", "real", "--json"]
        result = CliRunner().invoke(search_cmd, args, env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert fake.count == 2 and summary["counts"]["llm_answers"] == 2
    assert summary["counts"]["scored"] >= 6
    for split in ("train", "val", "test"):
        assert 0.0 <= summary["best"]["accuracy"][split] <= 1.0
    assert "red square" in fake.requests[0]["messages"][0]["content"].replace("_", " ")
    run_dir = tmp_path / "runs" / "real"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["evaluator"]["backbone"] and config["evaluator_args"]["backbone"] == tiny_clip_config
    assert (run_dir / "curve.png").stat().st_size > 1000

    # --adapter: fit after the search, recorded in the summary, re-applied by `eval --run --with-adapter`
    adapter = summary["adapter"]
    assert [c["kind"] for c in adapter["candidates"]] == ["cache", "feature-residual"]
    assert (run_dir / "adapter.pt").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["adapter"]["kind"] == adapter["kind"]
    # the search's last block comes after the fit: the adapter may be the run's result
    assert result.stderr.index("prompt (best): ") < result.stderr.index("What changed")
    from promptclimb.agent.cli import cli

    result = CliRunner().invoke(cli, ["eval", "--run", "real", "--runs-dir", str(tmp_path / "runs"),
                                      "--with-adapter", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["template"] for r in out["results"]] == [summary["best"]["template"]]  # the run's best, by default
    assert out["results"][0]["accuracy"]["test"] == pytest.approx(summary["best"]["accuracy"]["test"])
    assert out["adapter"]["accuracy"]["test"]["adapter"] == pytest.approx(adapter["accuracy"]["test"])
    table = CliRunner().invoke(cli, ["eval", "--run", "real", "--runs-dir", str(tmp_path / "runs"),
                                     "--with-adapter", "--device", "cpu"])
    assert table.exit_code == 0 and f"prompt + {adapter['kind']} adapter" in table.output
    (run_dir / "adapter.pt").unlink()
    missing = CliRunner().invoke(cli, ["eval", "--run", "real", "--runs-dir", str(tmp_path / "runs"),
                                       "--with-adapter", "--device", "cpu"])
    assert missing.exit_code == 1 and "no adapter at" in missing.output and "Traceback" not in missing.output


def test_cli_defaults_to_the_local_llm_without_an_endpoint(tmp_path, monkeypatch):
    import contextlib

    from click.testing import CliRunner

    from promptclimb.agent.llm import local as local_llm
    from promptclimb.agent.cli.search import search_cmd

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    evaluator_factory = lambda **kw: WordEvaluator(kw["dataset"])
    started = []
    with FakeLLM(responder=responder) as fake:
        @contextlib.contextmanager
        def stand_in_server(model_path=None, **ignored):  # the llama.cpp server, stood in for by the fake
            started.append(model_path)
            yield fake.base_url

        monkeypatch.setattr(local_llm, "local_server", stand_in_server)
        result = CliRunner().invoke(search_cmd, ["--dataset", "toy", "--iterations", "1", "--search", "template", "--resets", "1",
                                                 "--runs-dir", str(tmp_path / "runs"), "--name", "loc"], obj={"evaluator_factory": evaluator_factory})
    assert result.exit_code == 0, result.output
    assert "using the embedded local LLM" in result.output and started == [None]
    # a dataset other than the embedded one gets OpenAI's CLIP weights, never a random model
    config = json.loads((tmp_path / "runs" / "loc" / "config.json").read_text())
    assert (config["evaluator_args"]["backbone"], config["evaluator_args"]["pretrained"]) == ("ViT-B-32", "openai")
    request = fake.requests[0]
    assert request["model"] == local_llm.LOCAL_MODEL_NAME
    assert request["temperature"] == local_llm.LOCAL_SAMPLING["temperature"]
    assert request["max_tokens"] == local_llm.LOCAL_SAMPLING["max_tokens"]


def test_the_console_shows_a_line_repeated_in_one_answer_once(tmp_path):
    # the embedded model repeats lines (`a photo of my {}.` twice in one answer of the demo)
    printed = []
    answer = "a photo of a {}.\nan image of my {}.\na photo of a {}.\nan image of my {}."
    with FakeLLM(responder=lambda body: answer) as fake:
        climb(tmp_path, fake.base_url, resets=1, iterations=1, echo=printed.append)
    turn = printed[next(i for i, line in enumerate(printed) if "iteration 1/1]" in line):]
    assert "1 new, 3 rejected" in turn[0]  # every rejected line counted, as the history has them
    rejected = [line.split(":")[0] for line in turn if line.startswith("    rejected")]
    assert rejected == ["    rejected  'a photo of a {}.'", "    rejected  'an image of my {}.'"]
    assert not any(line.startswith("    ... ") for line in turn)  # two shown, and their repeats


def test_the_console_says_how_many_rejected_lines_it_did_not_print(tmp_path):
    printed = []
    # two placeholders each; number 0 and number 4 twice
    answer = "\n".join(f"a {{}} photo of {{}} number {n}" for n in (0, 1, 2, 3, 4, 4, 0))
    with FakeLLM(responder=lambda body: answer) as fake:
        _, _, run_dir = climb(tmp_path, fake.base_url, resets=1, iterations=1, echo=printed.append)
    turn = printed[next(i for i, line in enumerate(printed) if "iteration 1/1]" in line):]
    assert "0 new, 7 rejected" in turn[0]
    assert sum(line.startswith("    rejected") for line in turn) == 3  # 0, 1, 2: four of the seven
    # the count adds up to the first line's: 3 and 4 (twice) are not printed, 0's repeat is
    assert f"    ... 3 more rejected: promptclimb show {run_dir} lists them all" in turn


def test_a_conversation_that_would_outgrow_the_llms_context_starts_a_new_one(tmp_path):
    def conversation_lengths(run_dir):
        return [e["n_messages"] for e in history(run_dir) if e["event"] == "llm_exchange"]

    with FakeLLM(responder=responder) as fake:
        climb(tmp_path, fake.base_url, name="free", resets=1, iterations=4)
    free = tmp_path / "runs" / "free"
    assert conversation_lengths(free) == [2, 4, 6, 8]  # one conversation, as long as the context is unknown
    # the context that the second answer's conversation and its next message would pass
    exchanges = [e for e in history(free) if e["event"] == "llm_exchange"]
    used = sum(exchanges[1]["usage"].values())
    context = used + len(exchanges[2]["messages"][-1]["content"]) // 3 + SearchConfig().max_answer_tokens - 1
    assert sum(exchanges[0]["usage"].values()) + len(exchanges[1]["messages"][-1]["content"]) // 3 \
        + SearchConfig().max_answer_tokens <= context  # the first still fits
    printed = []
    with FakeLLM(responder=responder) as fake:
        result, _, run_dir = climb(tmp_path, fake.base_url, name="bounded", resets=1, iterations=4,
                                   context_tokens=context, echo=printed.append)
    assert conversation_lengths(run_dir) == [2, 4, 2, 4]  # a new conversation after the second answer
    assert any(f"has used {used:,} of the LLM's {context:,} tokens" in line for line in printed)
    first_of_new = [e for e in history(run_dir) if e["event"] == "llm_exchange"][2]["messages"]
    assert [m["role"] for m in first_of_new] == ["system", "user"]


def test_a_percentage_is_never_shown_as_minus_zero():
    """--metric balance of a prompt that puts every image in one class is -0.0 (an entropy)."""
    from promptclimb.agent.core.format import pct

    assert [pct(-0.0), pct(-1e-9), pct(-0.00001, 2), pct(0.61234), pct(-0.2)] == ["0.0%", "0.0%", "0.00%", "61.2%",
                                                                                   "-20.0%"]


# -- an endpoint that refuses a conversation as longer than the model's context -----------------
# The fake counts 10 tokens a message, and a request asks for 400 answer tokens: a conversation's
# first request is 420 tokens, its second 440, its third 460.
REFUSES_THE_THIRD = 450


def test_a_conversation_the_endpoint_refuses_as_too_long_starts_a_new_one_and_its_context_holds_after(tmp_path):
    printed = []
    with FakeLLM(responder=responder, context=REFUSES_THE_THIRD) as fake:
        # the context assumed is the embedded LLM's, as for `--base-url` to `llm serve --n-ctx 4096`
        result, _, run_dir = climb(tmp_path, fake.base_url, resets=1, iterations=5, context_tokens=8192,
                                   echo=printed.append)
        sent = [[m["role"] for m in r["messages"]] for r in fake.requests]
    assert result.stopped == "completed" and fake.refused == 1
    assert sent[2] == ["system", "user", "assistant", "user", "assistant", "user"]  # refused
    assert sent[3] == ["system", "user"]  # the same turn, in a new conversation
    exchanges = [e for e in history(run_dir) if e["event"] == "llm_exchange"]
    # after the refusal the context stated holds: each conversation would outgrow it at its
    # second turn (an estimate), so each turn starts a new one; 8,192 would have let the
    # fourth turn continue the third's conversation and be refused again at the fifth
    assert [e["n_messages"] for e in exchanges] == [2, 4, 2, 2, 2]
    refused = exchanges[2]["context_refused"]
    assert refused["context_tokens"] == REFUSES_THE_THIRD and refused["n_messages"] == 6
    assert [m["role"] for m in exchanges[2]["messages"]] == ["system", "user"]
    assert "context_refused" not in exchanges[3]
    assert sum("refused the conversation's next request as longer than its context of 450 tokens" in line
               for line in printed) == 1
    assert any(f"of the LLM's {REFUSES_THE_THIRD:,} tokens: the next turn starts a new one" in line
               for line in printed)


def test_a_run_resumed_after_a_refusal_for_the_context_makes_the_same_requests(tmp_path):
    settings = dict(resets=1, iterations=5, context_tokens=8192)
    with FakeLLM(responder=responder, context=REFUSES_THE_THIRD) as fake:
        whole, _, whole_dir = climb(tmp_path / "whole", fake.base_url, **settings)
    with FakeLLM(responder=responder, context=REFUSES_THE_THIRD) as fake:
        fake.faults.extend(["ok"] * 4 + ["500"] * 10)  # the refusal and the turn that starts over, then down
        with pytest.raises(LLMError, match="after 2 tries"):
            climb(tmp_path / "broken", fake.base_url, max_tries=2, **settings)
        assert fake.refused == 1
    run_dir = tmp_path / "broken" / "runs" / "run"  # the same run id as the whole one's
    assert [e.get("context_refused", {}).get("context_tokens") for e in history(run_dir)
            if e["event"] == "llm_exchange"] == [None, None, REFUSES_THE_THIRD]
    # resumed against a longer context (the server restarted with a larger --n-ctx): the history
    # says the third turn's request was refused, and so it is again, without asking
    with FakeLLM(responder=responder) as fake:
        resumed, _, _ = climb(tmp_path / "broken", fake.base_url, **settings)
        assert [len(r["messages"]) for r in fake.requests] == [2, 2]  # the two turns not answered before
    assert comparable(resumed.summary) == comparable(whole.summary)
    assert comparable_events(run_dir) == comparable_events(whole_dir)


@pytest.mark.parametrize("search", ["template", "names"])
def test_a_context_too_small_for_a_conversations_first_message_is_one_readable_error(tmp_path, search):
    with FakeLLM(responder=responder, context=410) as fake:  # a first request is 420
        with pytest.raises(LLMError) as info:
            climb(tmp_path, fake.base_url, context_tokens=8192, search=search)
        assert fake.refused == 1
    message = str(info.value)
    assert "context (410 tokens, as its endpoint says) is too small for promptclimb's prompts" in message
    assert "--n-ctx 8192" in message and "\n" not in message
    # a resume keeps the run's settings: shorter prompts are a new run's (the hint had sent users to a refused resume)
    assert "start a new run with shorter prompts" in message


def test_cli_a_context_too_small_for_promptclimb_is_one_error_line(tmp_path):
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli
    from fake_llm import one_line_error

    with FakeLLM(responder=responder, context=410) as fake:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
        result = CliRunner().invoke(cli, ["search", "--dataset", "toy", "--search", "template", "--runs-dir",
                                          str(tmp_path / "runs"), "--name", "small"],
                                    env=env, obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])})
    one_line_error(result, "is too small for promptclimb's prompts", "--n-ctx 8192")
    assert "TOPSECRET" not in result.output


def test_a_large_pool_is_said_before_it_is_scored(tmp_path, monkeypatch):
    """A 10,000-line --pool FILE with --pool-sample 0: minutes of text encoding with nothing
    printed after the run folder's line."""
    from promptclimb.agent import search as climbing

    monkeypatch.setattr(climbing, "MANY_POOL_TEMPLATES", 3)
    console = []
    pool = [PoolTemplate(f"a photo number {i} of a {{}}.", "general") for i in range(5)]
    with FakeLLM(script=["a dark photo of a {}."]) as fake:
        llm = LLMClient("fake", base_url=fake.base_url, api_key="sk-test", cache_dir=tmp_path / "cache")
        with RunStore.create(tmp_path / "runs" / "r", {"t": 1}) as store:
            HillClimber(WordEvaluator(), llm, store, SearchConfig(restarts=1, resets=1, iterations=1, pool_sample=0,
                                                                  search="template"), pool=pool,
                        echo=console.append).run()
    assert console[0] == "restart 1/1: scoring 5 pool templates (15 texts to encode the first time) ..."
    assert console[1].startswith("restart 1/1: 5 pool templates, best ")
