"""The expert-parallel checks run inside each spawned rank (gloo, CPU, fp32), by test_expert_parallel.py.

Every rank builds the same single-device layer from one seed, an expert-parallel layer that loads its
full state dict, and compares outputs on its own tokens. Results go back as one JSON file per rank."""

import dataclasses
import datetime
import json
import os
import time
import traceback

import torch
import torch.distributed as dist

import moekit
from moekit.ep.collectives import ExpertParallelError
from moekit.ep.placement import ExpertPlacement

E, K, H, I = 8, 2, 32, 32


def _rel(a, b):
    if b.numel() == 0:
        return 0.0 if a.numel() == 0 else float("inf")
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _pair(parallel, k=K, **kw):
    torch.manual_seed(0)
    single = moekit.MoE(E, k, H, I, dtype=torch.float32, device="cpu", **kw)
    ep = moekit.MoE(E, k, H, I, dtype=torch.float32, device="cpu", parallel=parallel, **kw)
    ep.load_state_dict(single.state_dict())
    return single, ep


def _check(results, name, single, ep, x):
    with torch.no_grad():
        want = single(x)
        got = ep(x)
    results[name] = {"rel": _rel(got, want), "shape_ok": tuple(got.shape) == tuple(want.shape),
                     "tokens": int(x.shape[0])}


def scenarios(rank: int, world: int) -> dict:
    results = {}
    for comm, capacity in (("all-to-all", None), ("fixed", 16), ("all-gather", None)):
        parallel = moekit.ExpertParallel(communication="all-gather" if comm == "all-gather" else "all-to-all",
                                         timeout_s=60, max_tokens_per_rank=capacity)
        single, ep = _pair(parallel, shared_intermediate_size=16, expert_bias=True)
        torch.manual_seed(100 + rank)
        _check(results, f"{comm}/uniform, {5 + 3 * rank} tokens on this rank", single, ep,
               torch.randn(5 + 3 * rank, H))
        # every token of every rank to experts 0 and 1 (rank 0's): the other ranks receive nothing
        single, ep = _pair(parallel, router_bias=True)
        with torch.no_grad():
            for layer in (single, ep):
                layer.router.bias.copy_(torch.tensor([50.0, 40.0] + [0.0] * (E - 2)))
        _check(results, f"{comm}/all tokens to experts 0 and 1", single, ep, torch.randn(6, H))
        # top-1: every token of every rank to one expert, on the last rank
        single, ep = _pair(parallel, k=1, router_bias=True)
        with torch.no_grad():
            for layer in (single, ep):
                layer.router.bias.copy_(torch.tensor([0.0] * (E - 1) + [60.0]))
        _check(results, f"{comm}/all tokens to one expert", single, ep, torch.randn(5, H))
        # rank 1 sends nothing
        single, ep = _pair(parallel)
        tokens = 0 if rank == 1 else 7
        _check(results, f"{comm}/rank 1 sends zero tokens", single, ep, torch.randn(tokens, H))
        # redundant replicas of experts 0 and 5 (a placement EPLB could make)
        ranks = [list(r) for r in ExpertPlacement.contiguous(E, world).ranks]
        for r in range(world):
            for hot in (0, 5):
                if hot not in ranks[r]:
                    ranks[r].append(hot)
        placement = ExpertPlacement(E, tuple(tuple(r) for r in ranks))
        single, ep = _pair(dataclasses.replace(parallel, placement=placement))
        _check(results, f"{comm}/redundant replicas of experts 0 and 5", single, ep, torch.randn(9, H))
    # other layer kinds: Llama-4's weight on the input (top-1), gpt-oss's interleaved clamped SwiGLU
    # with expert biases, relu2 without a gate
    for label, kw in (("weight on input", dict(k=1, apply_router_weight_on_input=True)),
                      ("gpt-oss swiglu, biases", dict(activation="swigluoai", gate_up_layout="interleaved",
                                                      expert_bias=True, router_bias=True)),
                      ("relu2", dict(activation="relu2"))):
        for capacity in (None, 16):
            single, ep = _pair(moekit.ExpertParallel(timeout_s=60, max_tokens_per_rank=capacity), **kw)
            torch.manual_seed(700 + rank)
            _check(results, f"{label}/capacity {capacity}", single, ep, torch.randn(5 + 2 * rank, H))
    # a Hugging Face block's per-expert tensors (all experts) into an expert-parallel layer
    torch.manual_seed(0)
    single = moekit.MoE(E, K, H, I, dtype=torch.float32, device="cpu")
    sd = {"block.gate.weight": single.router.weight.detach().clone()}
    for e in range(E):
        gate, up = single.w13[e].detach().chunk(2)
        sd.update({f"block.experts.{e}.w1.weight": gate, f"block.experts.{e}.w3.weight": up,
                   f"block.experts.{e}.w2.weight": single.w2[e].detach()})
    ep = moekit.MoE(E, K, H, I, dtype=torch.float32, device="cpu", parallel=moekit.ExpertParallel(timeout_s=60))
    recorded = _Recording(sd)
    moekit.load_hf_state_dict(ep, recorded, prefix="block.")
    _check(results, "all-to-all/load_hf_state_dict of all experts", single, ep, torch.randn(7, H))
    results["hf block: other ranks' tensors read"] = sorted(
        k for k in recorded.read if k.startswith("block.experts.") and int(k.split(".")[2]) not in ep.local_experts)
    # chunked forwards: rounds of 3 tokens per rank, a different number of them on each rank
    for capacity in (None, 4):
        single, ep = _pair(moekit.ExpertParallel(timeout_s=60, max_tokens_per_chunk=3, max_tokens_per_rank=capacity),
                           shared_intermediate_size=16)
        torch.manual_seed(500 + rank)
        _check(results, f"chunks of 3/capacity {capacity}", single, ep, torch.randn(2 + 4 * rank, H))
    # fp8 dispatch: the experts see each token rounded to e4m3 with a per-token scale, exactly what
    # the single-device kernel sees on fake-quantized tokens
    from moekit.ep.fp8_dispatch import PER_TOKEN
    from moekit.quant.dequant import fake_quantize_activations

    for capacity in (None, 16):
        single, ep = _pair(moekit.ExpertParallel(timeout_s=60, max_tokens_per_rank=capacity, fp8_dispatch=True))
        torch.manual_seed(400 + rank)
        x = torch.randn(7 + rank, H)
        with torch.no_grad():  # routed on x itself; the experts see the fp8-rounded rows
            weights, ids = single.route(x)
            want = single.kernel.apply(fake_quantize_activations(x, PER_TOKEN), weights, ids)
            got = ep(x)
        results[f"fp8 dispatch/capacity {capacity}"] = {"rel": _rel(got, want), "shape_ok": got.shape == want.shape,
                                                        "tokens": int(x.shape[0])}
    # a DeepSeek-style fp8 checkpoint block (per-expert weight + weight_scale_inv): each rank reads
    # only its own experts' tensors
    results.update(_fp8_checkpoint_block(rank))
    # moekit.load of a DeepSeek-style fp8 checkpoint directory written by transformers' Fp8Quantize
    results.update(_load_checkpoint_directory(rank))
    # fused expert tensors (gpt-oss, float and mxfp4) from safetensors: each rank reads its experts' rows
    results.update(_fused_checkpoints(rank))
    # quantized experts: the slice of every scheme tensor (codes, scales, zero points) travels with the experts
    for scheme in ("w4a16-g32-asym", "fp8-block128"):
        single, ep = _pair(moekit.ExpertParallel(timeout_s=60), quant=scheme)
        torch.manual_seed(300 + rank)
        _check(results, f"all-to-all/quantized {scheme}", single, ep, torch.randn(6 + rank, H))
    # EPLB: a skewed load (router bias), rebalanced with one spare slot per rank
    single, ep = _pair(moekit.ExpertParallel(timeout_s=60), router_bias=True)
    with torch.no_grad():
        for layer in (single, ep):
            layer.router.bias.copy_(torch.linspace(4.0, 0.0, E))
    ep.track_expert_load(window=4)
    torch.manual_seed(200 + rank)
    x = torch.randn(16 + 4 * rank, H)
    with torch.no_grad():
        ep(x)
    before, after = ep.rebalance(slots_per_rank=E // world + 1)
    _check(results, "all-to-all/after rebalancing", single, ep, x)
    results["eplb"] = {"before": before.max_over_mean, "after": after.max_over_mean,
                       "replicas": ep.placement.replica_counts(), "local": list(ep.local_experts)}
    results["explain"] = str(ep.explain())
    # more tokens than the fixed capacity: refused on the host before any collective
    _, fixed = _pair(moekit.ExpertParallel(timeout_s=60, max_tokens_per_rank=4))
    results["capacity_error"] = _error_of(fixed, 5, ValueError)
    # decode graphs: refused for forms with host syncs, and (fixed capacity) for a CPU layer
    results["decode_graphs_errors"] = []
    for layer in (ep, fixed):
        try:
            layer.use_decode_graphs(8)
            results["decode_graphs_errors"].append(None)
        except ValueError as e:
            results["decode_graphs_errors"].append(str(e))
    results["local_experts"] = list(ep.local_experts)
    results["state_dict_w13_rows"] = int(ep.state_dict()["w13"].shape[0])
    return results


class _Recording(dict):
    """A state dict that remembers which keys were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def _fp8_checkpoint_block(rank: int) -> dict:
    from moekit.checkpoints.block import load_quantized_state_dict
    from moekit.quant import METHODS

    config = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
    method = METHODS["fp8-block128"]
    h, i = 128, 128  # gate and up stack only when I is a multiple of the 128-row blocks
    torch.manual_seed(0)
    sd = {"mlp.gate.weight": torch.randn(E, h) / h**0.5}
    for e in range(E):
        for proj, (n, k) in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
            m = method.quantize(torch.randn(1, n, k) / k**0.5)
            sd[f"mlp.experts.{e}.{proj}.weight"] = m.data[0]
            sd[f"mlp.experts.{e}.{proj}.weight_scale_inv"] = m.scale[0]
    single = moekit.MoE(E, K, h, i, dtype=torch.float32, device="cpu", quant="fp8-block128")
    ep = moekit.MoE(E, K, h, i, dtype=torch.float32, device="cpu", quant="fp8-block128",
                    parallel=moekit.ExpertParallel(timeout_s=60))
    recorded = _Recording(sd)
    load_quantized_state_dict(single, sd, "mlp.", config)
    load_quantized_state_dict(ep, recorded, "mlp.", config)
    others = {e for e in range(E) if e not in ep.local_experts}
    read_others = sorted(k for k in recorded.read if any(k.startswith(f"mlp.experts.{e}.") for e in others))
    results = {}
    torch.manual_seed(600 + rank)
    _check(results, "all-to-all/fp8 checkpoint block read by expert", single, ep, torch.randn(6, h))
    results["fp8 checkpoint: other ranks' tensors read"] = read_others
    results["fp8 checkpoint: own experts"] = len(ep.local_experts)
    results["fp8 checkpoint: own expert tensors read"] = sum(
        any(k.startswith(f"mlp.experts.{e}.") for e in ep.local_experts) for k in recorded.read)
    return results


def _load_checkpoint_directory(rank: int) -> dict:
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "checkpoints"))
    from _producers import deepseek_v3_config, write_hf_fp8

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        write_hf_fp8(Path(tmp), deepseek_v3_config(), shared=128, correction_bias=True)
        (name, single), = moekit.load(tmp, device="cpu").items()
        (_, ep), = moekit.load(tmp, device="cpu", parallel=moekit.ExpertParallel(timeout_s=60)).items()
    results = {}
    torch.manual_seed(800 + rank)
    _check(results, "all-to-all/moekit.load of an fp8 checkpoint directory", single, ep,
           torch.randn(5 + rank, single.hidden_size))
    results["moekit.load: local experts"] = [list(ep.local_experts), int(ep.w13.shape[0]), single.quant]
    return results


class _RecordingFiles:
    """Records, while active, which tensors CheckpointFiles reads whole and which by rows."""

    def __enter__(self):
        from moekit.checkpoints.files import CheckpointFiles

        self.cls, self.whole, self.rows = CheckpointFiles, [], {}
        self.saved = (CheckpointFiles.__getitem__, CheckpointFiles.read_rows)
        get, read_rows = self.saved
        CheckpointFiles.__getitem__ = lambda files, name: (self.whole.append(name), get(files, name))[1]
        CheckpointFiles.read_rows = lambda files, name, rows: (self.rows.__setitem__(name, list(rows)),
                                                               read_rows(files, name, rows))[1]
        return self

    def __exit__(self, *exc):
        self.cls.__getitem__, self.cls.read_rows = self.saved

    def summary(self, local) -> dict:
        return {"whole": sorted(n for n in self.whole if ".experts." in n),
                "rows": sorted(n for n, rows in self.rows.items() if rows == list(local)),
                "other rows": sorted(n for n, rows in self.rows.items() if rows != list(local))}


def _fused_checkpoints(rank: int) -> dict:
    import sys
    import tempfile
    from pathlib import Path

    from safetensors.torch import save_file

    from moekit.checkpoints.files import CheckpointFiles

    sys.path.insert(0, str(Path(__file__).parent / "checkpoints"))
    from _producers import write_gpt_oss_mxfp4

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # float: gpt-oss's transposed, interleaved [E, H, 2I] / [E, I, H] tensors with biases
        torch.manual_seed(0)
        kw = dict(activation="swigluoai", gate_up_layout="interleaved", expert_bias=True, router_bias=True)
        single = moekit.MoE(E, K, H, I, dtype=torch.float32, device="cpu", **kw)
        sd = {"mlp.router.weight": single.router.weight, "mlp.router.bias": single.router.bias,
              "mlp.experts.gate_up_proj": single.w13.transpose(1, 2), "mlp.experts.down_proj": single.w2.transpose(1, 2),
              "mlp.experts.gate_up_proj_bias": single.w13_bias, "mlp.experts.down_proj_bias": single.w2_bias}
        save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(Path(tmp) / "model.safetensors"))
        ep = moekit.MoE(E, K, H, I, dtype=torch.float32, device="cpu", parallel=moekit.ExpertParallel(timeout_s=60),
                        **kw)
        with _RecordingFiles() as recorded:
            moekit.load_hf_state_dict(ep, CheckpointFiles(tmp), prefix="mlp.")
        torch.manual_seed(900 + rank)
        _check(results, "all-to-all/fused float checkpoint read by rows", single, ep, torch.randn(6 + rank, H))
        results["fused float reads"] = recorded.summary(ep.local_experts)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        write_gpt_oss_mxfp4(Path(tmp), e=E)
        (_, single), = moekit.load(tmp, device="cpu", dtype=torch.float32).items()
        with _RecordingFiles() as recorded:
            (_, ep), = moekit.load(tmp, device="cpu", dtype=torch.float32,
                                   parallel=moekit.ExpertParallel(timeout_s=60)).items()
        torch.manual_seed(950 + rank)
        _check(results, "all-to-all/gpt-oss mxfp4 checkpoint read by rows", single, ep,
               torch.randn(5 + rank, single.hidden_size))
        results["fused mxfp4 reads"] = recorded.summary(ep.local_experts)
    return results


def dead_rank(rank: int, world: int) -> dict:
    """Rank 1 leaves before the forward; rank 0 must get an ExpertParallelError within the timeout."""
    results = {}
    parallel = moekit.ExpertParallel(timeout_s=3)
    _, ep = _pair(parallel)
    if rank == 1:
        os._exit(0)
    start = time.monotonic()
    results["error"] = _error_of(ep, 4, ExpertParallelError)
    results["seconds"] = time.monotonic() - start
    return results


def _error_of(layer, tokens: int, error: type) -> str | None:
    """The message of the ``error`` a forward on ``tokens`` random tokens raises, or None."""
    try:
        with torch.no_grad():
            layer(torch.randn(tokens, H))
    except error as e:
        return str(e)
    return None


def run(rank: int, world: int, port: int, out_dir: str, what: str) -> None:
    # this rank's stderr to a file: a rank that dies shows the test why (C++ aborts print only there)
    log = os.open(os.path.join(out_dir, f"rank{rank}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 2)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        results = {"scenarios": scenarios, "dead_rank": dead_rank}[what](rank, world)
    except BaseException:
        traceback.print_exc()  # into the log the test reads
        raise
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    if what == "scenarios":
        dist.barrier()  # every rank's results are on disk before any rank leaves
    # Leave without gloo's teardown: when a peer's sockets close first, gloo's event-loop thread can
    # throw on the dead connection and abort this process (SIGABRT, seen once in CI; pytorch/gloo#514).
    # The results are on disk, so nothing is lost by skipping it.
    os._exit(0)
