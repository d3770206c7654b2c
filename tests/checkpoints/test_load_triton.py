"""Loaded layers through the Triton experts backend (CPU: Triton's interpreter, conftest.py): the
loaders' tensors — strides, interleaved rows, biases, act-order g_idx — as the kernels read them.
fp32 only: in the interpreter, 4-bit weight-only kernels in bf16 give garbage even for a layer
quantized on the fly (not a loading matter; on the GPU they are tested in tests_gpu)."""

import pytest
import torch
from _compare import assert_forward_matches, reference_layer
from _producers import ct_scheme, rewrite_act_order, write_compressed_tensors, write_gpt_oss_mxfp4

import moekit


@pytest.mark.parametrize("make", [
    pytest.param(write_gpt_oss_mxfp4, id="gpt-oss-mxfp4"),  # interleaved gate/up, biases, swigluoai
    pytest.param(lambda p: rewrite_act_order(write_compressed_tensors(p, ct_scheme("W4A16", group_size=32)), 32),
                 id="w4a16-g32-act-order"),  # g_idx gathers scales per column
])
def test_loaded_layer_on_triton(tmp_path, make):
    w = make(tmp_path)
    layer = moekit.load(w.path, dtype=torch.float32, device="cpu", backend="triton")[w.prefix]
    assert layer.explain().backend == "triton"
    assert_forward_matches(layer, reference_layer(layer, w.w13, w.w2, w.dense), tokens=8)
