"""Dev-only quick timing (not committed): triton fused_moe by graph replay vs grouped_mm eager."""
import json, os, sys, time, torch, triton, triton.testing
import moekit
from moekit.activations import GateUpLayout, parse_activation
torch.backends.cuda.matmul.allow_tf32 = False
OUT = os.environ.get("OUT", "/tmp")
SHAPES = {"mixtral-8x7b": (8, 2, 4096, 14336, "silu", False, "concatenated"),
          "qwen3-30b-a3b": (128, 8, 2048, 768, "silu", False, "concatenated"),
          "deepseek-v3": (256, 8, 7168, 2048, "silu", False, "concatenated"),
          "gpt-oss-120b": (128, 4, 2880, 2880, "swigluoai", True, "interleaved")}
TOKENS = [int(t) for t in os.environ.get("TOKENS", "1,8,64,256,1024,4096,16384").split(",")]
names = sys.argv[1:] or list(SHAPES)
def med(fn, rep=100):
    return 1e3 * triton.testing.do_bench(fn, warmup=20, rep=rep, return_mode="median")
a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda"); b = torch.empty_like(a)
bw = 2 * a.numel() / (med(lambda: b.copy_(a)) * 1e-6)
af = torch.randn(1 << 28, device="cuda")
bw = max(bw, af.numel() * 4 / (med(lambda: af.sum()) * 1e-6)); del a, b, af
m = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
fl = 2 * 8192**3 / (med(lambda: m @ m) * 1e-6); del m
print(f"ceilings: {bw/1e12:.2f} TB/s, {fl/1e12:.0f} TFLOP/s", flush=True)
rows = []
for name in names:
    E, k, H, I, act, bias, layout = SHAPES[name]
    torch.cuda.empty_cache()
    w13 = torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16) / H**0.5
    w2 = torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16) / I**0.5
    b13 = (0.1 * torch.randn(E, 2 * I, device="cuda")).bfloat16() if bias else None
    b2 = (0.1 * torch.randn(E, H, device="cuda")).bfloat16() if bias else None
    per_expert = (w13[0].numel() + w2[0].numel() + (2 * I + H if bias else 0)) * 2
    for T in TOKENS:
        sets = []
        nsets = 4 if T <= 4096 else 2
        for _ in range(nsets):
            x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
            tw, ti = moekit.route(torch.randn(T, E, device="cuda"), k)
            sets.append((x, tw, ti))
        hit = sum(len(torch.unique(s[2])) for s in sets) / nsets
        floor = max((hit * per_expert + 2 * T * H * 2) / bw, 2 * T * k * 3 * H * I / fl) * 1e6
        f = lambda s, backend=None: moekit.fused_moe(s[0], w13, w2, s[1], s[2], act, b13, b2, gate_up_layout=layout, backend=backend)
        for s in sets: f(s)
        torch.cuda.synchronize()
        graphs = []
        for s in sets:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                f(s)
            graphs.append(g)
        i = [0]
        def replay():
            graphs[i[0] % len(graphs)].replay(); i[0] += 1
        t_tr = med(replay)
        try:
            j = [0]
            def gm():
                f(sets[j[0] % nsets], "torch-grouped-mm"); j[0] += 1
            t_gm = med(gm, rep=50)
        except Exception as e:
            t_gm = float("nan")
        del graphs
        r = dict(shape=name, tokens=T, triton_us=t_tr, grouped_mm_us=t_gm, floor_us=floor, pct=100 * floor / t_tr)
        rows.append(r)
        print(f"{name:14s} {T:6d}  triton {t_tr:9.1f} us  {r['pct']:5.1f}% floor  grouped_mm {t_gm:9.1f}  floor {floor:8.1f}", flush=True)
    del w13, w2, b13, b2
json.dump(dict(bw=bw, flops=fl, rows=rows), open(f"{OUT}/timing.json", "w"), indent=1)
