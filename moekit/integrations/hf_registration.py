"""Hook moekit into transformers without importing it: when (and only when) the program imports
transformers' MoE integration, "moekit" is added to its ExpertsInterface (and to the fp8 experts'
FP8ExpertsInterface when that module is imported). ``patch`` is re-exported
lazily so ``import moekit`` stays free of transformers' import cost (~1.3 s)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def register_experts_implementation() -> None:
    """Add "moekit" to transformers' experts registry (idempotent; imports transformers)."""
    from transformers.integrations.moe import ExpertsInterface

    from moekit.integrations.hf_experts import moekit_experts_forward

    ExpertsInterface.register("moekit", moekit_experts_forward)


def register_fp8_experts_implementation() -> None:
    """Add "moekit" to the registry transformers' fp8 experts dispatch through (FP8ExpertsInterface)."""
    from transformers.integrations import finegrained_fp8

    from moekit.integrations.hf_experts import moekit_experts_forward

    interface = getattr(finegrained_fp8, "FP8ExpertsInterface", None)
    if interface is not None:  # older transformers: fp8 experts do not dispatch through a registry
        interface.register("moekit", moekit_experts_forward)


_REGISTRATIONS = {
    "transformers.integrations.moe": register_experts_implementation,
    "transformers.integrations.finegrained_fp8": register_fp8_experts_implementation,
}


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of transformers.integrations.moe to register after it runs."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _REGISTRATIONS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        original_exec = spec.loader.exec_module

        def exec_then_register(module):
            original_exec(module)
            _REGISTRATIONS[fullname]()

        spec.loader.exec_module = exec_then_register
        return spec


def install_hf_registration() -> None:
    for name, register in _REGISTRATIONS.items():
        if name in sys.modules:
            register()
    if not all(name in sys.modules for name in _REGISTRATIONS) and not any(
            isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


def patch(model, **kwargs):
    """Replace every supported sparse-MoE block of ``model`` by a ``moekit.MoE``; see hf_patch.patch."""
    from moekit.integrations.hf_patch import patch as _patch

    return _patch(model, **kwargs)


def load_hf_state_dict(layer, state_dict, prefix: str = "", **kwargs) -> None:
    """Load a Hugging Face MoE block's tensors into a ``moekit.MoE``; see hf_state_dict.load_hf_state_dict."""
    from moekit.integrations.hf_state_dict import load_hf_state_dict as _load

    _load(layer, state_dict, prefix, **kwargs)
