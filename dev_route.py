"""Dev-only: where routing-included time goes for DeepSeek-V3 (graph replay of each part)."""
import torch, triton.testing, moekit
from moekit.cli.presets import PRESETS
import dataclasses
p = dataclasses.replace(PRESETS["deepseek-v3"], shared_intermediate_size=None)
layer = moekit.MoE(**p.layer_kwargs(), dtype=torch.bfloat16, device="cuda").requires_grad_(False)
layer.correction_bias.normal_(0, 0.1)
def g(fn):
    fn(); torch.cuda.synchronize(); gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr): fn()
    return 1e3 * triton.testing.do_bench(gr.replay, warmup=20, rep=100, return_mode="median")
with torch.inference_mode():
    for T in (1, 8, 64):
        x = torch.randn(T, 7168, device="cuda", dtype=torch.bfloat16)
        logits = layer.router(x)
        print(T, f"router linear {g(lambda: layer.router(x)):.1f} us, route kernel {g(lambda: moekit.route(logits, 8, 'sigmoid', True, 8, 4, layer.correction_bias, 2.5)):.1f} us, layer.route {g(lambda: layer.route(x)):.1f} us", flush=True)
