"""Other questions the drift guard could ask: good renames refused, drifts caught.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_judge_questions.py [--questions photo none ...]

The guard's judge (prompts/meta/names_judge.j2) asks in which class a new name would be filed.
It cannot see a drift that leaves every class, or one nearest its own class (`Trouser ->
thigh`, `pantsuit`, `Dress -> Skirt`, `T-shirt/top -> tank top` were kept in bench runs). This
asks the embedded local LLM (temperature 0) other questions of bench_judge.py's 29 good
renames and 16 drifts of Fashion-MNIST's classes, and of the 15 drifts that passed every
guard in bench runs (`SEEN`), once with the cleaned start names and once with the published
labels, and counts how often the answer would refuse the change: a yes/no question refuses
on "no"; a which-class question (`none`, `none-listed`, which offer "none" as an answer)
refuses on any answer other than the class's own name. Printed per question and start set:
the counts and the changes refused. Which rename is good and which a drift is bench_judge.py's
judgement. Asserts nothing; nothing here is used by the search.
"""

from __future__ import annotations

import argparse

from bench_judge import CLEAN, DRIFTS, GOOD, PUBLISHED, SEEN_IN_RUNS

from promptclimb.agent.core.paths import cache_dir
from promptclimb.agent.llm.client import LLMClient
from promptclimb.agent.llm.local import local_server
from promptclimb.agent.search import JUDGE_ANSWER_TOKENS, call_seed

# The drifts bench runs kept (docs/results.md), beside bench_judge.py's SEEN_IN_RUNS.
SEEN = SEEN_IN_RUNS + [("thigh", 1), ("pantsuit", 1), ("tank top", 0), ("bag holder", 8), ("leggy pants", 1),
                       ("trousers ensemble", 1), ("Clutterbag", 8), ("Hat", 3), ("outfit", 3)]
# {p}: the proposed name; {c}: the class's start name; {classes}: every start name.
QUESTIONS = {
    "kind": 'Is a "{p}" a kind of {c}, or another word for a {c}? Answer yes or no.',
    "call": 'Would you call a "{p}" a {c}? Answer yes or no.',
    "photo": 'A photo shows a "{p}". Is it a photo of a {c}? Answer yes or no.',
    "photo-plain": "A photo shows a {p}. Does it show a {c}? Answer yes or no.",
    "in-class": ('The images are small grayscale photos of clothing. One class is "{c}". Does a photo of a '
                 '"{p}" belong in the class "{c}"? Answer yes or no.'),
    "name-for": 'Is "{p}" another name for "{c}", or a kind of "{c}"? Answer yes or no.',
    "none": ('Classes: {classes}.\nIn which one of these classes would a photo of a "{p}" be filed? Answer with '
             'the class name exactly as written above, or "none" if it fits none of them.'),
    "none-listed": ('Classes: {classes}, none of these.\nIn which one of these would a photo of a "{p}" be filed? '
                    "Answer with one of them exactly as written above."),
}
YES_NO_TOKENS = 3  # "yes" or "no", and room for a full stop


def refuses(question: str, answer: str, own: str) -> bool:
    """Whether `answer` to `question` would refuse the change to the class named `own`."""
    answer = answer.strip().lower()
    if question.startswith("none"):
        return answer.strip('."\' ') != own.lower()
    return answer.startswith("no")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", nargs="+", default=list(QUESTIONS), choices=list(QUESTIONS))
    args = parser.parse_args()
    with local_server() as url:
        llm = LLMClient("local", base_url=url, api_key="none", cache_dir=cache_dir("bench-judge"))
        for question in args.questions:
            for start in (CLEAN, PUBLISHED):
                counts = []
                for kind, changes in (("good", GOOD), ("drifts", DRIFTS), ("seen", SEEN)):
                    refused = []
                    for name, cls in changes:
                        text = QUESTIONS[question].format(p=name, c=start[cls], classes=", ".join(start))
                        tokens = JUDGE_ANSWER_TOKENS if question.startswith("none") else YES_NO_TOKENS
                        answer = llm.chat([{"role": "user", "content": text}], temperature=0.0,
                                          seed=call_seed(1, -1, -1, -1), max_answer_tokens=tokens).content
                        if refuses(question, answer, start[cls]):
                            refused.append(f"{start[cls]} <- {name} ({answer.strip()[:20]})")
                    counts.append(f"{kind} {len(refused)} of {len(changes)}")
                    print(f"  {question}, {start[1]}: {kind} refused: {'; '.join(refused) or 'none'}", flush=True)
                print(f"{question}, start names {start[1]}...: refused " + ", ".join(counts), flush=True)


if __name__ == "__main__":
    main()
