"""experts_implementation="moekit" on transformers' fine-grained fp8 experts (FP8Experts, what a
DeepSeek-V3 or Qwen3-FP8 checkpoint loads into on a GPU): served as moekit's fp8-block128 on the
module's own e4m3 codes and block scales, against a hand-written dequantize-and-loop."""

import pytest
import torch

fp8 = pytest.importorskip("transformers.integrations.finegrained_fp8")
if not hasattr(fp8, "FP8ExpertsInterface"):
    pytest.skip("this transformers has no fp8 experts registry", allow_module_level=True)
from transformers import Qwen3MoeConfig  # noqa: E402
from transformers.integrations.moe import use_experts_implementation  # noqa: E402

import moekit  # noqa: E402,F401  (installs the registration hook)
from moekit.quant import METHODS  # noqa: E402
from moekit.quant.dequant import fake_quantize_activations  # noqa: E402

E, H, I, K, T = 6, 256, 128, 2, 9
SPEC = METHODS["fp8-block128"].spec


def make_fp8_experts(block=(128, 128), activation_scheme="dynamic", ue8m0=False):
    config = Qwen3MoeConfig(hidden_size=H, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=K,
                            hidden_act="silu")
    config._experts_implementation = "moekit"
    cls = use_experts_implementation(experts_class=fp8.FP8Experts, experts_interface=fp8.ALL_FP8_EXPERTS_FUNCTIONS,
                                     has_bias=False, has_gate=True)
    module = cls(config, block_size=block, activation_scheme=activation_scheme,
                 scale_fmt="ue8m0" if ue8m0 else "float")
    method = METHODS["fp8-block128"]
    for name, (n, k) in (("gate_up_proj", (2 * I, H)), ("down_proj", (H, I))):
        m = method.quantize(torch.randn(E, n, k) / k**0.5)
        getattr(module, name).data = m.data
        scale = m.scale
        if ue8m0:  # powers of two, stored as their e8m0 codes (and the codes requantized to match)
            scale = torch.exp2(torch.ceil(torch.log2(scale)))
            getattr(module, name).data = (m.data.float() * m.scale.repeat_interleave(128, 1).repeat_interleave(128, 2)
                                          [:, :n, :k] / scale.repeat_interleave(128, 1).repeat_interleave(128, 2)
                                          [:, :n, :k]).clamp(-448, 448).to(torch.float8_e4m3fn)
            setattr(module, f"{name}_scale_inv", torch.nn.Parameter(
                (torch.log2(scale) + 127).to(torch.uint8).view(fp8._get_ue8m0_dtype()), requires_grad=False))
        else:
            getattr(module, f"{name}_scale_inv").data = scale
    return module


def dequantized(codes, scale_inv):
    n, k = codes.shape[-2:]
    if scale_inv.dtype != torch.float32:
        scale_inv = torch.exp2(scale_inv.view(torch.uint8).float() - 127)
    return codes.float() * scale_inv.repeat_interleave(128, 1).repeat_interleave(128, 2)[:, :n, :k]


def expected(module, x, ids, weights):
    w13 = dequantized(module.gate_up_proj, module.gate_up_proj_scale_inv).double()
    w2 = dequantized(module.down_proj, module.down_proj_scale_inv).double()
    out = torch.zeros(x.shape[0], H, dtype=torch.float64)
    xq = fake_quantize_activations(x.float(), SPEC).double()
    for t in range(x.shape[0]):
        for j in range(K):
            e = int(ids[t, j])
            gate, up = (w13[e] @ xq[t]).chunk(2)
            h = torch.nn.functional.silu(gate) * up
            hq = fake_quantize_activations(h.float()[None], SPEC).double()[0]
            out[t] += float(weights[t, j]) * (w2[e] @ hq)
    return out


@pytest.mark.parametrize("ue8m0", [False, True])
def test_fp8_experts_served_as_fp8_block128(ue8m0):
    module = make_fp8_experts(ue8m0=ue8m0)
    x = torch.randn(T, H)
    ids = torch.stack([torch.randperm(E)[:K] for _ in range(T)])
    weights = torch.softmax(torch.randn(T, K), -1)
    out = module(x, ids, weights)
    ref = expected(module, x, ids, weights)
    assert out.dtype == x.dtype and out.shape == (T, H)
    assert ((out.double() - ref).norm() / ref.norm()).item() <= 1e-5
    assert module._moekit_kernel[1].weights.quant.scheme == "fp8-block128"


@pytest.mark.parametrize("kwargs,match", [
    (dict(block=(64, 64)), "weight_block_size \\[64, 64\\]"),
    (dict(activation_scheme="static"), "activation_scheme 'static'"),
])
def test_unsupported_fp8_experts_are_refused_naming_the_module(kwargs, match):
    module = make_fp8_experts(**kwargs)
    with pytest.raises(NotImplementedError, match=f"FP8Experts: fp8 experts with .*{match}"):
        module(torch.randn(3, H), torch.zeros(3, K, dtype=torch.long), torch.ones(3, K) / K)


def test_patch_swaps_a_block_with_fp8_experts_for_a_quantized_layer():
    # a tiny Qwen3-MoE whose experts are transformers' FP8Experts (what a Qwen3-FP8 checkpoint loads
    # into on a GPU): moekit.patch builds an fp8-block128 moekit.MoE on the block's own codes
    from _tiny_models import moe_blocks, tiny_model

    from moekit.integrations.hf_patch import MoekitBlock

    model = tiny_model("qwen3_moe")
    config = model.config
    config._experts_implementation = "moekit"
    cls = use_experts_implementation(experts_class=fp8.FP8Experts, experts_interface=fp8.ALL_FP8_EXPERTS_FUNCTIONS,
                                     has_bias=False, has_gate=True)
    method = METHODS["fp8-block128"]
    blocks = moe_blocks(model, "qwen3_moe")
    for _, block in blocks:
        experts = cls(config, block_size=(128, 128))
        for name in ("gate_up_proj", "down_proj"):
            m = method.quantize(getattr(block.experts, name).detach().float())
            getattr(experts, name).data = m.data
            getattr(experts, f"{name}_scale_inv").data = m.scale
        block.experts = experts
    x = torch.randn(2, 5, config.hidden_size)
    with torch.no_grad():
        before = [block(x) for _, block in blocks]
    report = moekit.patch(model)
    assert [r.name for r in report.replaced] == [n for n, _ in blocks] and report.left_alone == ()
    for (name, block), theirs in zip(blocks, before):
        patched = model.get_submodule(name)
        assert isinstance(patched, MoekitBlock) and patched.moe.quant == "fp8-block128"
        assert patched.moe.w13.data_ptr() == block.experts.gate_up_proj.data_ptr()  # the block's codes, no copy
        with torch.no_grad():
            ours = patched(x)
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        assert ((ours.double() - theirs.double()).norm() / theirs.double().norm()).item() <= 1e-6
