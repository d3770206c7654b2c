"""load_hf_state_dict: every checkpoint layout into a moekit.MoE, checked by running the loaded layer
against the Hugging Face block the tensors came from; and the refusals, each naming the tensor."""

import pytest
import torch
from _tiny_models import moe_blocks, tiny_model
from tolerance import assert_close_to_reference

import moekit
from moekit.activations import Activation, ActivationKind
from moekit.integrations.hf_state_dict import load_hf_state_dict
from moekit.routing import RoutingConfig

E, H, I, K = 8, 64, 32, 2

LAYER_KWARGS = {
    # moekit.MoE settings equivalent to each tiny model's blocks
    "mixtral": dict(routing=RoutingConfig("softmax", renormalize=True)),
    "qwen2_moe": dict(routing=RoutingConfig("softmax", renormalize=False), shared_intermediate_size=48,
                      shared_expert_gate=True),
    "qwen3_moe": dict(routing=RoutingConfig("softmax", renormalize=True)),
    "olmoe": dict(routing=RoutingConfig("softmax", renormalize=False)),
    "deepseek_v3": dict(routing=RoutingConfig("sigmoid", renormalize=True, num_groups=4, topk_groups=2,
                                              correction_bias=True, routed_scaling_factor=2.5),
                        shared_intermediate_size=32),
    "gpt_oss": dict(routing=RoutingConfig("topk_softmax", renormalize=False), router_bias=True, expert_bias=True,
                    activation=Activation(ActivationKind.SWIGLUOAI, limit=1.5), gate_up_layout="interleaved"),
}


def make_layer(family, **overrides):
    kwargs = {"dtype": torch.float32, "device": "cpu", **LAYER_KWARGS[family], **overrides}
    return moekit.MoE(E, K, H, I, **kwargs)


def block_of(family):
    model = tiny_model(family)
    name, block = moe_blocks(model, family)[0]
    return model, name, block


def assert_layer_matches_block(layer, block):
    x = torch.randn(2, 5, H)
    with torch.no_grad():
        theirs = block(x)
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        assert_close_to_reference(layer(x), theirs.double(), torch.float32)


def per_expert(sd, names=("w1", "w3", "w2"), prefix=""):
    """Split transformers v5 fused tensors into per-expert modules: Mixtral v4 (w1 gate, w3 up, w2 down)
    or Qwen/DeepSeek (gate_proj, up_proj, down_proj)."""
    out = {k: v for k, v in sd.items() if not k.startswith(prefix + "experts.")}
    gate_up, down = sd[prefix + "experts.gate_up_proj"], sd[prefix + "experts.down_proj"]
    for e in range(gate_up.shape[0]):
        gate, up = gate_up[e].chunk(2, dim=0)
        for name, t in zip(names, (gate, up, down[e])):
            out[f"{prefix}experts.{e}.{name}.weight"] = t.clone()
    return out


@pytest.mark.parametrize("family", list(LAYER_KWARGS))
def test_fused_v5_layout_from_a_whole_model_state_dict(family):
    model, name, block = block_of(family)
    layer = make_layer(family)
    load_hf_state_dict(layer, model.state_dict(), prefix=name + ".")  # other layers' keys are outside the prefix
    assert_layer_matches_block(layer, block)


def test_gpt_oss_interleaved_checkpoint_into_concatenated_layer():
    _, _, block = block_of("gpt_oss")
    layer = make_layer("gpt_oss", gate_up_layout="concatenated")
    load_hf_state_dict(layer, block.state_dict())
    assert_layer_matches_block(layer, block)
    gate_rows = block.experts.gate_up_proj.detach().transpose(1, 2)[:, 0::2]  # checkpoint's even rows
    torch.testing.assert_close(layer.w13.detach()[:, :I], gate_rows, rtol=0, atol=0)


@pytest.mark.parametrize("names", [("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj")])
@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_per_expert_layouts(family, names):
    _, _, block = block_of(family)
    layer = make_layer(family)
    load_hf_state_dict(layer, per_expert(block.state_dict(), names))
    assert_layer_matches_block(layer, block)


def test_per_expert_into_interleaved_layer():
    _, _, block = block_of("mixtral")
    layer = make_layer("mixtral", gate_up_layout="interleaved")
    load_hf_state_dict(layer, per_expert(block.state_dict()))
    assert_layer_matches_block(layer, block)


def test_concatenated_checkpoint_into_interleaved_layer_and_override():
    _, _, block = block_of("qwen3_moe")
    sd = block.state_dict()
    layer = make_layer("qwen3_moe", gate_up_layout="interleaved")
    load_hf_state_dict(layer, sd)
    assert_layer_matches_block(layer, block)
    # An untransposed but interleaved checkpoint, declared by checkpoint_gate_up.
    interleaved = dict(sd, **{"experts.gate_up_proj": layer.w13.detach().clone()})
    concatenated = make_layer("qwen3_moe")
    load_hf_state_dict(concatenated, interleaved, checkpoint_gate_up="interleaved")
    assert_layer_matches_block(concatenated, block)


@pytest.mark.parametrize("per_expert_keys", [False, True])
def test_no_gate_relu2(per_expert_keys):
    up, down = torch.randn(E, I, H) / H**0.5, torch.randn(E, H, I) / I**0.5
    sd = {"gate.weight": torch.randn(E, H)}
    if per_expert_keys:
        sd.update({f"experts.{e}.up_proj.weight": up[e] for e in range(E)})
        sd.update({f"experts.{e}.down_proj.weight": down[e] for e in range(E)})
    else:
        sd.update({"experts.up_proj": up, "experts.down_proj": down})
    layer = moekit.MoE(E, K, H, I, activation="relu2", dtype=torch.float32, device="cpu")
    load_hf_state_dict(layer, sd)
    x = torch.randn(9, H)
    weights, ids = moekit.route(x @ sd["gate.weight"].T, K)
    ref = moekit.fused_moe_spec(x, up, down, weights, ids, "relu2")
    assert_close_to_reference(layer(x), ref, torch.float32)


def test_converts_dtype_and_composes_kernel(monkeypatch):
    _, _, block = block_of("olmoe")
    layer = make_layer("olmoe", dtype=torch.bfloat16)
    calls = []
    monkeypatch.setattr(layer, "compose_kernel", lambda: calls.append(1))
    load_hf_state_dict(layer, block.state_dict())
    assert calls == [1]
    assert layer.w13.dtype == torch.bfloat16
    torch.testing.assert_close(layer.w13.float(), block.experts.gate_up_proj.detach().bfloat16().float())


# --- refusals: each names the tensor (and the expected shape) ---------------------------------------

def test_missing_tensor():
    _, _, block = block_of("deepseek_v3")
    for key in ("gate.weight", "gate.e_score_correction_bias", "experts.down_proj", "shared_experts.up_proj.weight"):
        sd = dict(block.state_dict())
        del sd[key]
        with pytest.raises(ValueError, match=rf"missing tensor 'mlp\.{key}'.*shape"):
            load_hf_state_dict(make_layer("deepseek_v3"), {"mlp." + k: v for k, v in sd.items()}, prefix="mlp.")


def test_missing_per_expert_tensor_and_missing_experts():
    _, _, block = block_of("mixtral")
    sd = per_expert(block.state_dict())
    del sd["experts.5.w3.weight"]
    with pytest.raises(ValueError, match=r"missing tensor 'experts\.5\.w3\.weight'"):
        load_hf_state_dict(make_layer("mixtral"), sd)
    with pytest.raises(ValueError, match=r"missing the experts' weights.*experts\.gate_up_proj \[8, 64, 64\]"):
        load_hf_state_dict(make_layer("mixtral"), {"gate.weight": block.gate.weight})


def test_extra_tensor():
    _, _, block = block_of("mixtral")
    sd = per_expert(block.state_dict())
    extra = dict(sd, **{"experts.8.w1.weight": torch.zeros(I, H)})  # a ninth expert
    with pytest.raises(ValueError, match=r"unexpected tensor.*experts\.8\.w1\.weight"):
        load_hf_state_dict(make_layer("mixtral"), extra)
    both = dict(sd, **{"experts.down_proj": block.experts.down_proj})  # two layouts at once
    with pytest.raises(ValueError, match=r"both fused \(experts\.down_proj\) and per-expert \(experts\.0\.w1\.weight"):
        load_hf_state_dict(make_layer("mixtral"), both)
    layer = make_layer("mixtral")
    load_hf_state_dict(layer, extra, strict=False)  # ignored when not strict
    assert_layer_matches_block(layer, block)


@pytest.mark.parametrize("key, bad, expected", [
    ("gate.weight", (8, 63), r"\(8, 64\)"),  # router
    ("experts.down_proj", (8, 64, 31), r"\(8, 64, 32\)"),  # fused down
    ("experts.gate_up_proj", (8, 65, 64), r"\(8, 64, 64\)"),  # fused gate/up
    ("shared_expert_gate.weight", (2, 64), r"\(1, 64\)"),  # Qwen2 shared gate
])
def test_mis_shaped_tensor(key, bad, expected):
    _, _, block = block_of("qwen2_moe")
    sd = dict(block.state_dict(), **{key: torch.zeros(bad)})
    with pytest.raises(ValueError, match=rf"'{key}' must have shape {expected}"):
        load_hf_state_dict(make_layer("qwen2_moe"), sd)


def test_mis_shaped_transposed_gpt_oss_tensor():
    _, _, block = block_of("gpt_oss")
    sd = dict(block.state_dict(), **{"experts.gate_up_proj_bias": torch.zeros(E, 2 * I + 1)})
    with pytest.raises(ValueError, match=r"'experts\.gate_up_proj_bias' must have shape \(8, 64\)"):
        load_hf_state_dict(make_layer("gpt_oss"), sd)
