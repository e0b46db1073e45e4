"""A 4-cell sweep on an hf dataset (the embedded Fashion-MNIST subset saved with save_to_disk),
logged to a local MLflow server; the LLM is the tests' scripted stand-in (tests/fake_llm.py)."""
import os
import re
import subprocess
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "tests"))
from fake_llm import FakeLLM  # noqa: E402

NAMES = {"T-shirt/top": "t-shirt; tee; top", "Trouser": "trousers; pants; jeans", "Pullover": "sweater; jumper",
         "Dress": "dress; gown", "Coat": "coat; jacket", "Sandal": "sandal; flip-flop", "Shirt": "shirt; blouse",
         "Sneaker": "sneaker; trainer", "Bag": "bag; handbag", "Ankle boot": "boot; ankle boots"}
TEMPLATES = ["a photo of a {}, a piece of clothing.", "a black and white photo of a {}.", "a product photo of a {}.",
             "a grayscale photo of the {}.", "a close-up photo of a {}, something you wear."]


def respond(body):
    text = body["messages"][-1]["content"]
    if body["messages"][0]["content"].startswith("Classes:"):  # the drift guard's question
        return re.search(r'a photo of a "(.*)" be filed', text).group(1)
    if "new names for each of these classes:" in text:
        asked = text.split("new names for each of these classes:")[1].split(".")[0]
        return "\n".join(f"{c.strip()}: {NAMES.get(c.strip(), 'thing')}" for c in asked.split(","))
    n = len(body["messages"])
    return "\n".join(TEMPLATES[(n + i) % len(TEMPLATES)] for i in range(3))


with FakeLLM(responder=respond) as fake:
    env = {**os.environ, "OPENAI_API_KEY": "sk-demo", "HF_HUB_OFFLINE": "1"}
    cmd = ["promptclimb", "sweep", "fmnist-hf", "--dataset", "hf", "--data-root",
           sys.argv[2], "--backbone", "demo", "--shots", "1", "--shots", "4", "--seeds", "1-2",
           "--iterations", "4", "--resets", "1", "--base-url", fake.base_url, "--mlflow", sys.argv[1],
           "--runs-dir", "runs", "--num-cpus", "2"]
    sys.exit(subprocess.run(cmd, env=env).returncode)
