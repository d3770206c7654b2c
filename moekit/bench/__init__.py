"""``moekit bench``: moekit's forward against a grouped-GEMM MoE and a transformers-style eager loop,
per model shape and token count, with a roofline floor measured on the device in the same run.

One idea per module: ``ceilings`` (bandwidth and matmul rate), ``floor`` (the roofline of one cell),
``inputs`` (rotated input sets), ``baselines`` (the eager loop and the float32 reference),
``check`` (correctness of one output), ``timing`` (CUDA-graph rotation and ``do_bench``),
``results`` (the data written as JSON), ``provenance`` (device and software), ``runner`` (the
loop over shapes and cells), ``report`` (rich tables) and ``plot`` (matplotlib).

Importing this package imports neither triton nor matplotlib: they load when a run or a plot needs them.
"""
