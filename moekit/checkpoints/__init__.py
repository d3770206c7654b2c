"""Loading quantized Mixture-of-Experts checkpoints into ``moekit.MoE`` layers.

One file per checkpoint layout (compressed_tensors.py, hf_fp8.py, gpt_oss_mxfp4.py) turns that
layout's tensors into moekit's quantized layout; per_expert.py and gate_up.py stack per-expert
projections into w13/w2; block.py loads one MoE block (router, experts, shared experts) from a
state dict; model_config.py maps a model's config.json to ``MoE(...)`` arguments; files.py reads
safetensors shards lazily; ``moekit.load`` (moekit/load.py) puts them together.

Every reader validates all its tensors (names, shapes, dtypes, group sizes) before converting any
(only the agreement of gate and up — act-order g_idx, nvfp4 global scales — is checked while they
are stacked), and a layer is only changed once every tensor of its block has been read and converted.
"""

from moekit.checkpoints.block import load_quantized_state_dict

__all__ = ["load_quantized_state_dict"]
