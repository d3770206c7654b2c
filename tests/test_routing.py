"""moekit.route against each model family's own Hugging Face router, on the same logits."""

import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st

import moekit


def _sorted_pairs(weights, ids):
    """Order each row's (id, weight) pairs by id: routers may return the k choices in any order."""
    ids = ids.long()
    order = ids.argsort(dim=-1)
    return weights.float().gather(1, order), ids.gather(1, order)


def _assert_same_routing(ours, theirs):
    w, i = _sorted_pairs(*ours)
    w_ref, i_ref = _sorted_pairs(*theirs)
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(w, w_ref, rtol=1e-6, atol=1e-7)


def _hidden(tokens, hidden):
    return torch.randn(tokens, hidden)


def test_output_types_and_shapes():
    w, i = moekit.route(torch.randn(7, 10, dtype=torch.bfloat16), 3)
    assert w.dtype == torch.float32 and i.dtype == torch.int32
    assert w.shape == i.shape == (7, 3)
    assert w.is_contiguous() and i.is_contiguous()


@pytest.mark.parametrize(
    "family,norm",
    [("mixtral", True)]  # Mixtral always renormalizes
    + [(f, norm) for f in ("qwen2_moe", "qwen3_moe", "olmoe") for norm in (True, False)],  # norm_topk_prob
)
def test_softmax_routers(family, norm):
    configs = {
        "mixtral": lambda: (transformers.MixtralConfig(hidden_size=32, num_local_experts=8, num_experts_per_tok=2),
                            transformers.models.mixtral.modeling_mixtral.MixtralTopKRouter),
        "qwen2_moe": lambda: (transformers.Qwen2MoeConfig(hidden_size=32, num_experts=12, num_experts_per_tok=4,
                                                          norm_topk_prob=norm),
                              transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeTopKRouter),
        "qwen3_moe": lambda: (transformers.Qwen3MoeConfig(hidden_size=32, num_experts=16, num_experts_per_tok=8,
                                                          norm_topk_prob=norm),
                              transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeTopKRouter),
        "olmoe": lambda: (transformers.OlmoeConfig(hidden_size=32, num_experts=64, num_experts_per_tok=8,
                                                   norm_topk_prob=norm),
                          transformers.models.olmoe.modeling_olmoe.OlmoeTopKRouter),
    }
    config, router_cls = configs[family]()
    router = router_cls(config)
    torch.nn.init.normal_(router.weight, std=0.5)
    logits, scores, indices = router(_hidden(50, 32))
    ours = moekit.route(logits, router.top_k, scoring="softmax", renormalize=norm)
    _assert_same_routing(ours, (scores, indices))


@pytest.mark.parametrize("groups,topk_groups", [(4, 2), (8, 4), (1, 1)])
def test_deepseek_v3_router(groups, topk_groups):
    config = transformers.DeepseekV3Config(hidden_size=32, n_routed_experts=32, num_experts_per_tok=8,
                                           n_group=groups, topk_group=topk_groups, routed_scaling_factor=2.5,
                                           norm_topk_prob=True)
    router = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3TopkRouter(config)
    torch.nn.init.normal_(router.weight, std=0.5)
    router.e_score_correction_bias.normal_(std=0.3)  # negative entries included
    logits, weights, ids = router(_hidden(64, 32))
    ours = moekit.route(logits, 8, scoring="sigmoid", renormalize=True, num_groups=groups, topk_groups=topk_groups,
                        correction_bias=router.e_score_correction_bias, routed_scaling_factor=2.5)
    _assert_same_routing(ours, (weights, ids))


def test_gpt_oss_router():
    config = transformers.GptOssConfig(hidden_size=32, num_local_experts=16, num_experts_per_tok=4)
    router = transformers.models.gpt_oss.modeling_gpt_oss.GptOssTopKRouter(config)
    torch.nn.init.normal_(router.weight, std=0.5)
    torch.nn.init.normal_(router.bias, std=0.5)
    logits, scores, indices = router(_hidden(40, 32))
    ours = moekit.route(logits, 4, scoring="topk_softmax", renormalize=False)
    _assert_same_routing(ours, (scores, indices))


def test_llama4_router():
    config = transformers.Llama4TextConfig(hidden_size=32, num_local_experts=16, num_experts_per_tok=1)
    router = transformers.models.llama4.modeling_llama4.Llama4Router(config)
    torch.nn.init.normal_(router.weight, std=0.5)
    dense_scores, logits = router(_hidden(40, 32))
    w, i = moekit.route(logits, 1, scoring="topk_sigmoid", renormalize=False)
    assert torch.equal(i.long(), dense_scores.argmax(dim=-1, keepdim=True))
    torch.testing.assert_close(w, dense_scores.gather(1, i.long()), rtol=1e-6, atol=1e-7)


def test_correction_bias_selects_but_does_not_weight():
    logits = torch.randn(20, 8)
    bias = torch.zeros(8)
    bias[3] = 100.0  # forces expert 3 into every token's choice
    w, i = moekit.route(logits, 2, scoring="sigmoid", renormalize=False, correction_bias=bias)
    assert (i == 3).any(dim=-1).all()
    torch.testing.assert_close(w, logits.sigmoid().gather(1, i.long()))


def test_grouped_topk_only_chooses_from_best_groups():
    logits = torch.randn(30, 16)
    w, i = moekit.route(logits, 2, scoring="softmax", num_groups=4, topk_groups=1)
    # With one group allowed, both choices fall into the group holding the token's best expert.
    best_group = logits.argmax(dim=-1) // 4
    assert torch.equal(i.long() // 4, best_group.unsqueeze(-1).expand(-1, 2))


def test_routed_scaling_factor_scales_weights():
    logits = torch.randn(9, 6)
    w1, i1 = moekit.route(logits, 2)
    w2, i2 = moekit.route(logits, 2, routed_scaling_factor=2.5)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(w2, 2.5 * w1)


def test_user_function():
    def pick_first_k(logits, k):
        ids = torch.arange(k).expand(logits.shape[0], k)
        return torch.full((logits.shape[0], k), 0.5), ids

    w, i = moekit.route(torch.randn(5, 6), 3, scoring=pick_first_k, renormalize=False)
    assert torch.equal(i, torch.arange(3, dtype=torch.int32).expand(5, 3))
    assert torch.all(w == 0.5) and w.dtype == torch.float32


@given(tokens=st.integers(0, 40), experts=st.integers(1, 64), data=st.data())
def test_route_properties(tokens, experts, data):
    top_k = data.draw(st.integers(1, min(8, experts)))
    scoring = data.draw(st.sampled_from(["softmax", "sigmoid", "topk_softmax", "topk_sigmoid"]))
    logits = torch.randn(tokens, experts)
    w, i = moekit.route(logits, top_k, scoring=scoring, renormalize=True)
    assert w.shape == i.shape == (tokens, top_k)
    assert ((i >= 0) & (i < experts)).all()
    # No expert twice in a row, and renormalized weights sum to one.
    assert all(len(set(row)) == top_k for row in i.tolist())
    torch.testing.assert_close(w.sum(-1), torch.ones(tokens), rtol=1e-5, atol=1e-5)


def test_routing_config_normalizes_scoring_names():
    assert moekit.RoutingConfig("sigmoid").scoring is moekit.Scoring.SIGMOID
    with pytest.raises(ValueError, match="unknown scoring 'softplus'"):
        moekit.RoutingConfig("softplus")
