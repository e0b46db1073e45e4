"""promptclimb: black-box prompt search for CLIP-like models, with a chat LLM as the optimizer.

The repository root is the installed package `promptclimb`; its folders are its
sub-packages: `promptclimb.agent` (the search, the LLM client, the run folder, the CLI),
`promptclimb.evaluators` (CLIP scoring; the only side that imports torch) and
`promptclimb.prompts` (meta-prompts and template pools, text only).
"""

__version__ = "0.1.0"
