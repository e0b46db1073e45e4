"""The device a backbone runs on and the arithmetic it runs in (--precision): checks that
say what is possible here, and the batch sizes that suit each kind of device."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from promptclimb.agent.core.defaults import DEFAULT_PRECISION, PRECISIONS
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.evaluators.backbones import compat

# Texts per forward pass. Rows are sorted by length first, so on a CPU small chunks waste
# little on padding and run faster than one big batch cut to its longest row.
TEXT_CHUNK = {"cpu": 64, "cuda": 512}
# Images per encoder batch (evaluators/scorer.py). CPU: bigger batches do not make
# ViT-B-32's oneDNN matrix products faster (bench/bench_images.py --extra), and 32 images
# hold less memory than 64. A GPU wants big batches.
IMAGE_BATCH = {"cpu": 32, "cuda": 256}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16 or AMX), as
    oneDNN sees it; without that, bf16 autocast emulates and is slower than fp32."""
    try:
        return compat.onednn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision: str | None, device: str) -> str:
    """`precision` (None: the default), or PromptclimbError saying what is possible."""
    precision = precision or DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise PromptclimbError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    if precision == "bf16" and _is_cuda(device) and not torch.cuda.is_bf16_supported():
        raise PromptclimbError("--precision bf16 needs a GPU with bfloat16 support, which this one lacks; "
                               "use --precision fp32")
    if precision == "bf16" and not _is_cuda(device) and not cpu_supports_bf16():
        raise PromptclimbError("--precision bf16 needs a CPU with bfloat16 instructions (AVX512-BF16 or AMX), "
                               "which this one lacks; use --precision fp32")
    return precision


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")


def check_device(device: str) -> str:
    """`device` when torch can use it here, else PromptclimbError saying why (instead of
    torch's message from deep inside the model's load)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise PromptclimbError(f"unknown device {device!r}; use cpu or cuda (cuda:N for one of several GPUs)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise PromptclimbError(f"device {device!r}: torch {torch.__version__} sees no CUDA GPU on this machine; "
                               "use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise PromptclimbError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                               f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


@contextmanager
def _cudnn_without_tf32():
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before
