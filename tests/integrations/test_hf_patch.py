"""moekit.patch on tiny random models of the six supported families: the patched block computes what
the original block computed, greedy generation is unchanged (eager, experts_implementation="moekit",
patched), the replacement reuses the block's storage, and what it cannot serve it leaves alone."""

import pytest
import torch
import transformers
from _tiny_models import BLOCK_CLASS, FAMILIES, greedy, moe_blocks, tiny_config, tiny_model
from tolerance import assert_close_to_reference
from torch import nn

import moekit
from moekit.integrations.hf_patch import MoekitBlock, PatchReport


def _outputs(block_out):
    """gpt-oss blocks return (hidden_states, router_scores); the others a tensor."""
    return block_out if isinstance(block_out, tuple) else (block_out,)


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_block_matches_original(family):
    model = tiny_model(family)
    blocks = moe_blocks(model, family)
    x = torch.randn(2, 7, model.config.hidden_size)
    with torch.no_grad():
        before = [_outputs(block(x)) for _, block in blocks]
    report = moekit.patch(model)
    assert [(r.name, r.block_class) for r in report.replaced] == [(n, BLOCK_CLASS[family]) for n, _ in blocks]
    assert report.left_alone == ()
    for (name, _), theirs in zip(blocks, before):
        patched = model.get_submodule(name)
        assert isinstance(patched, MoekitBlock) and isinstance(patched.moe, moekit.MoE)
        with torch.no_grad():
            ours = _outputs(patched(x))
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):  # hidden states [B, S, H] (and gpt-oss's router scores [T, k])
            assert_close_to_reference(a, b.double(), torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_identical(family):
    model = tiny_model(family)
    num_blocks = len(moe_blocks(model, family))
    eager = greedy(model)
    model.set_experts_implementation("moekit")
    with_experts_impl = greedy(model)
    assert any("_moekit_kernel" in m.__dict__ for m in model.modules()), "the moekit experts path did not run"
    model.set_experts_implementation("eager")
    report = moekit.patch(model)
    assert len(report.replaced) == num_blocks == 2
    patched = greedy(model)
    assert eager.tolist() == with_experts_impl.tolist() == patched.tolist()
    assert len(set(eager.tolist())) > 4, "degenerate generation cannot tell implementations apart"


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_reuses_storage(family):
    model = tiny_model(family)
    name, block = moe_blocks(model, family)[0]
    params = dict(block.named_parameters())
    buffers = dict(block.named_buffers())
    moekit.patch(model)
    moe = model.get_submodule(name).moe
    router = "router" if family == "gpt_oss" else "gate"
    pairs = {"router.weight": f"{router}.weight", "w13": "experts.gate_up_proj", "w2": "experts.down_proj"}
    if family == "gpt_oss":
        pairs.update({"router.bias": "router.bias", "w13_bias": "experts.gate_up_proj_bias",
                      "w2_bias": "experts.down_proj_bias"})
    shared = {"qwen2_moe": "shared_expert", "deepseek_v3": "shared_experts"}.get(family)
    if shared:
        pairs.update({f"shared_experts.{p}.weight": f"{shared}.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")})
    if family == "qwen2_moe":
        pairs["shared_experts.shared_expert_gate.weight"] = "shared_expert_gate.weight"
    ours = dict(moe.named_parameters())
    assert set(ours) == set(pairs)  # nothing of its own
    for mine, theirs in pairs.items():
        assert ours[mine].data_ptr() == params[theirs].data_ptr(), mine
        if family != "gpt_oss" or not mine.startswith(("w13", "w2")) or mine.endswith("bias"):
            assert ours[mine] is params[theirs], f"{mine} should be the block's own Parameter"
    if family == "deepseek_v3":
        assert moe.correction_bias is buffers["gate.e_score_correction_bias"]
    assert moe.kernel.weights.w13.data_ptr() == ours["w13"].data_ptr()


class FooSparseMoeBlock(nn.Module):
    """An MoE block moekit.patch does not know."""

    def __init__(self, hidden):
        super().__init__()
        self.gate = nn.Linear(hidden, 4, bias=False)
        self.experts = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, x):
        return x + self.experts[0](x)


def test_unknown_block_left_untouched_with_reason():
    model = tiny_model("mixtral")
    foreign = FooSparseMoeBlock(model.config.hidden_size)
    model.model.layers[0].mlp = foreign
    report = moekit.patch(model)
    assert model.model.layers[0].mlp is foreign  # untouched
    assert [r.name for r in report.replaced] == ["model.layers.1.mlp"]
    (skip,) = report.left_alone
    assert (skip.name, skip.block_class) == ("model.layers.0.mlp", "FooSparseMoeBlock")
    assert "unknown block class" in skip.reason and "MixtralSparseMoeBlock" in skip.reason
    text = str(report)
    assert "FooSparseMoeBlock" in text and "left alone: unknown block class" in text
    assert "replaced, backend reference" in text


def test_known_block_it_cannot_serve_left_untouched_with_reason():
    config = tiny_config("mixtral")
    config.hidden_act = "gelu_pytorch_tanh"  # no moekit activation
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    blocks = moe_blocks(model, "mixtral")
    report = moekit.patch(model)
    assert report.replaced == ()
    assert [s.name for s in report.left_alone] == [n for n, _ in blocks]
    assert all("GELUTanh" in s.reason for s in report.left_alone)
    assert all(model.get_submodule(n) is b for n, b in blocks)


def test_patch_is_idempotent_and_ignores_dense_mlps():
    model = tiny_model("deepseek_v3")
    first = moekit.patch(model)
    assert [r.name for r in first.replaced] == ["model.layers.1.mlp", "model.layers.2.mlp"]  # layer 0 is dense
    second = moekit.patch(model)
    assert second == PatchReport(replaced=(), left_alone=())
    assert "no MoE blocks found" in str(second)


def test_explicit_backend():
    model = tiny_model("olmoe")
    with pytest.raises(moekit.BackendUnavailableError, match="torch-grouped-mm"):
        moekit.patch(model, backend="torch-grouped-mm")  # CUDA only: refuse loudly, replace nothing
    assert not any(isinstance(m, MoekitBlock) for m in model.modules())
    with pytest.raises(moekit.BackendUnavailableError, match="unknown experts backend"):
        moekit.patch(model, backend="no-such-backend")
    report = moekit.patch(model, backend="reference")
    assert [r.backend for r in report.replaced] == ["reference", "reference"]


def test_patched_model_moves_and_recomposes():
    model = tiny_model("qwen2_moe")
    moekit.patch(model)
    model.to(torch.bfloat16)
    block = model.model.layers[0].mlp
    assert block.moe.kernel.weights.w13.dtype == torch.bfloat16
    x = torch.randn(1, 3, model.config.hidden_size, dtype=torch.bfloat16)
    assert block(x).dtype == torch.bfloat16


def test_patch_rejects_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        moekit.patch("model")


def test_deepseek_v3_router_runs_in_fp32_in_a_bf16_model():
    model = tiny_model("deepseek_v3").to(torch.bfloat16)
    name, block = moe_blocks(model, "deepseek_v3")[0]
    x = torch.randn(512, model.config.hidden_size, dtype=torch.bfloat16)
    _, their_weights, their_ids = block.gate(x)
    moekit.patch(model)
    our_weights, our_ids = model.get_submodule(name).moe.route(x)
    # Same choices (compared as sets: DeepSeek's topk is unsorted) and the same fp32 weights.
    their_ids, order = their_ids.sort(dim=-1)
    our_ids, our_order = our_ids.long().sort(dim=-1)
    assert torch.equal(our_ids, their_ids)
    torch.testing.assert_close(our_weights.gather(1, our_order), their_weights.gather(1, order), rtol=1e-6, atol=0)


def test_a_bare_block_is_not_replaced():
    block = moe_blocks(tiny_model("olmoe"), "olmoe")[0][1]
    report = moekit.patch(block)
    assert report.replaced == () and "patch that" in report.left_alone[0].reason


def test_decode_graphs_on_a_cpu_model_are_refused_before_any_block_is_replaced():
    model = tiny_model(FAMILIES[0])
    before = [type(m).__name__ for m in model.modules()]
    with pytest.raises(ValueError, match="decode graphs are CUDA graphs"):
        moekit.patch(model, decode_graphs=8)
    assert [type(m).__name__ for m in model.modules()] == before
