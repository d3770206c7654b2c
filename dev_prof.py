"""Dev-only: cProfile of the eager host path at 1 token, and plain timings of its parts."""
import cProfile, pstats, time, torch, moekit
layer = moekit.MoE(128, 8, 2048, 768, dtype=torch.bfloat16, device="cuda").requires_grad_(False)
x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
moekit.set_host_checks(False)
def per_call(fn, n=300):
    for _ in range(20): fn()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    dt = (time.perf_counter() - t) / n * 1e6; torch.cuda.synchronize(); return dt
with torch.inference_mode():
    tw, ti = layer.route(x)
    for name, fn in [("layer", lambda: layer(x)), ("route", lambda: layer.route(x)),
                     ("router linear", lambda: layer.router(x)), ("apply", lambda: layer.kernel.apply(x, tw, ti)),
                     ("fused_moe", lambda: moekit.fused_moe(x, layer.w13, layer.w2, tw, ti))]:
        print(f"{name:14s} {per_call(fn):7.1f} us", flush=True)
    pr = cProfile.Profile(); pr.enable()
    for _ in range(200): layer(x)
    pr.disable(); torch.cuda.synchronize()
    pstats.Stats(pr).sort_stats("cumtime").print_stats(25)
