"""The torch device a command is given (`--device`, `device=`), checked by name before
anything is loaded: torch-free, so `--device cpu:5` or `meta` is refused in one line before
torch is imported, a run folder is made or a sweep starts Ray. Whether this machine has
the GPU asked for is checked later, by the evaluator (evaluators/backbones/device.py)."""

from __future__ import annotations

import re

from promptclimb.agent.core.errors import PromptclimbError

# What promptclimb runs on: the CPU, or a CUDA GPU (one of several as cuda:N).
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
DEVICE_HELP = "use cpu or cuda (cuda:N for one of several GPUs)"


def check_device_name(device, what: str = "--device") -> str | None:
    """`device` when it names a device promptclimb runs on (None: the default), else
    PromptclimbError naming the option: `cpu:5`, `meta`, `gpu`, `5` are refused."""
    if device is None:
        return None
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise PromptclimbError(f"{what} {device!r}: not a device promptclimb runs on; {DEVICE_HELP}")
    return device
