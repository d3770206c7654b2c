"""Facts about the machine that backend selection depends on, gathered in one place and passed
to the oracle as data (the oracle itself reads no globals)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Environment:
    cuda_available: bool
    device_name: str  # "cpu" or the CUDA device's name
    compute_capability: tuple[int, int] | None  # (major, minor) of CUDA device 0
    triton_available: bool
    requested_backend: str | None  # MOEKIT_BACKEND, if set
    triton_interpreter: bool = False  # TRITON_INTERPRET=1: Triton kernels run on the CPU (tests)


def current_environment() -> Environment:
    """The machine facts (read once per process) and the environment variables (read every call)."""
    cuda, name, capability, triton = _machine()
    return Environment(
        cuda_available=cuda,
        device_name=name,
        compute_capability=capability,
        triton_available=triton,
        requested_backend=os.environ.get("MOEKIT_BACKEND") or None,
        triton_interpreter=os.environ.get("TRITON_INTERPRET", "0") == "1",
    )


_MACHINE: list[tuple] = []  # a plain cache (not lru_cache), which torch.compile traces without a warning


def _machine() -> tuple[bool, str, tuple[int, int] | None, bool]:
    if not _MACHINE:
        cuda = torch.cuda.is_available()
        _MACHINE.append((
            cuda,
            torch.cuda.get_device_name(0) if cuda else "cpu",
            torch.cuda.get_device_capability(0) if cuda else None,
            importlib.util.find_spec("triton") is not None,
        ))
    return _MACHINE[0]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
