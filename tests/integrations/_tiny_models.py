"""Tiny random-weight transformers models, one per supported MoE family, for the integration tests.

Each is fp32, hidden 64, 8 experts, top-2, vocab 128, seeded. Weights are re-drawn at a scale that
keeps activations O(1) (transformers' own 0.02 init makes the MoE output vanish next to the
residual, so a wrong expert would go unnoticed), router/expert biases and DeepSeek-V3's correction
bias are random and nonzero, and gpt-oss gets a small swiglu limit so the clamp is exercised.
"""

from __future__ import annotations

import torch
import transformers

# Importing moekit registers "moekit" in transformers' ExpertsInterface.
import moekit  # noqa: F401

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt_oss", "olmoe")

BLOCK_CLASS = {
    "mixtral": "MixtralSparseMoeBlock",
    "qwen2_moe": "Qwen2MoeSparseMoeBlock",
    "qwen3_moe": "Qwen3MoeSparseMoeBlock",
    "deepseek_v3": "DeepseekV3MoE",
    "gpt_oss": "GptOssMLP",
    "olmoe": "OlmoeSparseMoeBlock",
}

_COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               num_experts_per_tok=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
               eos_token_id=None, tie_word_embeddings=False)


def tiny_config(family: str) -> transformers.PretrainedConfig:
    if family == "mixtral":
        return transformers.MixtralConfig(**_COMMON, intermediate_size=32, num_local_experts=8, head_dim=16)
    if family == "qwen2_moe":  # shared expert + its gate; top-k weights not renormalized
        return transformers.Qwen2MoeConfig(**_COMMON, intermediate_size=96, moe_intermediate_size=32, num_experts=8,
                                           shared_expert_intermediate_size=48, norm_topk_prob=False)
    if family == "qwen3_moe":  # renormalized top-k
        return transformers.Qwen3MoeConfig(**_COMMON, intermediate_size=96, moe_intermediate_size=32,
                                           num_experts=8, norm_topk_prob=True, head_dim=16)
    if family == "olmoe":
        return transformers.OlmoeConfig(**_COMMON, intermediate_size=32, num_experts=8, norm_topk_prob=False)
    if family == "deepseek_v3":  # layer 0 dense, layers 1-2 MoE; 4 groups of 2 experts, best 2 groups
        common = {**_COMMON, "num_hidden_layers": 3, "num_key_value_heads": 4}
        return transformers.DeepseekV3Config(
            **common, intermediate_size=96, moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
            n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1,
            q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
        )
    if family == "gpt_oss":  # interleaved, transposed, biased experts; a low limit so the clamp bites
        return transformers.GptOssConfig(**_COMMON, intermediate_size=32, num_local_experts=8, head_dim=16,
                                         sliding_window=8, swiglu_limit=1.5, layer_types=None)
    raise ValueError(f"unknown family {family!r}")


def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    config = tiny_config(family)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed)
    for module in model.modules():
        if type(module).__name__ == "GptOssExperts":
            module.limit = 1.5  # transformers 5.17 ignores config.swiglu_limit (hard-coded 7.0)
    model.set_experts_implementation("eager")
    return model.eval()


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)

    def randn(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype)

    for name, p in model.named_parameters():
        if "norm" in name and p.dim() == 1:
            p.copy_(1.0 + 0.1 * randn(p))
        elif p.dim() >= 2:
            p.copy_(0.15 * randn(p))  # ~1/sqrt(64): O(1) activations
        else:  # router bias, attention biases, sinks
            p.copy_(0.2 * randn(p))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.3 * randn(b))  # changes choices against sigmoid scores in (0, 1); has negatives


def moe_blocks(model: torch.nn.Module, family: str) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ == BLOCK_CLASS[family]]


PROMPT = torch.tensor([[1, 17, 42, 99, 5, 63, 7, 120, 33, 2]])


def greedy(model, new_tokens: int = 32) -> torch.Tensor:
    out = model.generate(PROMPT.to(model.device), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0)
    return out[0, PROMPT.shape[1]:]
