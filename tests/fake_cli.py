"""`promptclimb`, with the in-memory WordEvaluator (tests/fake_llm.py) standing in for the
CLIP evaluator: `python tests/fake_cli.py search --dataset toy ...` behaves as the real
command (options, run folder, LLM client, signals, exit status) without torch. For tests
and benchmarks that need the command in a process of its own (kills, SIGTERM).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_llm import WordEvaluator  # noqa: E402

from promptclimb.agent import cli  # noqa: E402

if __name__ == "__main__":
    cli.main(sys.argv[1:], obj={"evaluator_factory": lambda **kwargs: WordEvaluator(kwargs["dataset"])})
