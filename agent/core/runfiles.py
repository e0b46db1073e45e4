"""The run folder's file names and format version: the one list both sides write to
(the search's store, the soft-prompt optimizers, the adapters) and read from."""

FORMAT_VERSION = 2  # 2: history.jsonl in compact forms (agent/runs/compact.py); 1 is still read
CONFIG, HISTORY, PROMPTS, SUMMARY, LOCK = "config.json", "history.jsonl", "prompts.csv", "summary.json", ".lock"
CURVE = "curve.png"
REPORT = "report.html"
ADAPTER_FILE = "adapter.pt"
SOFT_PROMPT_FILE = "soft_prompt.safetensors"  # a soft-prompt run's prompt: tensor "context" [tokens, width]
STATE_FILE = "optimizer_state.pt"  # a soft-prompt run's optimizer, saved after each step
# A sweep's folder (agent/sweep/): sweep.json, and in each cell's run folder what
# the cell adds to it.
SWEEP_FILE = "sweep.json"
CELL_LOG, CELL_ERROR = "search.log", "error.txt"
