"""Expert parallelism on gloo with spawned CPU ranks: the EP layer's output equals the single-device
layer's (fp32, rel <= 1e-5) for 2 and 4 ranks, both communications, uneven token counts, a rank
that receives nothing, a rank that sends nothing, redundant expert replicas; a dead rank gives the
survivor a clear error within the timeout."""

import json
import socket

import pytest
import torch.multiprocessing as mp

import ep_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, what: str, tmp_path) -> list[dict]:
    """Each rank's results. A rank is judged by the results it wrote, not by how its process ended:
    gloo may abort a process whose peer closed its sockets first (pytorch/gloo#514), after the
    results are on disk. A rank that wrote nothing fails the test with every rank's exit code."""
    context = mp.start_processes(ep_worker.run, args=(world, _free_port(), str(tmp_path), what), nprocs=world,
                                 join=False, start_method="spawn")
    for process in context.processes:
        process.join(timeout=300)
    files = [tmp_path / f"rank{r}.json" for r in range(world)]
    if what == "scenarios" and not all(f.exists() for f in files):
        codes = [p.exitcode for p in context.processes]
        for p in context.processes:
            p.kill()
        logs = {r: (tmp_path / f"rank{r}.log").read_text()[-3000:] for r in range(world)
                if (tmp_path / f"rank{r}.log").exists()}
        raise AssertionError(f"{world} ranks: results missing from ranks "
                             f"{[r for r, f in enumerate(files) if not f.exists()]}; exit codes {codes}; "
                             f"each rank's stderr (tail): {logs}")
    return [json.loads(f.read_text()) for f in files if f.exists()]


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"{w}-ranks")
def ranks(request, tmp_path_factory):
    world = request.param
    return world, _spawn(world, "scenarios", tmp_path_factory.mktemp(f"ep{world}"))


CASES = [f"{comm}/{case}" for comm in ("all-to-all", "fixed", "all-gather") for case in (
    "all tokens to experts 0 and 1", "all tokens to one expert", "rank 1 sends zero tokens", "redundant replicas of experts 0 and 5")]


@pytest.mark.parametrize("case", CASES + ["all-to-all/uniform", "fixed/uniform", "all-gather/uniform",
                                  "all-to-all/after rebalancing", "all-to-all/load_hf_state_dict of all experts",
                                  "all-to-all/quantized w4a16-g32-asym", "all-to-all/quantized fp8-block128",
                                  "fp8 dispatch/capacity None", "fp8 dispatch/capacity 16",
                                  "chunks of 3/capacity None", "chunks of 3/capacity 4",
                                  "all-to-all/fp8 checkpoint block read by expert",
                                  "all-to-all/moekit.load of an fp8 checkpoint directory",
                                  "all-to-all/fused float checkpoint read by rows",
                                  "all-to-all/gpt-oss mxfp4 checkpoint read by rows"]
                         + [f"{kind}/capacity {c}" for kind in ("weight on input", "gpt-oss swiglu, biases", "relu2")
                            for c in (None, 16)])
def test_expert_parallel_output_equals_single_device(ranks, case):
    world, results = ranks
    assert len(results) == world
    for rank, res in enumerate(results):
        (key,) = [k for k in res if k.startswith(case)]
        assert res[key]["shape_ok"], (rank, key)
        assert res[key]["rel"] <= 1e-5, (rank, key, res[key])


def test_rebalancing_a_skewed_load_adds_replicas_and_cuts_the_imbalance(ranks):
    world, results = ranks
    eplb = results[0]["eplb"]
    assert all(r["eplb"]["before"] == eplb["before"] and r["eplb"]["after"] == eplb["after"] for r in results)
    assert eplb["after"] < eplb["before"]
    assert sum(eplb["replicas"]) == world * (8 // world + 1) and max(eplb["replicas"]) > 1
    assert sorted(e for r in results for e in r["eplb"]["local"]) == sorted(
        e for e, n in enumerate(eplb["replicas"]) for _ in range(n))


def test_each_rank_holds_its_slice_and_explains_it(ranks):
    world, results = ranks
    held = [r["local_experts"] for r in results]
    assert all(r["state_dict_w13_rows"] == len(h) for r, h in zip(results, held))
    for rank, res in enumerate(results):
        assert f"rank {rank} of {world} holds" in res["explain"]
        assert "all-to-all" in res["explain"] and "chosen" in res["explain"]


def test_a_checkpoint_block_is_read_only_for_the_ranks_own_experts(ranks):
    _, results = ranks
    for res in results:
        assert res["hf block: other ranks' tensors read"] == []
        assert res["fp8 checkpoint: other ranks' tensors read"] == []
        assert res["fp8 checkpoint: own expert tensors read"] == 2 * 3 * res["fp8 checkpoint: own experts"]


def test_fused_expert_tensors_are_read_by_the_ranks_rows(ranks):
    # gpt-oss's fused [E, ...] tensors in safetensors: each rank reads its own experts' rows of each
    # (CheckpointFiles.read_rows), never a whole expert tensor nor another rank's rows
    _, results = ranks
    for res in results:
        floats, mxfp4 = res["fused float reads"], res["fused mxfp4 reads"]
        assert floats["whole"] == [] and floats["other rows"] == []
        assert floats["rows"] == ["mlp.experts.down_proj", "mlp.experts.down_proj_bias", "mlp.experts.gate_up_proj",
                                  "mlp.experts.gate_up_proj_bias"]
        assert mxfp4["whole"] == [] and mxfp4["other rows"] == []
        assert {n.rsplit(".", 1)[-1] for n in mxfp4["rows"]} >= {"down_proj_blocks", "down_proj_scales",
                                                                 "gate_up_proj_blocks", "gate_up_proj_scales"}


def test_moekit_load_builds_each_ranks_slice(ranks):
    world, results = ranks
    held = [r["moekit.load: local experts"] for r in results]
    assert sorted(e for experts, _, _ in held for e in experts) == list(range(4))  # the checkpoint's 4 experts
    assert all(rows == len(experts) and quant == "fp8-block128" for experts, rows, quant in held)


def test_more_tokens_than_the_fixed_capacity_is_refused(ranks):
    _, results = ranks
    for res in results:
        assert "exceed the expert-parallel capacity max_tokens_per_rank=4" in res["capacity_error"]


def test_decode_graphs_need_the_fixed_capacity_form_and_a_gpu(ranks):
    _, results = ranks
    for res in results:
        counted, fixed = res["decode_graphs_errors"]
        assert counted.startswith("decode graphs need a forward without host syncs: this expert-parallel layer "
                                  "moves tokens by all-to-all")
        assert "max_tokens_per_rank" in counted
        assert fixed == "decode graphs are CUDA graphs: this layer is on cpu"


def test_dead_rank_gives_the_survivor_an_error_within_the_timeout(tmp_path):
    results = _spawn(2, "dead_rank", tmp_path)
    (survivor,) = results
    assert survivor["error"] is not None
    assert "rank 0 of 2" in survivor["error"] and "peer rank may have died" in survivor["error"]
    assert survivor["seconds"] < 3 + 10
