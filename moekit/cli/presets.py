"""Real MoE layer shapes, one frozen dataclass per model (numbers from each model's config.json),
and the rule that scales one down so a CPU run of the reference backend finishes in seconds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moekit.activations import GateUpLayout
from moekit.routing import RoutingConfig, Scoring


@dataclass(frozen=True)
class Preset:
    name: str  # the CLI's name for it
    model: str  # the model whose MoE layer it is
    hidden_size: int
    intermediate_size: int  # per routed expert
    num_experts: int
    top_k: int
    routing: RoutingConfig
    shared_intermediate_size: int | None = None  # the shared expert's width; None: no shared expert
    activation: str = "silu"
    gate_up_layout: GateUpLayout = GateUpLayout.CONCATENATED
    expert_bias: bool = False  # biases on w13 and w2 (gpt-oss)
    router_bias: bool = False  # a bias on the router's linear layer (gpt-oss)
    apply_router_weight_on_input: bool = False  # Llama-4: the weight scales the token, not the output
    checkpoint_quant: str | None = None  # how the released checkpoint is quantized (informational)

    def layer_kwargs(self) -> dict:
        """Keyword arguments of ``moekit.MoE`` for this shape (dtype, device, backend left out)."""
        return dict(
            num_experts=self.num_experts, top_k=self.top_k, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, activation=self.activation, routing=self.routing,
            shared_intermediate_size=self.shared_intermediate_size, gate_up_layout=self.gate_up_layout,
            expert_bias=self.expert_bias, router_bias=self.router_bias,
            apply_router_weight_on_input=self.apply_router_weight_on_input,
        )


_SOFTMAX = RoutingConfig(scoring=Scoring.SOFTMAX, renormalize=True)
_GPT_OSS = dict(hidden_size=2880, intermediate_size=2880, top_k=4, activation="swigluoai",
                routing=RoutingConfig(scoring=Scoring.TOPK_SOFTMAX, renormalize=False),
                gate_up_layout=GateUpLayout.INTERLEAVED, expert_bias=True, router_bias=True, checkpoint_quant="mxfp4")


def _sigmoid_biased(scale: float, groups: int | None = None, topk_groups: int | None = None) -> RoutingConfig:
    return RoutingConfig(scoring=Scoring.SIGMOID, renormalize=True, num_groups=groups, topk_groups=topk_groups,
                         correction_bias=True, routed_scaling_factor=scale)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("mixtral-8x7b", "Mixtral-8x7B", 4096, 14336, 8, 2, _SOFTMAX),
    Preset("qwen3-30b-a3b", "Qwen3-30B-A3B", 2048, 768, 128, 8, _SOFTMAX),
    Preset("qwen3-235b-a22b", "Qwen3-235B-A22B", 4096, 1536, 128, 8, _SOFTMAX),
    Preset("deepseek-v3", "DeepSeek-V3/R1", 7168, 2048, 256, 8, _sigmoid_biased(2.5, 8, 4),
           shared_intermediate_size=2048, checkpoint_quant="fp8-block128"),
    Preset("gpt-oss-120b", "gpt-oss-120b", num_experts=128, **_GPT_OSS),
    Preset("gpt-oss-20b", "gpt-oss-20b", num_experts=32, **_GPT_OSS),
    Preset("llama4-scout", "Llama-4-Scout", 5120, 8192, 16, 1,
           RoutingConfig(scoring=Scoring.TOPK_SIGMOID, renormalize=False),
           shared_intermediate_size=8192, apply_router_weight_on_input=True),
    Preset("olmoe-1b-7b", "OLMoE-1B-7B", 2048, 1024, 64, 8, RoutingConfig(scoring=Scoring.SOFTMAX, renormalize=False)),
    Preset("glm-4.5", "GLM-4.5", 5120, 1536, 160, 8, _sigmoid_biased(2.5), shared_intermediate_size=1536),
    Preset("kimi-k2", "Kimi-K2", 7168, 2048, 384, 8, _sigmoid_biased(2.827), shared_intermediate_size=2048,
           checkpoint_quant="w4a16-g128"),
)}

DEFAULT_PRESET = "qwen3-30b-a3b"

# CPU scaling budget. At these bounds the fp64 check of 256 tokens takes about a second on 2 cores
# (E32 k8 H256 I96: 1.2 s, torch 2.13) and the reference forward a few ms.
CPU_MAX_HIDDEN = 512
CPU_MAX_EXPERT_MACS = 1 << 20  # top_k * 3 * H * I: multiply-adds of one token's routed experts
CPU_MAX_EXPERTS = 32


@dataclass(frozen=True)
class Scaling:
    factor: int  # hidden, intermediate and shared sizes divided by this
    experts_from: int
    experts_to: int

    def describe(self) -> str:
        experts = f"experts {self.experts_from} -> {self.experts_to}" if self.experts_to != self.experts_from else ""
        parts = [f"hidden, intermediate and shared sizes divided by {self.factor}" if self.factor > 1 else "", experts]
        return ", ".join(p for p in parts if p) or "unchanged"


def scale_down(preset: Preset) -> tuple[Preset, Scaling]:
    """A smaller layer of the same kind: sizes divided by one power of two, experts capped; top_k,
    routing (groups included), activation and biases kept. Returns the new preset and what changed."""
    factor = 1
    while preset.hidden_size // factor > CPU_MAX_HIDDEN or _expert_macs(preset, factor) > CPU_MAX_EXPERT_MACS:
        factor *= 2
    experts = _scaled_experts(preset)
    shared = preset.shared_intermediate_size
    small = dataclasses.replace(
        preset,
        hidden_size=max(1, preset.hidden_size // factor),
        intermediate_size=max(1, preset.intermediate_size // factor),
        shared_intermediate_size=None if shared is None else max(1, shared // factor),
        num_experts=experts,
    )
    return small, Scaling(factor, preset.num_experts, experts)


def _expert_macs(preset: Preset, factor: int) -> int:
    return preset.top_k * 3 * (preset.hidden_size // factor) * (preset.intermediate_size // factor)


def _scaled_experts(preset: Preset) -> int:
    """At most CPU_MAX_EXPERTS, a multiple of num_groups, and enough that top_k experts fit in the
    topk_groups chosen groups."""
    groups = preset.routing.num_groups or 1
    topk_groups = preset.routing.topk_groups or 1
    experts = min(preset.num_experts, CPU_MAX_EXPERTS)
    experts = max(groups, experts - experts % groups)
    while experts < preset.top_k or (groups > 1 and topk_groups * (experts // groups) < preset.top_k):
        experts += groups
    return experts


def describe_routing(cfg: RoutingConfig) -> str:
    """One line, e.g. 'sigmoid + correction bias, 8 groups top-4, renormalized, scale 2.5'."""
    scoring = cfg.scoring.value if isinstance(cfg.scoring, Scoring) else getattr(cfg.scoring, "__name__", "function")
    parts = [scoring + (" + correction bias" if cfg.correction_bias else "")]
    if cfg.num_groups is not None:
        parts.append(f"{cfg.num_groups} groups top-{cfg.topk_groups}")
    parts.append("renormalized" if cfg.renormalize else "not renormalized")
    if cfg.routed_scaling_factor != 1.0:
        parts.append(f"scale {cfg.routed_scaling_factor:g}")
    return ", ".join(parts)
