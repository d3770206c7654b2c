"""The fused Triton routing kernel against moekit.route's PyTorch path, on the CPU under Triton's
interpreter (tests_gpu/test_routing_kernel_gpu.py runs the same comparison on CUDA)."""

import os

import torch

if not torch.cuda.is_available():  # must be set before triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import moekit  # noqa: E402
from moekit.host_checks import set_host_checks  # noqa: E402

pytest.importorskip("triton")
from moekit.triton_ops import routing_kernel  # noqa: E402
from moekit.triton_ops.routing_kernel import fused_route, fused_route_supported  # noqa: E402

ROWS = 10_000  # the acceptance: 10,000 random rows of each routing style

# name: (experts, top_k, route() keywords; "bias" asks for a random correction bias of that dtype)
STYLES = {
    "qwen3_softmax_renorm": (128, 8, dict(scoring="softmax", renormalize=True)),
    "olmoe_softmax": (64, 8, dict(scoring="softmax", renormalize=False)),
    "qwen2_e60_softmax": (60, 4, dict(scoring="softmax", renormalize=True)),
    "deepseek_v3": (256, 8, dict(scoring="sigmoid", renormalize=True, num_groups=8, topk_groups=4,
                                 bias=torch.float32, routed_scaling_factor=2.5)),
    "kimi_k2": (384, 8, dict(scoring="sigmoid", renormalize=True, bias=torch.float32, routed_scaling_factor=2.827)),
    # DeepSeek-V2: groups scored by their best expert (no bias); 8 groups of 20, a padded group size
    "deepseek_v2_grouped_max": (160, 6, dict(scoring="softmax", renormalize=False, num_groups=8, topk_groups=3,
                                             routed_scaling_factor=16.0)),
    "odd_groups_bias": (60, 6, dict(scoring="sigmoid", renormalize=True, num_groups=4, topk_groups=2,
                                    bias=torch.float32)),
    "odd_e7_sigmoid_bias": (7, 2, dict(scoring="sigmoid", renormalize=True, bias=torch.float16)),
    "gpt_oss_120b": (128, 4, dict(scoring="topk_softmax", renormalize=False)),
    "gpt_oss_20b": (32, 4, dict(scoring="topk_softmax", renormalize=False)),
    "llama4": (16, 1, dict(scoring="topk_sigmoid", renormalize=False)),
    "topk_sigmoid_bias_renorm": (24, 3, dict(scoring="topk_sigmoid", renormalize=True, bias=torch.float32)),
}


def make_inputs(style, rows, dtype, device, seed):
    """Random logits and route() keywords. fp32 logits are Gaussian; fp16/bf16 logits are distinct
    multiples of 1/64 per row (exact in both dtypes), so no two experts tie in the logits."""
    experts, top_k, kwargs = STYLES[style]
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.float32:
        logits = 2.0 * torch.randn(rows, experts, generator=g)
    else:
        logits = (torch.rand(rows, experts, generator=g).argsort(dim=1) - experts // 2) / 64
    kwargs = dict(kwargs)
    bias_dtype = kwargs.pop("bias", None)
    if bias_dtype is not None:  # about half the entries negative
        kwargs["correction_bias"] = (0.3 * torch.randn(experts, generator=g)).to(bias_dtype).to(device)
    return logits.to(dtype).to(device), top_k, kwargs


def selection_scores(logits, kwargs):
    """What the top-k ranks (before group masking): the reference's own scores plus the bias."""
    scoring, bias = kwargs["scoring"], kwargs.get("correction_bias")
    if scoring in ("topk_softmax", "topk_sigmoid"):
        return (logits if bias is None else logits + bias.to(logits.dtype)).float()
    scores = logits.float().softmax(dim=-1) if scoring == "softmax" else logits.float().sigmoid()
    return scores if bias is None else scores + bias.float()


def assert_same_routing(ours, ref, choice):
    """Same ids in the same order, except where the selection scores tie (PyTorch's topk breaks ties
    its own way); where the rows hold the same experts, the same weights within 1e-6 relative."""
    (w, ids), (w_ref, ids_ref) = ours, ref
    assert w.dtype == torch.float32 and ids.dtype == torch.int32
    assert w.shape == ids.shape == ids_ref.shape and w.is_contiguous() and ids.is_contiguous()
    ids, ids_ref = ids.long(), ids_ref.long()
    assert ((ids >= 0) & (ids < choice.shape[1])).all()
    differ = ids != ids_ref
    torch.testing.assert_close(choice.gather(1, ids)[differ], choice.gather(1, ids_ref)[differ], rtol=2e-6, atol=0)
    # Ties are rare here (none in most styles; ~2% of rows when bf16 rounds logits + bias together).
    assert differ.any(dim=1).sum() <= 0.05 * len(ids), "too many ties: the comparison says little"
    ids_sorted, order = ids.sort(dim=1)
    ids_ref_sorted, order_ref = ids_ref.sort(dim=1)
    same = (ids_sorted == ids_ref_sorted).all(dim=1)
    assert (ids_sorted[:, 1:] != ids_sorted[:, :-1]).all(), "an expert chosen twice"
    torch.testing.assert_close(w.gather(1, order)[same], w_ref.gather(1, order_ref)[same], rtol=1e-6, atol=1e-12)


def check_style(style, dtype, rows, device, monkeypatch, seed=0):
    logits, top_k, kwargs = make_inputs(style, rows, dtype, device, seed)
    monkeypatch.setenv("MOEKIT_ROUTING", "torch")
    ref = moekit.route(logits, top_k, **kwargs)
    ours = fused_route(logits, top_k, **kwargs)
    assert_same_routing(ours, ref, selection_scores(logits, kwargs))


@pytest.mark.parametrize("style", STYLES)
def test_matches_torch_fp32(style, monkeypatch):
    check_style(style, torch.float32, ROWS, "cpu", monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("style", STYLES)
def test_matches_torch_half(style, dtype, monkeypatch):
    check_style(style, dtype, ROWS, "cpu", monkeypatch)


@pytest.mark.parametrize("rows", [0, 1, 3])
def test_few_tokens(rows, monkeypatch):
    if rows == 0:  # nothing to launch
        monkeypatch.setattr(routing_kernel, "_fused_route_kernel", None)
    check_style("deepseek_v3", torch.float32, rows, "cpu", monkeypatch)
    check_style("gpt_oss_20b", torch.bfloat16, rows, "cpu", monkeypatch)


def test_strided_logits():
    logits = torch.randn(64, 300)[:, ::3]  # [64, 100], row stride 300, expert stride 3
    ours = fused_route(logits, 5, moekit.Scoring.SOFTMAX, True)
    ref = moekit.route(logits.contiguous(), 5)
    assert_same_routing(ours, ref, logits.softmax(dim=-1))


def test_ties_go_to_the_lowest_id():
    w, ids = fused_route(torch.zeros(2, 12), 4, moekit.Scoring.SIGMOID, True)
    assert ids.tolist() == [[0, 1, 2, 3]] * 2
    torch.testing.assert_close(w, torch.full((2, 4), 0.25))
    # Groups {0..3} and {8..11} tie on the best score; the lower group wins, then its lowest ids.
    logits = torch.tensor([[1.0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]])
    _, ids = fused_route(logits, 3, moekit.Scoring.SOFTMAX, False, num_groups=3, topk_groups=1)
    assert ids.tolist() == [[0, 1, 2]]


def test_bias_selects_but_does_not_weight():
    logits = torch.randn(20, 8)
    bias = torch.zeros(8)
    bias[5], bias[0] = 100.0, -100.0
    w, ids = fused_route(logits, 2, moekit.Scoring.SIGMOID, False, correction_bias=bias)
    assert (ids == 5).any(dim=1).all() and not (ids == 0).any()
    torch.testing.assert_close(w, logits.sigmoid().gather(1, ids.long()), rtol=1e-6, atol=0)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # numpy, under the interpreter
def test_nan_logits_still_give_valid_distinct_ids():
    logits = torch.randn(4, 10)
    logits[0, 3] = float("nan")
    logits[1] = float("nan")
    for scoring in moekit.Scoring:
        _, ids = fused_route(logits, 4, scoring, True)
        assert ((ids >= 0) & (ids < 10)).all()
        assert all(len(set(row)) == 4 for row in ids.tolist())


def test_supported():
    assert fused_route_supported(256, 8, moekit.Scoring.SIGMOID, 8) == (True, "supported")
    ok, why = fused_route_supported(2048, 8, moekit.Scoring.SOFTMAX, None)
    assert not ok and "2048 experts exceed the 1024" in why
    ok, why = fused_route_supported(16, 2, lambda logits, k: None, None)
    assert not ok and "user routing functions" in why
    ok, why = fused_route_supported(64, 33, moekit.Scoring.SOFTMAX, None)
    assert not ok and "top_k 33" in why


# --- choosing the kernel in moekit.route ---------------------------------------------------------

def _fail_if_launched(monkeypatch):
    def launched(*args):
        raise AssertionError("the fused kernel ran")
    monkeypatch.setattr(routing_kernel, "_fused_route_impl", launched)


def test_env_selects_the_path(monkeypatch):
    logits = torch.randn(6, 32)
    _fail_if_launched(monkeypatch)
    monkeypatch.delenv("MOEKIT_ROUTING", raising=False)
    moekit.route(logits, 4)  # CPU logits: PyTorch unless forced
    monkeypatch.setenv("MOEKIT_ROUTING", "torch")
    moekit.route(logits, 4)
    monkeypatch.setenv("MOEKIT_ROUTING", "triton")
    with pytest.raises(AssertionError, match="the fused kernel ran"):
        moekit.route(logits, 4)


def test_forced_triton_refuses_clearly(monkeypatch):
    monkeypatch.setenv("MOEKIT_ROUTING", "triton")
    with pytest.raises(ValueError, match="MOEKIT_ROUTING=triton.*4096 experts exceed"):
        moekit.route(torch.randn(2, 4096), 2)
    with pytest.raises(ValueError, match="MOEKIT_ROUTING=triton.*user routing functions"):
        moekit.route(torch.randn(2, 8), 2, scoring=lambda logits, k: logits.topk(k))
    with pytest.raises(ValueError, match="MOEKIT_ROUTING=triton.*no backward"):
        moekit.route(torch.randn(2, 8, requires_grad=True), 2)
    monkeypatch.setenv("MOEKIT_ROUTING", "cuda")
    with pytest.raises(ValueError, match="MOEKIT_ROUTING must be 'torch' or 'triton', got 'cuda'"):
        moekit.route(torch.randn(2, 8), 2)


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("MOEKIT_ROUTING", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="router_logits are on cpu; the kernel needs CUDA"):
        moekit.route(torch.randn(2, 8), 2)


def test_nan_check_follows_host_checks(monkeypatch):
    monkeypatch.setenv("MOEKIT_ROUTING", "torch")
    logits = torch.randn(3, 8)
    logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match="contains NaN"):
        moekit.route(logits, 2)
    set_host_checks(False)
    try:
        moekit.route(logits, 2)  # no host read, no error
    finally:
        set_host_checks(None)
    monkeypatch.setenv("MOEKIT_HOST_CHECKS", "0")
    moekit.route(logits, 2)


# --- torch.compile ---------------------------------------------------------------------------------

def _deepseek_route(logits, bias):
    return moekit.route(logits, 8, scoring="sigmoid", renormalize=True, num_groups=8, topk_groups=4,
                        correction_bias=bias, routed_scaling_factor=2.5)


def test_no_graph_break_under_compile(monkeypatch):
    monkeypatch.setenv("MOEKIT_ROUTING", "triton")
    torch._dynamo.reset()
    logits, _, kwargs = make_inputs("deepseek_v3", 33, torch.float32, "cpu", seed=1)
    bias = kwargs["correction_bias"]
    explanation = torch._dynamo.explain(_deepseek_route)(logits, bias)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    assert "torch.ops.moekit.fused_route" in explanation.graphs[0].code
    compiled = torch.compile(_deepseek_route, fullgraph=True, backend="aot_eager")
    w, ids = compiled(logits, bias)
    w_eager, ids_eager = _deepseek_route(logits, bias)
    assert torch.equal(ids, ids_eager) and torch.equal(w, w_eager)
    torch._dynamo.reset()


def test_custom_op_schema_and_fake():
    logits = torch.randn(5, 64)
    bias = torch.randn(64)
    torch.library.opcheck(torch.ops.moekit.fused_route.default, (logits, 4, "sigmoid", True, 4, 2, bias, 2.5),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.moekit.fused_route.default, (logits[:0], 4, "softmax", False, None, None, None, 1.0),
                          test_utils=("test_schema", "test_faketensor"))
