"""The drift guard's judge on fixed questions: which good renames it refuses, which drifts it catches.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_judge.py [--dataset eurosat]

The embedded local LLM is asked the judge's question (prompts/meta/names_judge.j2,
temperature 0) for 29 good renames and 16 drifts of Fashion-MNIST's classes (and, as `seen`,
6 drifts that passed every guard in bench runs), once with the
cleaned start names and once with the published labels (`--dataset eurosat`: 30 good renames
and 15 drifts of EuroSAT's classes, from CoOp's names and from the folder names such as
`AnnualCrop`, which embed worst), the classes listed in class order
and again in reverse order. Printed per question: both answers and whether a change would be
refused by one answer alone, by both answers naming the same other class, and by the
guard's rule (agent/search.py `HillClimber.drift_guard`): where both answers name the same
other class, or the first names no class, the text tower decides (`naming.GUARD_TEMPLATE`,
"a photo of a {}.", filled with the new name, refused unless closer to its own class's start
name by `naming.TEXT_MARGIN` than to the judged class's, or, where no class was named, to
every other class's; `--backbone`, demo by default); then the counts.
Which rename is good and which a drift is this file's judgement. Asserts nothing.
"""

from __future__ import annotations

import argparse

from promptclimb.agent import names as naming
from promptclimb.agent.core.paths import cache_dir
from promptclimb.agent.core.protocol import Task
from promptclimb.agent.llm.client import LLMClient
from promptclimb.agent.llm.local import local_server
from promptclimb.agent.metaprompt import MetaPrompt
from promptclimb.agent.search import JUDGE_ANSWER_TOKENS, call_seed

CLEAN = ("T-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
PUBLISHED = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
GOOD = [("sweater", 2), ("sweaters", 2), ("jumper", 2), ("sweatshirt", 2), ("knit sweater", 2), ("jeans", 1),
        ("pants", 1), ("slacks", 1), ("tee", 0), ("tee shirt", 0), ("gown", 3), ("evening gown", 3), ("frock", 3),
        ("parka", 4), ("overcoat", 4), ("flip-flop", 5), ("sandals", 5), ("trainer", 7), ("running shoe", 7),
        ("sport shoe", 7), ("handbag", 8), ("purse", 8), ("tote bag", 8), ("boot", 9), ("bootie", 9),
        ("button-up shirt", 6), ("dress shirt", 6), ("flannel shirt", 6), ("collared shirt", 6)]
DRIFTS = [("skirt", 1), ("boot", 7), ("jacket", 2), ("tank top", 6), ("blazer", 6), ("cardigan", 4), ("slipper", 7),
          ("sweater", 6), ("hoodie", 0), ("gown", 4), ("high heels", 9), ("flip-flop", 7), ("trench coat", 2),
          ("loafer", 9), ("tunic", 0), ("polo shirt", 6)]
# Drifts that passed every guard and ended bench runs (docs/results.md lists the runs), kept
# apart from DRIFTS so that the counts published for DRIFTS stay comparable.
SEEN_IN_RUNS = [("shorts", 1), ("tights", 1), ("skirt", 3), ("blouse", 3), ("bootlace", 9), ("suit jacket", 4)]
# EuroSAT, in FOLDERS order: AnnualCrop, Forest, HerbaceousVegetation, Highway, Industrial,
# Pasture, PermanentCrop, Residential, River, SeaLake.
EUROSAT_GOOD = [("cropland", 0), ("farmland", 0), ("crop field", 0), ("woodland", 1), ("woods", 1),
                ("forest area", 1), ("shrubland", 2), ("wild vegetation", 2), ("scrubland", 2), ("road", 3),
                ("motorway", 3), ("freeway", 3), ("factory", 4), ("industrial area", 4), ("warehouses", 4),
                ("grazing land", 5), ("meadow", 5), ("grassland for cattle", 5), ("orchard", 6), ("vineyard", 6),
                ("olive grove", 6), ("housing", 7), ("residential area", 7), ("suburb", 7), ("stream", 8),
                ("riverbank", 8), ("canal", 8), ("lake", 9), ("sea", 9), ("coastal water", 9)]
EUROSAT_DRIFTS = [("forest", 2), ("vineyard", 0), ("lake", 8), ("houses", 4), ("road", 7), ("orchard", 1),
                  ("river", 9), ("pasture", 6), ("factory", 7), ("farmland", 5), ("ocean", 8), ("woods", 6),
                  ("highway", 8), ("wheat field", 5), ("grassland", 0)]


def cases(dataset: str):
    """(description, start sets, good renames, drifts, drifts seen in runs) of `dataset`."""
    if dataset == "eurosat":
        from promptclimb.evaluators.eurosat import COOP_CLASSNAMES, DESCRIPTION, FOLDERS

        return (DESCRIPTION, (tuple(COOP_CLASSNAMES[f] for f in FOLDERS), tuple(FOLDERS)), EUROSAT_GOOD,
                EUROSAT_DRIFTS, [])
    return "small grayscale photos of clothing", (CLEAN, PUBLISHED), GOOD, DRIFTS, SEEN_IN_RUNS


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="demo", help="whose text tower checks the judge [default: demo]")
    parser.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "eurosat"),
                        help="whose classes, renames and drifts [default: fashion-mnist]")
    args = parser.parse_args()
    description, starts, good, drifts, seen = cases(args.dataset)
    from promptclimb.evaluators import build_evaluator  # imports torch

    meta = MetaPrompt()
    evaluator = build_evaluator("fashion-mnist", 1, 1, args.backbone)
    with local_server() as url:
        llm = LLMClient("local", base_url=url, api_key="none", cache_dir=cache_dir("bench-judge"))
        for start in starts:
            task = Task(args.dataset, description, start)

            def judged(name: str, listed) -> tuple[str, int | None]:
                messages = [{"role": "user", "content": meta.names_judge(task, list(listed), name)}]
                answer = llm.chat(messages, temperature=0.0, seed=call_seed(1, -1, -1, -1),
                                  max_answer_tokens=JUDGE_ANSWER_TOKENS).content
                return answer.strip(), naming.judged_class(answer, start, start)

            counts = {}
            for kind, questions in (("good", good), ("drift", drifts), ("seen", seen)):
                one = both = text = 0
                for name, cls in questions:
                    (a1, named), (a2, again) = judged(name, start), judged(name, start[::-1])
                    by_one, agreed = named not in (cls, None), named not in (cls, None) and again == named
                    checked, why = False, ""
                    if agreed or named is None:  # what the guard puts to the text tower
                        other, own, closest = naming.text_nearest(evaluator.name_similarity, name, cls, named, start)
                        checked = naming.text_refuses(own, closest)
                        why = f" (similarity to {start[cls]} {own:.3f}, to {start[other]} {closest:.3f})"
                    one, both, text = one + by_one, both + agreed, text + checked
                    print(f"{kind:5}  {start[cls]} <- {name}  | {a1} | {a2} | refused by one answer: {by_one}, "
                          f"by both: {agreed}, with the text tower: {checked}{why}")
                counts[kind] = (len(questions), one, both, text)
            print(f"start names {', '.join(start)}: " + "; ".join(
                f"{kind} renames refused by one answer {one} of {n}, by both {both}, with the text tower {text}"
                for kind, (n, one, both, text) in counts.items()))

if __name__ == "__main__":
    main()
