"""Triton kernels: token alignment by expert, the fused experts GEMMs (unquantized, quantized, the
weight-only decode GEMV), fused routing, the expert-parallel dispatch messages and combine, and
their tile configurations. Imported lazily (``import moekit`` does not import triton); on the CPU
they run under ``TRITON_INTERPRET=1``, which is how CI tests them."""

from __future__ import annotations

import importlib.util
import os


def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Triton runs kernels in its CPU interpreter (set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
