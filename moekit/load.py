"""``moekit.load(path)``: the MoE layers of a checkpoint directory (config.json + safetensors).

Each MoE block is found by its tensor names (``<prefix>experts.…``, e.g.
``model.layers.3.mlp.experts.0.gate_proj.weight_packed``), built from config.json
(checkpoints/model_config.py) with the scheme the quantization config gives its routed experts
(quant/factory.py), and filled from the shards one block at a time (checkpoints/block.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from moekit.hardware import default_device
from moekit.layer import MoE

_EXPERTS_KEY = re.compile(r"^(.*\.)?experts\.")


def load(path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
         backend: str | None = None, strict: bool = True, parallel=None) -> dict[str, MoE]:
    """Build every MoE layer of the checkpoint at ``path``: ``{"model.layers.3.mlp": MoE, ...}``.

    ``dtype`` defaults to the config's; ``device`` to moekit's default device. The routed experts
    keep the checkpoint's quantization (``layer.quant``); unsupported schemes, missing or malformed
    tensors are a ValueError/TypeError naming the layer or tensor, raised before any weight of the
    block is converted. With ``parallel=moekit.ExpertParallel(...)`` (every rank calls ``load``)
    each rank reads its own experts of each block, one block at a time (per-expert tensors of other
    experts are never read; of fused [E, ...] tensors only its experts' rows)."""
    from moekit.checkpoints.block import load_quantized_state_dict
    from moekit.checkpoints.files import CheckpointFiles
    from moekit.checkpoints.model_config import config_dtype, moe_arguments, read_config

    config = read_config(path)
    arguments = moe_arguments(config)
    quant_config = _quant_config_dict(config)
    files = CheckpointFiles(path)
    dtype = dtype or config_dtype(config)
    device = torch.device(device) if device is not None else default_device()
    layers = {}
    for prefix in block_prefixes(files):
        scheme = experts_scheme(quant_config, prefix, files, arguments)
        layer = MoE(**arguments, quant=scheme, dtype=dtype, device="meta", backend=backend, parallel=parallel)
        layer.to_empty(device=device)  # storage without drawing random weights
        load_quantized_state_dict(layer, files, prefix, quant_config, strict=strict)
        layers[prefix.removesuffix(".")] = layer
    if not layers:
        raise ValueError(f"no MoE experts in {str(path)!r}: no tensor name contains 'experts.'")
    return layers


def block_prefixes(names) -> list[str]:
    """The distinct ``<prefix>`` of ``<prefix>experts.…`` tensor names, in layer order."""
    prefixes = {m.group(1) or "" for name in names if (m := _EXPERTS_KEY.match(name))}
    return sorted(prefixes, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)])


def experts_scheme(quant_config: dict | None, prefix: str, names, arguments: dict) -> str:
    """The scheme of a block's routed experts (its first projection's), checked against its shape."""
    from moekit.checkpoints.per_expert import _PER_EXPERT
    from moekit.quant.factory import layer_quant
    from moekit.quant.registry import UNQUANTIZED, method_for

    gated = arguments.get("activation", "silu") != "relu2"
    # (first projection, down projection) module names: per expert, else gpt-oss's fused experts
    pairs = [(f"{prefix}experts.0.{n[0]}", f"{prefix}experts.0.{n[-1]}") for n in _PER_EXPERT[gated]]
    first, down = next((p for p in pairs if any(k.startswith(p[0] + ".") for k in names)),
                       (f"{prefix}experts.gate_up_proj", f"{prefix}experts.down_proj"))
    scheme = layer_quant(quant_config, first.removesuffix(".gate_up_proj")).scheme
    if scheme != UNQUANTIZED:  # a group size that does not divide K: refused before anything is built
        method, h, i = method_for(scheme), arguments["hidden_size"], arguments["intermediate_size"]
        method.check_divisible(repr(first), i, h)
        method.check_divisible(repr(down), h, i)
    return scheme


def _quant_config_dict(config) -> dict | None:
    qc = getattr(config, "quantization_config", None)
    if qc is None or isinstance(qc, dict):
        return qc
    return qc.to_dict()  # a transformers QuantizationConfigMixin


__all__ = ["load"]
