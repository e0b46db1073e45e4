"""The LLM side: the OpenAI-compatible client (cache, retries, budget), the embedded
llama.cpp server and the chunked model files it is assembled from."""
