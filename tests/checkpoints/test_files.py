"""Checkpoint files read lazily (single file, sharded with an index), and MoE blocks found by name."""

import json

import pytest
import torch
from safetensors.torch import save_file

from moekit.checkpoints.files import CheckpointFiles
from moekit.load import block_prefixes


def test_sharded_checkpoint_through_its_index(tmp_path):
    save_file({"a.weight": torch.ones(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b.weight": torch.zeros(3)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    files = CheckpointFiles(tmp_path)
    assert sorted(files) == ["a.weight", "b.weight"] and "b.weight" in files and len(files) == 2
    assert torch.equal(files["b.weight"], torch.zeros(3))
    with pytest.raises(KeyError):
        files["c.weight"]


def test_shards_without_an_index(tmp_path):
    save_file({"x": torch.ones(1)}, str(tmp_path / "one.safetensors"))
    save_file({"y": torch.ones(1)}, str(tmp_path / "two.safetensors"))
    assert sorted(CheckpointFiles(tmp_path)) == ["x", "y"]


def test_index_naming_a_missing_shard(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(ValueError, match="names shard\\(s\\) not in the directory: \\['gone.safetensors'\\]"):
        CheckpointFiles(tmp_path)


def test_no_safetensors(tmp_path):
    with pytest.raises(ValueError, match="no safetensors files in"):
        CheckpointFiles(tmp_path)


def test_block_prefixes_in_layer_order():
    names = ["model.layers.10.mlp.experts.0.w1.weight", "model.layers.2.mlp.experts.gate_up_proj_blocks",
             "model.layers.2.mlp.gate.weight", "model.layers.0.mlp.down_proj.weight",  # dense layer 0: no experts
             "model.layers.3.block_sparse_moe.experts.1.w2.weight"]
    assert block_prefixes(names) == ["model.layers.2.mlp.", "model.layers.3.block_sparse_moe.",
                                     "model.layers.10.mlp."]


def test_rows_of_a_tensor_read_alone_in_the_order_asked(tmp_path):
    # an expert-parallel rank's experts of a fused [E, ...] tensor: any order, runs and repeats
    fused = torch.randn(7, 3, 5)
    save_file({"experts.w": fused, "other": torch.randn(2)}, str(tmp_path / "model.safetensors"))
    files = CheckpointFiles(tmp_path)
    assert files.shape_of("experts.w") == (7, 3, 5)
    for rows in ([4, 5, 6], [6, 0, 1, 2], [3], [2, 2]):
        assert torch.equal(files.read_rows("experts.w", rows), fused[rows])


def test_take_rows_checks_the_whole_tensors_shape():
    from moekit.integrations.hf_state_dict import _Reader

    fused = torch.randn(4, 6)
    reader = _Reader({"p.experts.w": fused}, "p.")
    assert torch.equal(reader.take_rows("experts.w", (3, 1), (4, 6)), fused[[3, 1]])
    assert torch.equal(reader.take_rows("experts.w", None, (4, 6)), fused)
    with pytest.raises(ValueError, match=r"'p.experts.w' \(w13\) must have shape \(5, 6\), got \(4, 6\)"):
        reader.take_rows("experts.w", (0,), (5, 6), "w13")
    with pytest.raises(ValueError, match="missing tensor 'p.experts.v'"):
        reader.take_rows("experts.v", (0,), (4, 6))
