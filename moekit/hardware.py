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


def current_environment() -> Environment:
    cuda = torch.cuda.is_available()
    return Environment(
        cuda_available=cuda,
        device_name=torch.cuda.get_device_name(0) if cuda else "cpu",
        compute_capability=torch.cuda.get_device_capability(0) if cuda else None,
        triton_available=importlib.util.find_spec("triton") is not None,
        requested_backend=os.environ.get("MOEKIT_BACKEND") or None,
    )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
