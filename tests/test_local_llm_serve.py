"""The real llama.cpp server (`promptclimb llm serve`) says which GGUF it serves, so a
`--base-url` pointing at it is recognised as the local LLM and its answers are cached by
the GGUF's SHA-256 (issue 12, item 1). Slow (the server loads the 1.1 GB model, about 15 s);
runs whenever the `local` extra is installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason='the local LLM extra is not installed (pip install "promptclimb[local]")')

# The user's cache home, read before the autouse fixture points PROMPTCLIMB_HOME at a tmp
# dir: the model is assembled (once) there and reused (as in tests/test_e2e_local.py).
USER_HOME = os.environ.get("PROMPTCLIMB_HOME")


@pytest.fixture(scope="module")
def model_file() -> Path:
    from promptclimb.agent.local_llm import ensure_model

    saved = os.environ.get("PROMPTCLIMB_HOME")
    try:
        if USER_HOME is None:
            os.environ.pop("PROMPTCLIMB_HOME", None)
        else:
            os.environ["PROMPTCLIMB_HOME"] = USER_HOME
        return ensure_model()
    finally:
        if saved is None:
            os.environ.pop("PROMPTCLIMB_HOME", None)
        else:
            os.environ["PROMPTCLIMB_HOME"] = saved


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_llm_serve_lists_its_model_and_hash(model_file):
    from promptclimb.agent.llm import LLMClient, local_model_served_at
    from promptclimb.agent.local_llm import DEFAULT_MODEL, LOCAL_MODEL_NAME, local_server

    with local_server(model_file, warmup=False, n_ctx=512, echo=lambda m: None) as base_url:
        assert local_model_served_at(base_url) == LOCAL_MODEL_NAME
        client = LLMClient("local", base_url=base_url, api_key="local", use_cache=False)
        assert client.origin() == {"local_gguf_sha256": DEFAULT_MODEL.sha256}
