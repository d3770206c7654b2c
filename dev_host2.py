"""Dev-only: where the eager host time goes."""
import time, torch, triton, torch.nn.functional as F, moekit
from moekit.triton_ops import experts_kernels as ek, align as al
from moekit.triton_ops.tile_configs import ExpertsTiles, GemmTiles
from moekit.activations import parse_activation, GateUpLayout
def per_call(fn, n=500):
    for _ in range(10): fn()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    dt = (time.perf_counter() - t) / n * 1e6; torch.cuda.synchronize(); return dt
x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
W = torch.randn(128, 2048, device="cuda", dtype=torch.bfloat16)
w13 = torch.randn(128, 1536, 2048, device="cuda", dtype=torch.bfloat16); w2 = torch.randn(128, 2048, 768, device="cuda", dtype=torch.bfloat16)
tw, ti = moekit.route(torch.randn(1, 128, device="cuda"), 8)
tiles = ExpertsTiles(16, GemmTiles(32, 128, 1, 4, 4), GemmTiles(64, 128, 1, 4, 4))
act = parse_activation("silu")
aligned = al.align_pairs_by_expert(ti, 128, 16)
acts = ek.launch_gemm1(x, w13, None, aligned, 8, act, GateUpLayout.CONCATENATED, tiles.gemm1)
rows = torch.empty(8, 2048, device="cuda", dtype=torch.bfloat16); out = torch.empty(1, 2048, device="cuda", dtype=torch.bfloat16)
print("empty", per_call(lambda: torch.empty(8, 2048, device="cuda", dtype=torch.bfloat16)))
print("linear", per_call(lambda: F.linear(x, W)))
print("matmul", per_call(lambda: x @ W.t()))
print("align", per_call(lambda: al.align_pairs_by_expert(ti, 128, 16)))
print("gemm1", per_call(lambda: ek.launch_gemm1(x, w13, None, aligned, 8, act, GateUpLayout.CONCATENATED, tiles.gemm1, acts)))
print("gemm2", per_call(lambda: ek.launch_gemm2(acts, w2, None, tw, aligned, rows, tiles.gemm2)))
print("sum", per_call(lambda: ek.launch_sum(rows, ti, 128, out)))
print("fused_experts", per_call(lambda: ek.fused_experts(x, w13, w2, tw, ti, act, GateUpLayout.CONCATENATED, tiles)))
print("route", per_call(lambda: moekit.route(torch.randn(1, 128, device="cuda"), 8)))
k = ek.LAST_COMPILED["gemm1"]
print("compiled attrs", [a for a in dir(k) if not a.startswith("__")][:40])
import inspect
from triton.runtime import jit
src = inspect.getsource(jit.JITFunction.run)
print(src[:3000])
