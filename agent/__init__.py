"""promptclimb's search side: the hill-climbing loop, the LLM client, proposal parsing,
the run store and the CLI. Nothing in this package imports torch at import time; it talks
to CLIP through the `Evaluator` protocol in `agent.core.protocol`."""

