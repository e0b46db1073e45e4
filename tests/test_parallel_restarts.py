"""`--parallel K`: restarts run in K threads whose LLM calls overlap, with the result of
running them one after another (agent.search.Turns). Fake LLM + in-memory evaluator."""

import hashlib
import json
import re
from dataclasses import asdict

import pytest

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.llm.answers import LLMError
from promptclimb.agent.llm.client import LLMClient
from promptclimb.agent.core.pools import PoolTemplate, sample_pool
from promptclimb.agent.runs.reading import read_history
from promptclimb.agent.runs.run import load_run
from promptclimb.agent.runs.store import RunStore
from promptclimb.agent.search import HillClimber, SearchConfig
from fake_llm import FakeLLM, WordEvaluator

# Pool samples of 5 out of 7 overlap between restarts, and answers drawn from few words
# repeat across restarts: templates shared by restarts are the case that needs care.
POOL = [PoolTemplate(t, "general") for t in ["a {}.", "itap of a {}.", "a drawing of a {}.", "a photo of a {}.",
                                             "a sketch of the {}.", "the {}.", "a photo of the {}."]]
WORDS = ["photo", "clothing", "grayscale", "product", "dark", "tiny"]
SETTINGS = dict(restarts=3, resets=2, iterations=3, proposals=3, spare=1, pool_sample=5, ensemble_k=3)


def responder(body: dict) -> str:
    """Proposals that are a pure function of the request (whatever order requests come in)."""
    h = int(hashlib.sha256(json.dumps([body["messages"], body["seed"]]).encode()).hexdigest(), 16)
    return "\n".join(f"a {WORDS[(h >> 3 * i) % 6]} {WORDS[(h >> 3 * i + 20) % 6]} image of a {{}}." for i in range(4))


def climb(run_dir, base_url, cache_dir, context_tokens=None, **settings):
    llm = LLMClient("fake", base_url=base_url, api_key="sk-test", timeout=5, cache_dir=cache_dir,
                    wait_initial=0.001, wait_max=0.01, max_tries=2, context_tokens=context_tokens)
    store = RunStore.resume(run_dir) if (run_dir / "config.json").exists() else RunStore.create(run_dir, {"t": 1})
    with store:
        return HillClimber(WordEvaluator(), llm, store, SearchConfig(**{**SETTINGS, **settings}), pool=POOL,
                           echo=lambda msg: None).run()


def scored_templates(run_dir) -> list[str]:
    return [e["template"] for e in read_history(run_dir / "history.jsonl") if e["event"] == "score"]


def outcome(result) -> dict:
    """What must not depend on --parallel: best, ensemble, top, counts."""
    return {"best": result.best, "ensemble": result.ensemble, "top": result.top,
            "counts": result.summary["counts"], "stopped": result.stopped}


def test_parallel_restarts_give_the_sequential_result_with_overlapping_llm_calls(tmp_path):
    with FakeLLM(responder=responder, latency_s=0.01) as fake:
        sequential = climb(tmp_path / "sequential", fake.base_url, tmp_path / "cache-1")
        assert fake.max_in_flight == 1
    # this one answers only when three requests wait (or after 15 s): calls made one at a
    # time would be slow and leave max_in_flight at 1
    with FakeLLM(responder=responder, answer_together=3, hang_s=15) as fake:
        parallel = climb(tmp_path / "parallel", fake.base_url, tmp_path / "cache-2", parallel=3)
        assert fake.max_in_flight == 3 and fake.count == 18
    assert outcome(parallel) == outcome(sequential)
    assert sorted(scored_templates(tmp_path / "parallel")) == sorted(scored_templates(tmp_path / "sequential"))
    # the setting exercised the hard case: templates on the boards of several restarts
    events = read_history(tmp_path / "sequential" / "history.jsonl")
    pools = [set(e["pool"]) for e in events if e["event"] == "restart"]
    assert pools[0] & pools[1] and pools[1] & pools[2]
    llm_templates = [{t for t in e["answer"].splitlines()} for e in events if e["event"] == "llm_exchange"]
    by_restart = {}
    for e, proposed in zip([e for e in events if e["event"] == "llm_exchange"], llm_templates):
        by_restart.setdefault(e["restart"], set()).update(proposed)
    assert by_restart[0] & by_restart[1]
    # one valid history, each template recorded once, the restarts' steps interleaved
    parallel_events = read_history(tmp_path / "parallel" / "history.jsonl")
    assert [e["seq"] for e in parallel_events] == list(range(len(parallel_events)))
    assert len(set(scored_templates(tmp_path / "parallel"))) == len(scored_templates(tmp_path / "parallel"))
    restarts_in_order = [e["restart"] for e in parallel_events if e["event"] == "llm_exchange"]
    assert restarts_in_order[:3] == [0, 1, 2] and restarts_in_order != sorted(restarts_in_order)


def test_a_template_shared_by_two_restarts_ranks_by_its_first_appearance(tmp_path):
    """The best template is in restart 1's pool sample and proposed by the LLM in restart 0.
    In parallel, restart 1 scores it first (its pool turn comes before restart 0's first LLM
    turn), so the history records it there; the run's table still knows it first appeared
    in restart 0, as an LLM proposal, as a sequential run says."""
    weak = [PoolTemplate(t, "general") for t in ["a {}.", "the {}.", "itap of a {}.", "a sketch of the {}.",
                                                 "a drawing of a {}.", "art of the {}.", "a toy {}."]]
    index = min(set(range(7)) - {weak.index(t) for t in sample_pool(weak, 5, 0, 0)}
                & {weak.index(t) for t in sample_pool(weak, 5, 0, 1)})
    best = "a grayscale photo of clothing: a {}."
    pool = weak[:index] + [PoolTemplate(best, "general")] + weak[index + 1:]

    def propose(body):
        return f"{best}\na {WORDS[len(body['messages']) % 6]} {{}}."

    results = {}
    with FakeLLM(responder=propose, latency_s=0.02) as fake:
        for parallel in (1, 2):
            llm = LLMClient("fake", base_url=fake.base_url, api_key="sk-test", timeout=5,
                            cache_dir=tmp_path / f"cache-{parallel}")
            with RunStore.create(tmp_path / f"run-{parallel}", {"t": 1}) as store:
                config = SearchConfig(restarts=2, resets=1, iterations=2, proposals=2, pool_sample=5, parallel=parallel)
                results[parallel] = HillClimber(WordEvaluator(), llm, store, config, pool=pool, echo=lambda m: None).run()
    assert results[1].best["template"] == best and results[1].best["origin"] == "llm"
    assert outcome(results[2]) == outcome(results[1])
    recorded = {n: [e for e in read_history(tmp_path / f"run-{n}" / "history.jsonl")
                    if e["event"] == "score" and e["template"] == best] for n in (1, 2)}
    assert [(e["restart"], e["origin"]) for e in recorded[1]] == [(0, "llm")]
    assert [(e["restart"], e["origin"]) for e in recorded[2]] == [(1, "pool")]


def test_a_parallel_run_writes_the_same_history_every_time_and_resumes_from_any_point(tmp_path):
    drop = ("time", "latency_s", "cached", "source")

    def events(run_dir):
        return [{k: v for k, v in e.items() if k not in drop} for e in read_history(run_dir / "history.jsonl")]

    a, b, killed = (tmp_path / name / "run" for name in ("a", "b", "killed"))  # same run id
    with FakeLLM(responder=responder, latency_s=0.05) as fake:
        first = climb(a, fake.base_url, tmp_path / "cache-a", parallel=3)
        second = climb(b, fake.base_url, tmp_path / "cache-b", parallel=3)
        assert events(a) == events(b)
        # a kill leaves a prefix of that history (here: cut in the middle of the second round)
        killed.mkdir(parents=True)
        (killed / "config.json").write_text((a / "config.json").read_text())
        lines = (a / "history.jsonl").read_text().splitlines(keepends=True)
        cut = next(i for i, line in enumerate(lines) if json.loads(line).get("call") == 4)
        (killed / "history.jsonl").write_text("".join(lines[:cut]))
        requests_before = fake.count
        resumed = climb(killed, fake.base_url, tmp_path / "cache-c", parallel=3)
        assert fake.count > requests_before  # it did continue with new LLM calls
    assert outcome(resumed) == outcome(first) == outcome(second)
    assert events(killed) == events(a)


def test_a_context_learned_from_a_refusal_changes_every_lane_at_the_same_step_every_time(tmp_path):
    """The fake refuses a conversation's third request (10 tokens a message, 400 answer
    tokens: 460 > 450). A lane learns the context in its own turn, so the other lanes, whose
    turns come first, continue their conversations as they would with the context unknown and
    are refused too, every time, however the answers' timing falls; a resumed run agrees."""
    drop = ("time", "latency_s", "cached", "source")

    def events(run_dir):
        return [{k: v for k, v in e.items() if k not in drop} for e in read_history(run_dir / "history.jsonl")]

    a, b, killed = (tmp_path / name / "run" for name in ("a", "b", "killed"))
    with FakeLLM(responder=responder, latency_s=0.05, context=450) as fake:
        climb(a, fake.base_url, tmp_path / "cache-a", context_tokens=8192, parallel=3, search="template")
        assert fake.refused == 3
    with FakeLLM(responder=responder, answer_together=3, hang_s=15, context=450) as fake:
        climb(b, fake.base_url, tmp_path / "cache-b", context_tokens=8192, parallel=3, search="template")
    assert events(a) == events(b)
    refusals = [(e["restart"], e["reset"], e["iteration"]) for e in events(a) if e.get("context_refused")]
    assert sorted(refusals) == [(0, 0, 3), (1, 0, 3), (2, 0, 3)]
    killed.mkdir(parents=True)
    (killed / "config.json").write_text((a / "config.json").read_text())
    lines = (a / "history.jsonl").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if "context_refused" in line) + 1
    (killed / "history.jsonl").write_text("".join(lines[:cut]))
    with FakeLLM(responder=responder, latency_s=0.05, context=450) as fake:
        climb(killed, fake.base_url, tmp_path / "cache-c", context_tokens=8192, parallel=3, search="template")
    assert events(killed) == events(a)


def test_a_failing_lane_stops_the_others_and_the_run_stays_resumable(tmp_path):
    with FakeLLM(responder=responder, latency_s=0.05) as fake:
        fake.faults.extend(["500"] * 6)  # the first requests fail both their tries
        with pytest.raises(LLMError):
            climb(tmp_path / "run", fake.base_url, tmp_path / "cache", parallel=3)
        events = read_history(tmp_path / "run" / "history.jsonl")
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert not any(e["event"] == "final" for e in events)
        resumed = climb(tmp_path / "run", fake.base_url, tmp_path / "cache", parallel=3)
        straight = climb(tmp_path / "straight", fake.base_url, tmp_path / "cache-2")
    assert outcome(resumed) == outcome(straight)


def test_parallel_restarts_refuse_a_shared_budget_cap():
    with pytest.raises(PromptclimbError, match="budget cap"):
        SearchConfig(restarts=3, parallel=3, max_calls=10).check()
    with pytest.raises(PromptclimbError, match="parallel must be at least 1"):
        SearchConfig(parallel=0).check()


def test_the_command_runs_parallel_restarts_and_a_resume_keeps_their_number(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from promptclimb.agent.cli.search import search_cmd

    evaluator_factory = lambda **kwargs: WordEvaluator(kwargs["dataset"])
    with FakeLLM(responder=responder, answer_together=2, hang_s=15) as fake:
        base = ["--runs-dir", str(tmp_path), "--base-url", fake.base_url]
        first = CliRunner().invoke(search_cmd, [
            "--dataset", "toy", "--llm", "fake", "--restarts", "2", "--parallel", "2", "--resets", "1",
            "--iterations", "2", "--pool-sample", "4", "--name", "r", *base], obj={"evaluator_factory": evaluator_factory})
        assert first.exit_code == 0, first.output
        assert fake.max_in_flight == 2
        other = CliRunner().invoke(search_cmd, ["--resume", "r", "--parallel", "3", *base], obj={"evaluator_factory": evaluator_factory})
        assert other.exit_code == 1 and "--parallel 3 (the run's: 2)" in other.output
        again = CliRunner().invoke(search_cmd, ["--resume", "r", *base], obj={"evaluator_factory": evaluator_factory})
        assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["search"]["parallel"] == 2


# -- the local LLM: one request at a time -----------------------------------------------------
LOCAL_ID = "promptclimb-local/qwen2.5-coder-1.5b-instruct-q4_k_m@sha256:" + "ab" * 32


@pytest.mark.parametrize("llm", ["embedded", "llm serve", "remote"])
def test_restarts_run_one_after_another_on_the_local_llm(llm, tmp_path, monkeypatch):
    """The local LLM's server (started by the search, or `promptclimb llm serve`) answers one
    request at a time and keeps only the last request's prefix: restarts taking turns at it
    would reprocess their conversations (README: 2.5x slower), so --parallel becomes 1 there,
    said once, recorded, and accepted again by --resume. Other endpoints keep --parallel."""
    from contextlib import contextmanager

    from click.testing import CliRunner

    from promptclimb.agent.llm import local as local_llm
    from promptclimb.agent.cli import cli

    fake = FakeLLM(responder=responder, models=[LOCAL_ID] if llm == "llm serve" else None, latency_s=0.05)

    @contextmanager
    def embedded_server(model_path=None, **kwargs):
        yield fake.base_url

    monkeypatch.setattr(local_llm, "local_server", embedded_server)
    evaluator_factory = lambda **kwargs: WordEvaluator()
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    runs = tmp_path / "runs"
    with fake:
        endpoint = {"embedded": ["--llm", "local"], "llm serve": ["--base-url", fake.base_url],
                    "remote": ["--base-url", fake.base_url, "--llm", "fake"]}[llm]
        args = ["search", "--dataset", "toy", *endpoint, "--restarts", "3", "--parallel", "3", "--resets", "1",
                "--iterations", "2", "--runs-dir", str(runs), "--name", "r", "--no-cache"]
        result = CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": "sk-test"} if llm == "remote" else {}, obj={"evaluator_factory": evaluator_factory})
        assert result.exit_code == 0, result.output
        local = llm != "remote"
        assert ("the local LLM answers one request at a time" in result.output) == local
        assert json.loads((runs / "r" / "config.json").read_text())["search"]["parallel"] == (1 if local else 3)
        if local:
            assert fake.max_in_flight == 1
        again = CliRunner().invoke(cli, ["search", "--resume", "r", "--parallel", "3", "--runs-dir", str(runs),
                                         "--no-cache"], env={"OPENAI_API_KEY": "sk-test"} if llm == "remote" else {}, obj={"evaluator_factory": evaluator_factory})
        assert again.exit_code == 0, again.output


# -- a template two restarts propose: the board each restart was shown -------------------------
SHARED = "a grayscale photo of clothing: a {}."  # the best template of the run, proposed in every answer
PLAIN = ["tiny", "dark", "blurry", "bright", "small", "big"]  # words the WordEvaluator does not reward


def propose_shared(body: dict) -> str:
    """SHARED (restart 0's first turn scores it first, in turn order) and one template of the answer's own."""
    return f"{SHARED}\na {PLAIN[len(body['messages']) % 6]} {PLAIN[body['seed'] % 6]} {{}}."


def climb_shared(run_dir, base_url, cache_dir, parallel):
    config = SearchConfig(restarts=2, resets=1, iterations=3, proposals=2, pool_sample=5, parallel=parallel,
                          search="template")
    llm = LLMClient("fake", base_url=base_url, api_key="sk-test", timeout=5, cache_dir=cache_dir)
    store = RunStore.resume(run_dir) if (run_dir / "config.json").exists() else RunStore.create(
        run_dir, {"search": asdict(config)})
    with store:
        return HillClimber(WordEvaluator(), llm, store, config, pool=POOL, echo=lambda m: None).run()


def listed(prompt: str) -> list[tuple[float, str]]:
    """The top and bottom templates a template turn's prompt lists, as (percent, template): a first
    turn's lines, or a feedback turn's after "Current top templates:" (its results come before)."""
    return [(float(a), t) for a, t in re.findall(r"^([\d.]+)%  (.*)$", prompt.split("Current top templates:")[-1],
                                                  flags=re.M)]


@pytest.mark.parametrize("parallel", [1, 2])
def test_show_rebuilds_the_board_a_restart_was_shown_when_another_restart_scored_its_proposal_first(
        tmp_path, parallel):
    """Restart 1's LLM proposes a template restart 0 scored first: the run scores it once (one
    score event, restart 0's), restart 1 takes the score from the run's table and shows it on
    its board in its next turns. `show`, `Run.iterations` and `Run.scoreboard` rebuild every
    turn's board as its prompt listed it (from the shared event), and count the template among
    what restart 1's turn scored, as the console did."""
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    with FakeLLM(responder=propose_shared, latency_s=0.01) as fake:
        climb_shared(tmp_path / "run", fake.base_url, tmp_path / "cache", parallel)
    run = load_run(tmp_path / "run")
    assert [(e["restart"], e["iteration"]) for e in run.of("score") if e["template"] == SHARED] == [(0, 1)]
    assert [(e["restart"], e["iteration"], e["template"]) for e in run.of("shared")] == [(1, 1, SHARED)]

    text = CliRunner().invoke(cli, ["show", "run", "--runs-dir", str(tmp_path)]).output
    blocks = dict(re.findall(r"^answer (\d+) (\(.*?)(?=^answer \d+ |\Z)", text, flags=re.M | re.S))
    exchanges = run.of("llm_exchange")
    assert len(exchanges) == len(blocks) == 6
    for it, ex in zip(run.iterations(), exchanges):
        prompt = listed(ex["messages"][-1]["content"])
        rebuilt = [(round(100 * s["selection"], 1), s["template"]) for s in it["shown_top"] + it["shown_bottom"]]
        assert rebuilt == prompt, (ex["restart"], ex["iteration"])
        assert run.scoreboard(ex["restart"], ex["_line"]) == (it["shown_top"], it["shown_bottom"])
        shown = re.findall(r"^\s+(?:top|bottom)\s+([\d.]+)%  (.*)$", blocks[str(ex["call"] + 1)], flags=re.M)
        assert [(float(a), t) for a, t in shown] == prompt
    later = [it for it in run.iterations() if it["restart"] == 1]
    assert SHARED in [s["template"] for s in later[0]["scored"]]  # "2 new", the console said
    assert later[1]["shown_top"][0]["template"] == SHARED


def test_a_run_recorded_before_shared_events_reads_as_before_and_resumes(tmp_path):
    """A history written before the shared event existed (none in it) resumes without a
    mismatch where the search now writes one, to the same end; read, it shows what it holds."""
    with FakeLLM(responder=propose_shared, latency_s=0.01) as fake:
        whole = climb_shared(tmp_path / "new", fake.base_url, tmp_path / "cache", 2)
        old = tmp_path / "old"
        old.mkdir()
        (old / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
        lines = [json.loads(line) for line in (tmp_path / "new" / "history.jsonl").read_text().splitlines()]
        lines = [{**e, "seq": seq} for seq, e in enumerate(e for e in lines if e["event"] != "shared")]
        cut = next(i for i, e in enumerate(lines) if e.get("call") == 4)  # past restart 1's first turn
        (old / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines[:cut]))
        resumed = climb_shared(old, fake.base_url, tmp_path / "cache-2", 2)
    assert outcome(resumed) == outcome(whole)
    drop = ("seq", "time", "latency_s", "cached", "source")
    assert [{k: v for k, v in e.items() if k not in drop} for e in read_history(old / "history.jsonl")] == \
        [{k: v for k, v in e.items() if k not in drop} for e in read_history(tmp_path / "new" / "history.jsonl")
         if e["event"] != "shared"]
    run = load_run(old)
    assert run.of("shared") == [] and run.skipped == []
    later = [it for it in run.iterations() if it["restart"] == 1]
    assert SHARED not in [s["template"] for s in later[1]["shown_top"]]  # as this history always read
