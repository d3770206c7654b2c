"""Checks that need the host to read device data (expert ids in range, NaN router logits).

They run in eager mode only: never while a CUDA graph is being captured or torch.compile traces,
where a host read would break the capture or the graph. They can be switched off for speed with
``moekit.set_host_checks(False)`` or ``MOEKIT_HOST_CHECKS=0``. With checks off (or under capture or
compile) the kernels still never read or write out of bounds: an out-of-range expert id contributes
nothing to its token's output."""

from __future__ import annotations

import os

import torch

_enabled: bool | None = None  # None: follow MOEKIT_HOST_CHECKS


def set_host_checks(enabled: bool | None) -> None:
    """Switch the host-side checks on or off; ``None`` goes back to ``MOEKIT_HOST_CHECKS`` (default on)."""
    global _enabled
    _enabled = enabled


def host_checks_enabled(*tensors: torch.Tensor) -> bool:
    """True when a check may read device data now: switched on, not compiling, not capturing."""
    enabled = _enabled if _enabled is not None else os.environ.get("MOEKIT_HOST_CHECKS", "1") != "0"
    if not enabled or torch.compiler.is_compiling():
        return False
    if any(t.is_cuda for t in tensors) and torch.cuda.is_current_stream_capturing():
        return False
    return True
