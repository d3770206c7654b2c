"""experts_implementation="moekit": transformers' experts modules, every layout their registry
describes, against the float64 spec built by hand from the module's own tensors."""

import pytest
import torch
import transformers
from tolerance import assert_close_to_reference
from torch import nn
from transformers.activations import ACT2FN
from transformers.integrations.moe import use_experts_implementation

import moekit
from moekit.activations import Activation, ActivationKind, GateUpLayout
from moekit.integrations.hf_experts import moekit_experts_forward, read_experts

E, H, I, K, T = 8, 48, 24, 2, 13


def make_experts(*, has_gate=True, concatenated=True, transposed=False, bias=False, act="silu", gate=None,
                 limit=1.5, alpha=1.702, post_norm=False):
    """A hand-made experts module decorated like transformers' own, with random O(1) weights."""

    # has_post_expert_norm is set by hand below: older transformers (5.17) lack the decorator argument.
    @use_experts_implementation(has_gate=has_gate, is_concatenated=concatenated, is_transposed=transposed,
                                has_bias=bias)
    class HandMadeExperts(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.num_experts = E
            rows = 2 * I if has_gate else I
            first = "gate_up_proj" if has_gate else "up_proj"
            shape13 = (E, H, rows) if transposed else (E, rows, H)
            shape2 = (E, I, H) if transposed else (E, H, I)
            setattr(self, first, nn.Parameter(torch.randn(shape13) / H**0.5))
            self.down_proj = nn.Parameter(torch.randn(shape2) / I**0.5)
            if bias:
                setattr(self, f"{first}_bias", nn.Parameter(0.1 * torch.randn(E, rows)))
                self.down_proj_bias = nn.Parameter(0.1 * torch.randn(E, H))
            self.act_fn = ACT2FN[act]
            self.alpha, self.limit = alpha, limit

    if gate is not None:
        HandMadeExperts._apply_gate = gate
    config = transformers.PretrainedConfig()
    config._experts_implementation = "moekit"
    module = HandMadeExperts(config)
    module.has_post_expert_norm = post_norm
    return module


def swigluoai_gate(interleaved: bool):
    """gpt-oss's _apply_gate, written out (interleaved) or for split gate/up rows."""
    def _apply_gate(self, gate_up):
        gate, up = (gate_up[..., ::2], gate_up[..., 1::2]) if interleaved else gate_up.chunk(2, dim=-1)
        gate = gate.clamp(max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * self.alpha))
    return _apply_gate


def spec_by_hand(module, x, ids, weights, activation, layout):
    """The float64 spec from the module's raw tensors, transposing and picking names here, by hand."""
    first = "gate_up_proj" if module.has_gate else "up_proj"
    w13, w2 = getattr(module, first).detach(), module.down_proj.detach()
    if module.is_transposed:
        w13, w2 = w13.transpose(1, 2), w2.transpose(1, 2)
    b13 = getattr(module, f"{first}_bias").detach() if module.has_bias else None
    b2 = module.down_proj_bias.detach() if module.has_bias else None
    return moekit.fused_moe_spec(x, w13, w2, weights, ids, activation, b13, b2, gate_up_layout=layout)


def routed(tokens=T, dtype=torch.float32):
    x = torch.randn(tokens, H).to(dtype)
    weights, ids = moekit.route(torch.randn(tokens, E), K)
    return x, ids.long(), weights.to(dtype)  # as transformers hands them over: int64 ids, model-dtype weights


SWIGLUOAI = Activation(ActivationKind.SWIGLUOAI, alpha=1.702, limit=1.5)
CASES = [
    # make_experts kwargs, moekit activation, layout -- layout the registry describes
    (dict(), "silu", "concatenated"),  # Mixtral, Qwen, DeepSeek, OLMoE
    (dict(act="gelu"), "gelu", "concatenated"),  # gelu act_fn
    (dict(act="swish"), "silu", "concatenated"),  # nn.SiLU act_fn
    (dict(concatenated=False), "silu", "interleaved"),  # interleaved alone
    (dict(concatenated=False, transposed=True, bias=True, gate=swigluoai_gate(True)), SWIGLUOAI, "interleaved"),  # gpt-oss
    (dict(transposed=True, bias=True, gate=swigluoai_gate(False)), SWIGLUOAI, "concatenated"),  # split swigluoai
    (dict(has_gate=False, act="relu2"), "relu2", "concatenated"),  # no gate (Nemotron-H style)
    (dict(has_gate=False, act="relu2", transposed=True, bias=True), "relu2", "concatenated"),  # no gate, transposed, bias
]


@pytest.mark.parametrize("kwargs, activation, layout", CASES)
def test_registry_layouts_match_spec(kwargs, activation, layout):
    module = make_experts(**kwargs)
    x, ids, weights = routed()
    out = module(x, ids, weights)  # through transformers' dispatch to the registered "moekit"
    ref = spec_by_hand(module, x, ids, weights, activation, GateUpLayout(layout))
    assert_close_to_reference(out, ref, torch.float32)
    seen = read_experts(module)
    assert seen.activation == moekit.activations.parse_activation(activation)
    assert seen.gate_up_layout is GateUpLayout(layout)


def test_gpt_oss_experts_module_matches_spec():
    config = transformers.GptOssConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, swiglu_limit=1.5)
    config._experts_implementation = "moekit"
    module = transformers.models.gpt_oss.modeling_gpt_oss.GptOssExperts(config)
    module.limit = 1.5  # transformers 5.17 ignores config.swiglu_limit (hard-coded 7.0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.2)
    x, ids, weights = routed()
    ref = spec_by_hand(module, x, ids, weights, SWIGLUOAI, GateUpLayout.INTERLEAVED)
    assert_close_to_reference(moekit_experts_forward(module, x, ids, weights), ref, torch.float32)


def test_views_not_copies_and_kernel_cached():
    module = make_experts(concatenated=False, transposed=True, bias=True, gate=swigluoai_gate(True))
    x, ids, weights = routed()
    moekit_experts_forward(module, x, ids, weights)
    _, kernel = module._moekit_kernel
    assert kernel.weights.w13.data_ptr() == module.gate_up_proj.data_ptr()
    assert kernel.weights.w13.shape == (E, 2 * I, H)  # a transposed view of [E, H, 2I]
    assert kernel.weights.w2.data_ptr() == module.down_proj.data_ptr()
    assert kernel.weights.w13_bias.data_ptr() == module.gate_up_proj_bias.data_ptr()
    moekit_experts_forward(module, x, ids, weights)
    assert module._moekit_kernel[1] is kernel  # reused
    assert "_moekit_kernel" not in module.state_dict() and set(module.state_dict()) == {
        "gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"}


def test_move_rebuilds_kernel_and_output_keeps_input_dtype():
    module = make_experts()
    x, ids, weights = routed()
    moekit_experts_forward(module, x, ids, weights)
    first = module._moekit_kernel[1]
    module.to(torch.bfloat16)
    out = moekit_experts_forward(module, x.bfloat16(), ids.int(), weights.bfloat16())  # int32 ids too
    assert module._moekit_kernel[1] is not first
    assert out.dtype == torch.bfloat16
    ref = spec_by_hand(module, x.bfloat16(), ids, weights.bfloat16(), "silu", GateUpLayout.CONCATENATED)
    assert_close_to_reference(out, ref, torch.bfloat16)
    # Activations in another dtype than the weights (autocast) come back in their own dtype.
    assert moekit_experts_forward(module, x, ids, weights).dtype == torch.float32


def test_zero_tokens():
    module = make_experts()
    x, ids, weights = routed(tokens=0)
    assert moekit_experts_forward(module, x, ids, weights).shape == (0, H)


@pytest.mark.parametrize("kwargs, match", [
    (dict(post_norm=True), "has_post_expert_norm"),  # a norm after each expert
    (dict(act="gelu_pytorch_tanh"), "GELUTanh"),  # tanh-approximated gelu: no moekit activation
    (dict(has_gate=False, act="silu"), "relu2"),  # no gate needs relu2
    (dict(gate=lambda self, gu: torch.nn.functional.silu(gu.chunk(2, -1)[0].clamp(max=self.limit))
          * gu.chunk(2, -1)[1]), "_apply_gate"),  # a clamped SiLU (DeepSeek-V4 style) is not swigluoai
])
def test_refuses_what_it_cannot_do(kwargs, match):
    module = make_experts(**kwargs)
    x, ids, weights = routed()
    with pytest.raises(NotImplementedError, match=match):
        moekit_experts_forward(module, x, ids, weights)


def test_refuses_expert_parallel_and_undecorated_modules():
    module = make_experts()
    module._is_expert_parallel = True
    with pytest.raises(NotImplementedError, match="expert parallelism"):
        moekit_experts_forward(module, *routed())
    with pytest.raises(TypeError, match="use_experts_implementation"):
        moekit_experts_forward(nn.Linear(2, 2), *routed())


def test_registered_in_transformers():
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    assert ALL_EXPERTS_FUNCTIONS["moekit"] is moekit_experts_forward


def test_from_pretrained_with_experts_implementation(tmp_path):
    from _tiny_models import greedy, tiny_model

    model = tiny_model("qwen3_moe")
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, experts_implementation="moekit",
                                                               dtype=torch.float32)
    assert loaded.config._experts_implementation == "moekit"
    assert greedy(loaded, 8).tolist() == greedy(model, 8).tolist()
    assert all("_moekit_kernel" in m.__dict__ for m in loaded.modules() if type(m).__name__ == "Qwen3MoeExperts")


def test_gradients_reach_the_module_parameters():
    """Training through experts_implementation="moekit" gives transformers' own (batched_mm) gradients,
    also on a second step with the cached kernel."""
    from transformers.integrations.moe import batched_mm_experts_forward

    module = make_experts(concatenated=False, transposed=True, bias=True, gate=swigluoai_gate(True))
    x, ids, weights = routed()
    for _ in range(2):
        grads = []
        for forward in (moekit_experts_forward, batched_mm_experts_forward):
            module.zero_grad()
            forward(module, x, ids, weights).square().sum().backward()
            grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            module.down_proj.mul_(1.1)  # an optimizer step, in place: the cached views see it


def test_refuses_quantized_weights():
    module = make_experts().to(torch.float8_e4m3fn)
    with pytest.raises(NotImplementedError, match="float8_e4m3fn"):
        read_experts(module)
