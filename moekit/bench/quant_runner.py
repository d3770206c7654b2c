"""``--quant``: after a shape's unquantized cells, one quantized layer per scheme, built from the
SAME float weights (the unquantized layer's, quantized one expert at a time) and freed before the
next scheme's (DeepSeek-V3's bf16 experts are 22.5 GB: two quantized copies beside them would not
leave room for the cells). Each cell regenerates the unquantized cell's inputs (same seed, routed
by the unquantized layer), so both forwards see the same tokens and experts; the unquantized
results are measured once and shared by every scheme.

A failure stays in its scheme's cell (or, for a layer that cannot be built, its scheme)."""

from __future__ import annotations

import dataclasses

import torch

import moekit
from moekit.bench.ceilings import Ceilings
from moekit.bench.floor import MoEShape, distinct_experts, roofline_floor
from moekit.bench.inputs import InputSet, make_input_sets
from moekit.bench.quant_reference import quant_tolerance, quantized_reference
from moekit.bench.results import QuantCell, ShapeResult
from moekit.bench.timing import describe_error, settle
from moekit.cli.presets import Preset
from moekit.quant import method_for


def run_quant_schemes(layer: moekit.MoE, preset: Preset, shape: ShapeResult, config, ceilings: Ceilings,
                      progress) -> None:
    """Fill ``cell.quant[scheme]`` of every cell of ``shape`` for each scheme of ``config.quant``."""
    for scheme in config.quant:
        progress.status(f"{preset.name}: quantizing the experts to {scheme}")
        why_not = not_applicable(layer, scheme)
        if why_not is not None:  # no checkpoint can pair this scheme with this shape: not a failure
            shape.quant_skipped[scheme] = why_not
            for cell in shape.cells:
                progress.quant_cell_done(shape, scheme, cell.tokens, None)
            continue
        try:
            qlayer = build_quantized_layer(layer, preset, scheme)
            shape.quant_backends[scheme] = qlayer.explain().backend
        except Exception as e:  # noqa: BLE001 - e.g. a group size that does not divide the shape
            shape.quant_errors[scheme] = describe_error(e)
            settle()
            for cell in shape.cells:
                progress.quant_cell_done(shape, scheme, cell.tokens, None)
            continue
        for cell in shape.cells:
            label = f"{preset.name} T={cell.tokens} {scheme}"
            cell.quant[scheme] = run_quant_cell(qlayer, layer, cell.tokens, config, ceilings, progress, label)
            progress.quant_cell_done(shape, scheme, cell.tokens, cell.quant[scheme])
        del qlayer  # free this scheme's weights before the next scheme's are built
        settle()


def not_applicable(layer: moekit.MoE, scheme: str) -> str | None:
    """Why ``scheme`` cannot hold this shape's experts (a group size that does not divide H or I,
    e.g. g128 and gpt-oss's 2880), or None."""
    method = method_for(scheme)
    try:
        method.check_divisible("w13", layer.w13.shape[1], layer.hidden_size)
        method.check_divisible("w2", layer.hidden_size, layer.intermediate_size)
    except ValueError as e:
        return str(e)
    return None


def build_quantized_layer(layer: moekit.MoE, preset: Preset, scheme: str) -> moekit.MoE:
    """A layer of ``scheme`` holding ``layer``'s weights: router, correction bias and biases copied,
    experts quantized from ``layer``'s float weights."""
    kwargs = dataclasses.replace(preset, shared_intermediate_size=None).layer_kwargs()
    qlayer = moekit.MoE(**kwargs, dtype=layer.dtype, device=layer.w2.device, quant=scheme).requires_grad_(False)
    with torch.no_grad():
        qlayer.router.load_state_dict(layer.router.state_dict())
        for name in ("correction_bias", "w13_bias", "w2_bias"):
            if getattr(layer, name) is not None:
                getattr(qlayer, name).copy_(getattr(layer, name))
    qlayer.set_expert_weights(layer.w13, layer.w2)  # quantizes one expert at a time, then composes the kernel
    return qlayer


def run_quant_cell(qlayer: moekit.MoE, layer: moekit.MoE, tokens: int, config, ceilings: Ceilings, progress,
                   label: str) -> QuantCell:
    # The runner owns timing a variant (and imports this module): import it when a cell runs.
    from moekit.bench.runner import Variant, measure_variant

    spec = qlayer.quant_method.spec
    cell = QuantCell(qlayer.quant, tolerance=quant_tolerance(spec))
    try:
        with torch.inference_mode():
            progress.status(f"{label}: inputs and float32 reference on the dequantized weights")
            sets = make_input_sets(layer, tokens, config.input_sets, config.seed)
            distinct = distinct_experts([s.topk_ids for s in sets])
            rate, rate_name = ceilings.matmul_rate_for(spec)
            cell.floor = roofline_floor(MoEShape.of_layer(qlayer), tokens, distinct, ceilings.bandwidth, rate,
                                        rate_name)
            first = sets[0]
            ref = quantized_reference(qlayer, first.x, first.topk_weights, first.topk_ids)
            progress.status(f"{label}: timing")
            cell.result = measure_variant(Variant(qlayer.quant, True, quantized_forward(qlayer)), sets, ref,
                                          cell.tolerance)
    except Exception as e:  # noqa: BLE001 - the scheme's cell says what failed; the run goes on
        cell.error = describe_error(e)
        settle()
    return cell


def quantized_forward(qlayer: moekit.MoE):
    """The quantized layer's routed experts on precomputed routing (routing excluded, as the
    unquantized ``moekit`` variant is timed): its composed kernel, whatever backend the oracle chose."""
    def forward(s: InputSet) -> torch.Tensor:
        return qlayer.kernel.apply(s.x, s.topk_weights, s.topk_ids)
    return forward
