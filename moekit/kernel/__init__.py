from moekit.kernel.modular import ModularKernel

__all__ = ['ModularKernel']
