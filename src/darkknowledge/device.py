"""The one device policy of every command: where training and inference run, and in which precision.

``auto`` is the default of every command and of ``TrainConfig`` (so of every training run): CUDA when it is
available, else the CPU (loading a checkpoint by itself still defaults to the CPU); precision ``auto`` is bf16 where the device computes it natively (CUDA with bf16,
x86 AVX512-BF16 or AMX, Arm BF16), else fp32.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from darkknowledge.errors import DKError

DEFAULT_DEVICE = "auto"
DEVICE_PATTERN = r"cpu|auto|cuda(:\d+)?|mps"


def check_device(name: str) -> None:
    """A device name this policy knows (``cpu``, ``auto``, ``cuda``, ``cuda:N``, ``mps``), or a DKError."""
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise DKError(f"unknown device {name!r}; allowed: cpu, cuda, cuda:N, mps, auto")


def resolve_device(name: str = DEFAULT_DEVICE) -> torch.device:
    """``auto`` picks CUDA when available; asking for an absent CUDA device is an error."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DKError(f"device {name!r} requested but CUDA is not available here")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (x86 AVX512-BF16 or AMX, Arm BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no cheap way to ask, so do not assume it
        return False
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device computes it natively (and accuracy holds: see the README),
    else ``fp32``; ``fp32`` and ``bf16`` are taken as given."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return "fp32"
