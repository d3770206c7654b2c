"""The modular kernel: prepare/finalize x experts, and the routing metadata they share."""

from moekit.kernel.modular import ModularKernel

__all__ = ["ModularKernel"]
