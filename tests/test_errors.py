"""One pytest.raises per input rule of docs/errors.md."""

import pytest
import torch

import moekit
from moe_inputs import make_inputs


@pytest.fixture
def inp():
    return make_inputs(6, 4, 2, 8, 6)


def fused(inp, **overrides):
    args = dict(x=inp.x, w13=inp.w13, w2=inp.w2, topk_weights=inp.topk_weights, topk_ids=inp.topk_ids)
    args.update(overrides)
    return moekit.fused_moe(**args)


# --- fused_moe ---------------------------------------------------------------------------------

def test_x_not_a_tensor(inp):
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fused(inp, x=inp.x.tolist())


def test_x_wrong_rank(inp):
    with pytest.raises(ValueError, match=r"x must be 2-D, got shape \(1, 6, 8\)"):
        fused(inp, x=inp.x[None])


def test_x_integer_dtype(inp):
    with pytest.raises(TypeError, match="x must have dtype in"):
        fused(inp, x=inp.x.to(torch.int32))


def test_weight_dtype_mismatch(inp):
    with pytest.raises(TypeError, match=r"w13 must have dtype in \(torch.float32\), got torch.bfloat16"):
        fused(inp, w13=inp.w13.bfloat16())


def test_w13_wrong_shape(inp):
    with pytest.raises(ValueError, match=r"w13 must have shape \(4, 12, 8\), got \(4, 6, 8\)"):
        fused(inp, w13=inp.w13[:, :6])


def test_w2_hidden_mismatch(inp):
    with pytest.raises(ValueError, match=r"w2 must have shape \(4, 8, 6\), got \(4, 7, 6\)"):
        fused(inp, w2=inp.w2[:, :7])


def test_topk_shapes_disagree(inp):
    with pytest.raises(ValueError, match=r"topk_weights must have shape \(6, 2\)"):
        fused(inp, topk_weights=inp.topk_weights[:, :1])


def test_topk_ids_float(inp):
    with pytest.raises(TypeError, match="topk_ids must have dtype in"):
        fused(inp, topk_ids=inp.topk_ids.float())


def test_expert_id_out_of_range(inp):
    ids = inp.topk_ids.clone()
    ids[2, 1] = 4
    with pytest.raises(ValueError, match=r"topk_ids must lie in \[0, 4\), got values in \[0, 4\]"):
        fused(inp, topk_ids=ids)


def test_negative_expert_id(inp):
    ids = inp.topk_ids.clone()
    ids[0, 0] = -1
    with pytest.raises(ValueError, match=r"topk_ids must lie in \[0, 4\)"):
        fused(inp, topk_ids=ids)


def test_top_k_above_num_experts():
    inp = make_inputs(3, 2, 2, 8, 6)
    ids = torch.zeros(3, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"top_k must be <= num_experts \(2\), got 3"):
        fused(inp, topk_ids=ids, topk_weights=torch.ones(3, 3))


def test_bias_wrong_shape(inp):
    with pytest.raises(ValueError, match=r"w2_bias must have shape \(4, 8\)"):
        fused(inp, w2_bias=torch.zeros(4, 9))


def test_unknown_activation(inp):
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        moekit.fused_moe(inp.x, inp.w13, inp.w2, inp.topk_weights, inp.topk_ids, activation="swish")


def test_unknown_gate_up_layout(inp):
    with pytest.raises(ValueError, match="'diagonal' is not a valid GateUpLayout"):
        fused(inp, gate_up_layout="diagonal")


def test_router_weight_on_input_needs_top1(inp):
    with pytest.raises(ValueError, match="apply_router_weight_on_input needs top_k == 1, got top_k=2"):
        fused(inp, apply_router_weight_on_input=True)


def test_mismatched_devices(inp):
    with pytest.raises(ValueError, match="all tensors must be on one device.*w13 on meta"):
        fused(inp, w13=inp.w13.to("meta"))


# --- route -------------------------------------------------------------------------------------

def test_nan_router_logits():
    logits = torch.randn(4, 8)
    logits[1, 3] = float("nan")
    with pytest.raises(ValueError, match="router_logits contains NaN"):
        moekit.route(logits, 2)


def test_route_top_k_too_large():
    with pytest.raises(ValueError, match=r"top_k must be <= num_experts \(8\), got 9"):
        moekit.route(torch.randn(4, 8), 9)


def test_route_top_k_not_int():
    with pytest.raises(TypeError, match="top_k must be an int, got float"):
        moekit.route(torch.randn(4, 8), 2.0)


def test_route_unknown_scoring():
    with pytest.raises(ValueError, match="unknown scoring 'softmin'"):
        moekit.route(torch.randn(4, 8), 2, scoring="softmin")


def test_groups_must_divide_experts():
    with pytest.raises(ValueError, match=r"num_groups must divide num_experts \(10\), got 4"):
        moekit.route(torch.randn(4, 10), 2, num_groups=4, topk_groups=2)


def test_groups_given_together():
    with pytest.raises(ValueError, match="num_groups and topk_groups must be given together"):
        moekit.route(torch.randn(4, 8), 2, num_groups=4)


def test_topk_groups_too_few_experts():
    with pytest.raises(ValueError, match=r"top_k \(4\) exceeds the experts in the 1 chosen groups \(2\)"):
        moekit.route(torch.randn(4, 8), 4, num_groups=4, topk_groups=1)


def test_correction_bias_shape():
    with pytest.raises(ValueError, match=r"correction_bias must have shape \(8,\), got \(7,\)"):
        moekit.route(torch.randn(4, 8), 2, correction_bias=torch.zeros(7))


def test_user_function_bad_output():
    with pytest.raises(TypeError, match="must return a tuple"):
        moekit.route(torch.randn(4, 8), 2, scoring=lambda logits, k: logits)


# --- the layer ---------------------------------------------------------------------------------

def layer(**kwargs):
    args = dict(num_experts=8, top_k=2, hidden_size=16, intermediate_size=12, dtype=torch.float32, device="cpu")
    args.update(kwargs)
    return moekit.MoE(**args)


def test_layer_top_k_above_experts():
    with pytest.raises(ValueError, match=r"top_k must be <= num_experts \(8\), got 9"):
        layer(top_k=9)


def test_layer_zero_hidden():
    with pytest.raises(ValueError, match="hidden_size must be >= 1, got 0"):
        layer(hidden_size=0)


def test_layer_unknown_scheme():
    with pytest.raises(ValueError, match="unknown quant scheme 'fp3'"):
        layer(quant="fp3")


def test_layer_group_size_must_divide_hidden():
    with pytest.raises(ValueError, match="w13: group size 32 of scheme 'mxfp4' does not divide its input dimension 16"):
        layer(quant="mxfp4", hidden_size=16)


def test_layer_unsupported_dtype():
    with pytest.raises(TypeError, match="dtype must be torch.float32, torch.bfloat16 or torch.float16"):
        layer(dtype=torch.int8)


def test_layer_expert_parallel_needs_torch_distributed():
    with pytest.raises(RuntimeError, match="expert parallelism needs torch.distributed initialized first"):
        layer(parallel=moekit.ExpertParallel())


@pytest.mark.parametrize("kwargs,match", [
    (dict(communication="nccl"), "communication must be one of"),
    (dict(timeout_s=0), "timeout_s must be positive"),
    (dict(max_tokens_per_rank=0), "max_tokens_per_rank must be at least 1"),
    (dict(communication="all-gather", fp8_dispatch=True), "fp8_dispatch is an option of the all-to-all forms"),
    (dict(max_tokens_per_chunk=0), "max_tokens_per_chunk must be at least 1"),
    (dict(max_tokens_per_chunk=8, max_tokens_per_rank=4), "exceeds the fixed capacity"),
])
def test_expert_parallel_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        moekit.ExpertParallel(**kwargs)


def test_layer_input_hidden_mismatch():
    with pytest.raises(ValueError, match=r"x must be \[T, 16\] or \[B, S, 16\], got \(4, 15\)"):
        layer()(torch.randn(4, 15))


def test_layer_input_dtype_mismatch():
    with pytest.raises(TypeError, match="x must have dtype in"):
        layer()(torch.randn(4, 16, dtype=torch.bfloat16))


def test_layer_input_device_mismatch():
    with pytest.raises(ValueError, match="x is on meta but the layer's weights are on cpu"):
        layer()(torch.randn(4, 16, device="meta"))


def test_layer_requested_backend_unknown():
    with pytest.raises(moekit.BackendUnavailableError, match="unknown experts backend 'fast'"):
        layer(backend="fast")


def test_layer_bad_routing_type():
    with pytest.raises(TypeError, match="routing must be a RoutingConfig"):
        layer(routing=3)
