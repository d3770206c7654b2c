"""The run: both ceilings first; then per shape one layer, whose weights every variant reuses (a second
copy of DeepSeek-V3's 22.5 GB of experts would not fit beside it), and per token count one cell:
rotated inputs, the floor, the float32 reference, then each variant checked and timed. With
``--quant``, each scheme's cells follow the shape's unquantized ones (quant_runner.py).

A failure stays in its cell (a backend's refusal, a failed capture, out of memory) and the run goes on."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

import moekit
from moekit.bench.baselines import GROUPED_MM_BACKEND, fp32_reference, grouped_mm_moe, hf_eager_loop
from moekit.bench.ceilings import Ceilings, low_precision_kind, measure_ceilings
from moekit.bench.check import check_output
from moekit.bench.floor import MoEShape, distinct_experts, roofline_floor
from moekit.bench.inputs import INPUT_SETS, InputSet, make_input_sets
from moekit.bench.provenance import describe_environment
from moekit.bench.quant_runner import run_quant_schemes
from moekit.bench.results import (GROUPED_MM, HF_LOOP, LABELS, MOEKIT, MOEKIT_ROUTING, BenchResults, Cell,
                                  QuantCell, ShapeResult, VariantResult)
from moekit.bench.timing import (EAGER_WARMUP_MS, REP_MS, WARMUP_MS, CaptureError, EagerRotation, capture_rotation,
                                 describe_error, median_ms, method, settle)
from moekit.cli.presets import Preset
from moekit.quant import method_for


@dataclass(frozen=True)
class BenchConfig:
    presets: tuple[Preset, ...]
    tokens: tuple[int, ...]
    dtype: torch.dtype = torch.bfloat16
    seed: int = 0
    input_sets: int = INPUT_SETS
    command: str = "moekit bench"
    quant: tuple[str, ...] = ()  # canonical schemes to bench beside the unquantized forward
    baselines: bool = True  # time moekit+routing, grouped_mm and the hf loop too

    @property
    def cells(self) -> int:
        """Cells the progress counts: per shape and token count, the unquantized one and one per scheme."""
        return len(self.presets) * len(self.tokens) * (1 + len(self.quant))


class Progress:
    """What the command shows while a run goes on; these defaults show nothing."""

    def status(self, text: str) -> None:
        pass

    def cell_done(self, shape: ShapeResult, cell: Cell | None) -> None:  # None: skipped, the shape failed
        pass

    def quant_cell_done(self, shape: ShapeResult, scheme: str, tokens: int, cell: QuantCell | None) -> None:
        pass  # None: skipped, the shape or the scheme's layer failed


@dataclass(frozen=True)
class Variant:
    name: str
    graph: bool  # timed by CUDA-graph replay (eagerly if capture fails)
    fn: Callable[[InputSet], torch.Tensor]


def run_bench(config: BenchConfig, device: torch.device, progress: Progress | None = None, *,
              ceilings: Ceilings | None = None) -> BenchResults:
    """Measure the ceilings (unless given) and every (shape, token count) cell of ``config``."""
    progress = progress or Progress()
    environment = describe_environment(device)
    if ceilings is None:
        progress.status("measuring bandwidth and matmul rate")
        # fp8 / int8 rates only when a scheme multiplies in that format (each costs an 8192³ GEMM).
        kinds = [k for k in (low_precision_kind(method_for(s).spec) for s in config.quant) if k is not None]
        with torch.inference_mode():
            ceilings = measure_ceilings(device, config.dtype, low_precision=kinds)
    results = BenchResults(environment=environment, ceilings=ceilings, dtype=str(config.dtype).removeprefix("torch."),
                           input_sets=config.input_sets, command=config.command, timing=method(),
                           quant=config.quant)
    for preset in config.presets:
        results.shapes.append(run_shape(preset, config, device, ceilings, progress))
    return results


def build_bench_layer(preset: Preset, dtype: torch.dtype, device: torch.device, seed: int) -> moekit.MoE:
    """The preset's layer without shared experts (so every variant does the same routed-experts work)."""
    torch.manual_seed(seed)
    kwargs = dataclasses.replace(preset, shared_intermediate_size=None).layer_kwargs()
    layer = moekit.MoE(**kwargs, dtype=dtype, device=device).requires_grad_(False)
    if layer.correction_bias is not None:
        # A trained model's bias is far from zero; a zero one would not change which experts are chosen.
        layer.correction_bias.normal_(0.0, 0.1)
    return layer


def run_shape(preset: Preset, config: BenchConfig, device: torch.device, ceilings: Ceilings,
              progress: Progress) -> ShapeResult:
    shape = ShapeResult(preset=preset.name, model=preset.model, num_experts=preset.num_experts, top_k=preset.top_k,
                        hidden=preset.hidden_size, intermediate=preset.intermediate_size,
                        activation=preset.activation, gate_up_layout=preset.gate_up_layout.value,
                        expert_bias=preset.expert_bias)
    progress.status(f"{preset.name}: building the layer")
    try:
        layer = build_bench_layer(preset, config.dtype, device, config.seed)
        shape.backend = layer.explain().backend
    except Exception as e:  # noqa: BLE001 - e.g. out of memory on a smaller GPU: the other shapes still run
        shape.error = describe_error(e)
        settle()
        for tokens in config.tokens:
            progress.cell_done(shape, None)
            for scheme in config.quant:
                progress.quant_cell_done(shape, scheme, tokens, None)
        return shape
    for tokens in config.tokens:
        cell = run_cell(layer, tokens, config, ceilings, progress, preset.name)
        shape.cells.append(cell)
        progress.cell_done(shape, cell)
    run_quant_schemes(layer, preset, shape, config, ceilings, progress)
    del layer  # free this shape's weights before the next shape's are allocated
    settle()
    return shape


def run_cell(layer: moekit.MoE, tokens: int, config: BenchConfig, ceilings: Ceilings, progress: Progress,
             label: str) -> Cell:
    cell = Cell(tokens)
    try:
        with torch.inference_mode():
            progress.status(f"{label} T={tokens}: inputs and float32 reference")
            sets = make_input_sets(layer, tokens, config.input_sets, config.seed)
            distinct = distinct_experts([s.topk_ids for s in sets])
            cell.floor = roofline_floor(MoEShape.of_layer(layer), tokens, distinct, ceilings.bandwidth,
                                        ceilings.matmul_flops_per_s)
            first = sets[0]
            ref = fp32_reference(first.x, layer.w13, layer.w2, first.topk_weights, first.topk_ids, layer.activation,
                                 layer.w13_bias, layer.w2_bias, gate_up_layout=layer.gate_up_layout,
                                 apply_router_weight_on_input=layer.apply_router_weight_on_input)
            for variant in layer_variants(layer, config.baselines):
                progress.status(f"{label} T={tokens}: {LABELS[variant.name]}")
                cell.variants[variant.name] = measure_variant(variant, sets, ref)
    except Exception as e:  # noqa: BLE001 - the cell says what failed; the run goes on
        cell.error = describe_error(e)
        settle()
    return cell


def layer_variants(layer: moekit.MoE, baselines: bool = True) -> list[Variant]:
    """The four things timed, all on the layer's own weights; without ``baselines`` only moekit's
    forward on precomputed routing (what ``--quant`` compares the quantized forwards with)."""
    w = (layer.w13, layer.w2)
    kw = dict(gate_up_layout=layer.gate_up_layout, apply_router_weight_on_input=layer.apply_router_weight_on_input)

    def experts(s: InputSet) -> torch.Tensor:
        return moekit.fused_moe(s.x, *w, s.topk_weights, s.topk_ids, layer.activation, layer.w13_bias,
                                layer.w2_bias, **kw)

    def grouped(s: InputSet) -> torch.Tensor:
        return grouped_mm_moe(s.x, *w, s.topk_weights, s.topk_ids, layer.activation, layer.w13_bias, layer.w2_bias,
                              **kw)

    def hf_loop(s: InputSet) -> torch.Tensor:
        return hf_eager_loop(s.x, *w, s.topk_weights, s.topk_ids, layer.activation, layer.w13_bias, layer.w2_bias,
                             **kw)

    def with_routing(s: InputSet) -> torch.Tensor:
        return layer(s.x)  # router, routing and experts: the routing in ``s`` is not used

    if not baselines:
        return [Variant(MOEKIT, True, experts)]
    return [Variant(MOEKIT, True, experts), Variant(MOEKIT_ROUTING, True, with_routing),
            Variant(GROUPED_MM, False, grouped), Variant(HF_LOOP, False, hf_loop)]


def measure_variant(variant: Variant, sets: Sequence[InputSet], ref: torch.Tensor,
                    tolerance: float | None = None) -> VariantResult:
    """Check the output for input set 0 against ``ref`` (within ``tolerance``, by default the output
    dtype's), then time the rotation over all sets."""
    result = VariantResult(variant.name)
    try:
        rotation = EagerRotation(variant.fn, sets)
        if variant.graph:
            try:
                rotation = capture_rotation(variant.fn, sets)
            except CaptureError as e:
                result.capture_error = str(e)
        check = check_output(rotation.first_output(), ref, tolerance)
        result.rel_error, result.finite, result.passed = check.rel_error, check.finite, check.passed
        warmup = WARMUP_MS if rotation.mode == "graph" else EAGER_WARMUP_MS
        result.us = median_ms(rotation, warmup, REP_MS) * 1e3
        result.mode = rotation.mode
    except moekit.BackendUnavailableError as e:
        result.error = "refused: " + _refusal_reason(str(e), GROUPED_MM_BACKEND)
    except Exception as e:  # noqa: BLE001 - recorded in the cell
        result.error = describe_error(e)
        settle()
    return result


def _refusal_reason(message: str, backend: str) -> str:
    """The requested backend's own reason out of the oracle's message, which lists every backend's."""
    start = message.find(f"{backend}: ")
    if start < 0:
        return message
    reason = message[start + len(backend) + 2:]
    return reason.split("; ")[0]
