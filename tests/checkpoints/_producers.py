"""Tiny MoE checkpoints written by each scheme's own producer, for moekit.load's tests.

- compressed-tensors: a small torch module named like real checkpoints
  (``model.layers.0.mlp.experts.3.gate_proj``) gets a QuantizationConfig applied with
  ``apply_quantization_config``, its weight scales computed by the package's ``calculate_qparams``
  (from min/max over each scale block: what llm-compressor's min-max observer feeds it), then
  ``ModelCompressor.from_pretrained_model(...).compress_model`` and ``update_config`` write it.
- HF fine-grained fp8 (DeepSeek-V3 / Qwen3-FP8): transformers' own ``Fp8Quantize`` op.
- gpt-oss mxfp4: compressed-tensors' MXFP4 compressor quantizes each expert matrix (OCP mxfp4, the
  bytes gpt-oss ships), laid out as gpt-oss's ``*_blocks`` / ``*_scales``; the tests read them
  back with transformers' ``convert_moe_packed_tensors``.

Each writer returns the float weights the producer's own dequantization gives (compressed-tensors'
``decompress_model``, transformers' dequantizers): the oracle the loaded layer is compared with.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

E, H, I, TOP_K = 4, 128, 128, 2

os.environ.setdefault("TQDM_DISABLE", "1")  # compressed-tensors' progress bars


@dataclass
class Written:
    """A checkpoint on disk and its producer's dequantized weights."""

    path: Path
    prefix: str  # the MoE block's module name, e.g. "model.layers.0.mlp"
    w13: torch.Tensor  # [E, 2I, H] float32, gate rows then up rows (gpt-oss: interleaved)
    w2: torch.Tensor  # [E, H, I]
    dense: dict[str, torch.Tensor]  # router / shared-expert weights as the producer dequantizes them
    original: dict[str, torch.Tensor] | None = None  # the float weights before quantization
    blocks: list | None = None  # every MoE block of the checkpoint (write_compressed_tensors)


# --- the module -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Naming:
    """How a family names its MoE block's modules."""

    block: str = "mlp"
    projections: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")  # gate, up, down
    shared: str = "shared_experts"
    shared_gate: bool = False  # Qwen2-MoE's shared_expert_gate [1, H]


QWEN = Naming()
MIXTRAL = Naming(block="block_sparse_moe", projections=("w1", "w3", "w2"))
QWEN2_MOE = Naming(shared="shared_expert", shared_gate=True)


class _Expert(nn.Module):
    def __init__(self, h: int, i: int, names=QWEN.projections):
        super().__init__()
        self.names = names
        for name, (n, k) in zip(names, ((i, h), (i, h), (h, i))):
            setattr(self, name, nn.Linear(k, n, bias=False))


class _Block(nn.Module):
    def __init__(self, e: int, h: int, i: int, shared: int | None, correction_bias: bool, naming: Naming):
        super().__init__()
        self.gate = nn.Linear(h, e, bias=False)
        if correction_bias:
            self.gate.register_buffer("e_score_correction_bias", torch.randn(e) * 0.1)
        self.experts = nn.ModuleList(_Expert(h, i, naming.projections) for _ in range(e))
        if shared:
            setattr(self, naming.shared, _Expert(h, shared))
        if naming.shared_gate:
            self.shared_expert_gate = nn.Linear(h, 1, bias=False)


def tiny_model(e: int, h: int, i: int, shared: int | None = None, correction_bias: bool = False,
               naming: Naming = QWEN, dense_layers: int = 0, moe_layers: int = 1) -> nn.Module:
    """``model.layers.{n}.mlp.{gate, experts.{e}.{gate,up,down}_proj, shared_experts.*}`` (names by
    ``naming``), after ``dense_layers`` layers with a dense ``mlp.{gate,up,down}_proj``."""
    inner, model = nn.Module(), nn.Module()
    inner.layers = nn.ModuleList(nn.Module() for _ in range(dense_layers + moe_layers))
    for n, layer in enumerate(inner.layers):
        if n < dense_layers:
            layer.mlp = _Expert(h, i)
        else:
            setattr(layer, naming.block, _Block(e, h, i, shared, correction_bias, naming))
    model.model = inner
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5)
    return model


def write_config(path: Path, config) -> None:
    path.mkdir(parents=True, exist_ok=True)
    config.to_json_file(str(path / "config.json"))


def qwen3_moe_config(e=E, h=H, i=I, **extra):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(hidden_size=h, moe_intermediate_size=i, num_experts=e, num_experts_per_tok=TOP_K,
                          num_hidden_layers=1, norm_topk_prob=True, vocab_size=32, dtype="float32", **extra)


def deepseek_v3_config(e=E, h=H, i=I, **extra):
    from transformers import DeepseekV3Config

    return DeepseekV3Config(hidden_size=h, moe_intermediate_size=i, n_routed_experts=e, num_experts_per_tok=TOP_K,
                            n_group=2, topk_group=1, n_shared_experts=1, num_hidden_layers=1, first_k_dense_replace=0,
                            vocab_size=32, dtype="float32", **extra)


# --- compressed-tensors ------------------------------------------------------------------------

def _minmax(w: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``w`` [N, K] over each scale block of ``args`` (a min-max observer)."""
    n, k = w.shape
    if args.strategy == "tensor":
        return w.amin().reshape(1), w.amax().reshape(1)
    if args.strategy == "channel":
        return w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    if args.strategy in ("group", "tensor_group"):
        g = w.reshape(n, k // args.group_size, args.group_size)
        return g.amin(-1), g.amax(-1)
    bn, bk = args.block_structure
    b = nn.functional.pad(w, (0, -k % bk, 0, -n % bn))
    b = b.reshape(b.shape[0] // bn, bn, b.shape[1] // bk, bk)
    return b.amin((1, 3)), b.amax((1, 3))


def calibration_inputs(model: nn.Module, tokens: int = 64) -> dict[str, torch.Tensor]:
    """What each expert projection sees for random tokens sent to every expert (float weights)."""
    x = torch.randn(tokens, next(model.parameters()).shape[-1])
    out = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, _Expert):
                gate, up, down = m.names
                out |= {f"{name}.{gate}": x, f"{name}.{up}": x,
                        f"{name}.{down}": nn.functional.silu(getattr(m, gate)(x)) * getattr(m, up)(x)}
    return out


def calibrate(module: nn.Linear, global_scale: torch.Tensor | None = None, x: torch.Tensor | None = None) -> None:
    """Weight (and static input) scales of one quantized module, with compressed-tensors' functions."""
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    scheme, w = module.quantization_scheme, module.weight.data
    if global_scale is not None:  # nvfp4: one fp32 global scale per matrix
        module.weight_global_scale.data.copy_(global_scale)
    scale, zero = calculate_qparams(*_minmax(w, scheme.weights), scheme.weights, global_scale=global_scale)
    module.weight_scale.data = scale
    if hasattr(module, "weight_zero_point"):
        module.weight_zero_point.data = zero
    act = scheme.input_activations
    if act is not None and not act.dynamic:  # static input scale from the calibration inputs' range
        module.input_scale.data = calculate_qparams(x.amin().reshape(1), x.amax().reshape(1), act)[0]


def ct_scheme(preset: str | None = None, targets=("Linear",), input_activations=None, **weights):
    """A compressed-tensors QuantizationScheme: a preset, with weight arguments overridden."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    fields = dict(PRESET_SCHEMES[preset]) if preset else {}
    if input_activations is not None:
        fields["input_activations"] = QuantizationArgs(**input_activations)
    if weights:
        base = fields["weights"].model_dump() if "weights" in fields else {}
        fields["weights"] = QuantizationArgs(**{**base, **weights})
    return QuantizationScheme(targets=list(targets), **fields)


def write_compressed_tensors(path: Path, scheme, config=None, shared: int | None = None,
                             correction_bias: bool = False, e=E, h=H, i=I, naming: Naming = QWEN,
                             dense_layers: int = 0, moe_layers: int = 1) -> Written:
    """Quantize a tiny model with ``scheme`` (the routers ignored) and save it as compressed-tensors
    does. Returns the first MoE block; ``written.blocks`` has them all."""
    from compressed_tensors import ModelCompressor, QuantizationConfig
    from compressed_tensors.quantization import apply_quantization_config
    from safetensors.torch import save_file

    model = tiny_model(e, h, i, shared, correction_bias, naming, dense_layers, moe_layers)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = calibration_inputs(model)
    config_groups = {"group_0": scheme}
    ignore = ["re:.*(mlp|block_sparse_moe).gate$", "re:.*shared_expert_gate$"]
    apply_quantization_config(model, QuantizationConfig(config_groups=config_groups, ignore=ignore),
                              show_progress=False)
    for name, module in model.named_modules():
        if isinstance(module, _Expert) and scheme.weights.strategy == "tensor_group":
            _calibrate_fused_global(module)
        elif getattr(module, "quantization_scheme", None) is not None and not _in_fused(model, module, scheme):
            calibrate(module, x=inputs.get(name))
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    write_config(path, config or qwen3_moe_config(e, h, i))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    compressor.update_config(str(path))
    compressor.decompress_model(model)  # the producer's own dequantization: the oracle
    blocks = [_written(path, model, n, naming) for n in range(dense_layers, dense_layers + moe_layers)]
    for written in blocks:
        written.original, written.blocks = original, blocks
    return blocks[0]


def _calibrate_fused_global(expert: _Expert) -> None:
    """nvfp4: gate and up share the smaller of their global scales, as llm-compressor's
    ``update_fused_layer_weight_global_scales`` makes them (vLLM and moekit run them as one matrix)."""
    from compressed_tensors.quantization.utils.helpers import generate_gparam

    gate, up, down = (getattr(expert, name) for name in expert.names)
    fused = torch.min(*(generate_gparam(m.weight.amin(), m.weight.amax()) for m in (gate, up)))
    for m in (gate, up):
        calibrate(m, fused)
    calibrate(down, generate_gparam(down.weight.amin(), down.weight.amax()))


def _in_fused(model: nn.Module, module: nn.Module, scheme) -> bool:
    """Calibrated with its expert (nvfp4's fused global scale)."""
    return scheme.weights.strategy == "tensor_group" and any(
        module in x.children() for x in model.modules() if isinstance(x, _Expert))


def _written(path: Path, model: nn.Module, layer: int = 0, naming: Naming = QWEN) -> Written:
    block = getattr(model.model.layers[layer], naming.block)
    gate, up, down = naming.projections
    w = lambda name: torch.stack([getattr(x, name).weight.data.float() for x in block.experts])  # noqa: E731
    dense = {"router.weight": block.gate.weight.data.float()}
    shared = getattr(block, naming.shared, None)
    if shared is not None:
        dense |= {f"shared_experts.{p}.weight": getattr(shared, p).weight.data.float()
                  for p in ("gate_proj", "up_proj", "down_proj")}
    if naming.shared_gate:
        dense["shared_experts.shared_expert_gate.weight"] = block.shared_expert_gate.weight.data.float()
    return Written(path, f"model.layers.{layer}.{naming.block}", torch.cat([w(gate), w(up)], dim=1), w(down), dense)


def edit_config(path: Path, edit) -> None:
    """Apply ``edit(config_dict)`` to a written checkpoint's config.json."""
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


def edit_tensors(path: Path, edit) -> None:
    """Apply ``edit(state_dict)`` (in place) to a written checkpoint's tensors."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def rewrite_act_order(written: Written, group: int, seed: int = 0) -> Written:
    """Turn a w4a16 group checkpoint into GPTQ act-order's layout, as compressed-tensors < 0.20 wrote
    it (0.20 removed ``actorder: group`` and its ``weight_g_idx``): each projection's columns are
    grouped in a permuted order, quantized with the package's ``calculate_qparams`` / ``quantize``,
    packed with its ``pack_to_int32`` in the original column order, and ``weight_g_idx`` [K] names
    each column's scale group. Returns the dequantized weights as that layout defines them."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group)
    gen = torch.Generator().manual_seed(seed)
    dequantized, perms = {}, {}

    def edit(tensors: dict) -> None:
        for name, w in written.original.items():
            if ".experts." not in name or not name.endswith(".weight"):
                continue
            module = name.removesuffix(".weight")
            n, k = w.shape
            # GPTQ orders columns by its Hessian of the layer input, which gate and up share
            expert_input = module.replace(".up_proj", ".gate_proj")
            perm = perms.setdefault(expert_input, torch.randperm(k, generator=gen))
            scale, zero = calculate_qparams(*_minmax(w[:, perm], args), args)
            codes = quantize(w[:, perm], scale, zero, args, dtype=torch.int8)[:, torch.argsort(perm)]
            g_idx = torch.argsort(perm) // group  # column k was quantized in group g_idx[k]
            tensors[f"{module}.weight_packed"] = pack_to_int32(codes, 4)
            tensors[f"{module}.weight_scale"] = scale
            tensors[f"{module}.weight_g_idx"] = g_idx.to(torch.int32)
            dequantized[module] = codes.float() * scale[:, g_idx]

    edit_tensors(written.path, edit)
    edit_config(written.path, lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(
        actorder="group"))
    stack = lambda p: torch.stack([dequantized[f"{written.prefix}.experts.{x}.{p}"] for x in range(E)])  # noqa: E731
    written.w13 = torch.cat([stack("gate_proj"), stack("up_proj")], dim=1)
    written.w2 = stack("down_proj")
    return written


# --- Hugging Face fine-grained fp8 (DeepSeek-V3 / Qwen3-FP8) -------------------------------------

DEEPSEEK_FP8_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                       "weight_block_size": [128, 128]}  # as DeepSeek-V3's config.json has it


def write_hf_fp8(path: Path, config, shared: int | None = None, correction_bias: bool = False,
                 e=E, h=H, i=I) -> Written:
    """Every expert and shared-expert projection through transformers' own ``Fp8Quantize`` (the
    router stays float, as DeepSeek-V3 ships it); the oracle is transformers' ``_dequantize_fp8_weight``."""
    from safetensors.torch import save_file
    from transformers import FineGrainedFP8Config
    from transformers.integrations.finegrained_fp8 import Fp8Quantize, _dequantize_fp8_weight

    class _Quantizer:  # what Fp8Quantize reads from transformers' HfQuantizer
        quantization_config = FineGrainedFP8Config(weight_block_size=(128, 128))

    model = tiny_model(e, h, i, shared, correction_bias)
    op, tensors = Fp8Quantize(_Quantizer()), {}
    for name, t in model.state_dict().items():
        quantize = "experts." in name and name.endswith("_proj.weight")
        tensors |= op._quantize_one(name, t) if quantize else {name: t}
    write_config(path, config)
    edit_config(path, lambda c: c.update(quantization_config=DEEPSEEK_FP8_CONFIG))
    save_file(tensors, str(path / "model.safetensors"))
    with torch.no_grad():  # put the producer's dequantized weights back into the module: the oracle
        for name, p in model.named_parameters():
            scale = tensors.get(name.removesuffix(".weight") + ".weight_scale_inv")
            if scale is not None:
                p.copy_(_dequantize_fp8_weight(tensors[name], scale, [128, 128], torch.float32))
    return _written(path, model)


# --- gpt-oss mxfp4 ---------------------------------------------------------------------------------

GPT_OSS_MXFP4_CONFIG = {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                   "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"}


def gpt_oss_config(e=E, h=H, i=I):
    from transformers import GptOssConfig

    return GptOssConfig(hidden_size=h, intermediate_size=i, num_local_experts=e, num_experts_per_tok=TOP_K,
                        num_hidden_layers=1, vocab_size=32, head_dim=32, num_attention_heads=4,
                        num_key_value_heads=2, dtype="float32")


def _mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] -> (packed bytes [N, K/2], e8m0 scales [N, K/32]) by compressed-tensors' MXFP4 compressor."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    scheme = QuantizationScheme(targets=["Linear"], **PRESET_SCHEMES["MXFP4A16"])
    scale, _ = calculate_qparams(*_minmax(w, scheme.weights), scheme.weights)
    out = BaseCompressor.get_value_from_registry("mxfp4-pack-quantized").compress(
        {"weight": w, "weight_scale": scale}, scheme)
    return out["weight_packed"], out["weight_scale"]


def write_gpt_oss_mxfp4(path: Path, e=E, h=H, i=I) -> Written:
    """gpt-oss's block: router with bias, experts as ``*_blocks`` / ``*_scales`` + float biases, gate
    and up rows interleaved. The oracle is transformers' ``convert_moe_packed_tensors`` (its gpt-oss
    mxfp4 dequantization), transposed back to [E, N, K]."""
    from safetensors.torch import save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    p = "model.layers.0.mlp."
    gate_up = torch.randn(e, 2 * i, h) / h**0.5  # rows: gate0, up0, gate1, ...
    down = torch.randn(e, h, i) / i**0.5
    tensors = {f"{p}router.weight": torch.randn(e, h) / h**0.5, f"{p}router.bias": torch.randn(e) * 0.1,
               f"{p}experts.gate_up_proj_bias": torch.randn(e, 2 * i) * 0.02,
               f"{p}experts.down_proj_bias": torch.randn(e, h) * 0.02}
    for name, w in (("gate_up_proj", gate_up), ("down_proj", down)):
        packed, scales = zip(*(_mxfp4(w[x]) for x in range(e)))
        n, k = w.shape[1:]
        tensors[f"{p}experts.{name}_blocks"] = torch.stack(packed).reshape(e, n, k // 32, 16)
        tensors[f"{p}experts.{name}_scales"] = torch.stack(scales)
    write_config(path, gpt_oss_config(e, h, i))
    edit_config(path, lambda c: c.update(quantization_config=GPT_OSS_MXFP4_CONFIG))
    save_file(tensors, str(path / "model.safetensors"))
    dq = {name: convert_moe_packed_tensors(tensors[f"{p}experts.{name}_blocks"], tensors[f"{p}experts.{name}_scales"],
                                           dtype=torch.float32).transpose(1, 2)
          for name in ("gate_up_proj", "down_proj")}
    dense = {"router.weight": tensors[f"{p}router.weight"], "router.bias": tensors[f"{p}router.bias"],
             "w13_bias": tensors[f"{p}experts.gate_up_proj_bias"], "w2_bias": tensors[f"{p}experts.down_proj_bias"]}
    return Written(path, p.removesuffix("."), dq["gate_up_proj"], dq["down_proj"], dense)


def mixtral_config(e=E, h=H, i=I, layers=1):
    from transformers import MixtralConfig

    return MixtralConfig(hidden_size=h, intermediate_size=i, num_local_experts=e, num_experts_per_tok=TOP_K,
                         num_hidden_layers=layers, vocab_size=32, dtype="float32")


def qwen2_moe_config(e=E, h=H, i=I, shared=I, layers=1, mlp_only_layers=()):
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(hidden_size=h, moe_intermediate_size=i, num_experts=e, num_experts_per_tok=TOP_K,
                          shared_expert_intermediate_size=shared, num_hidden_layers=layers,
                          mlp_only_layers=list(mlp_only_layers), vocab_size=32, dtype="float32")
