"""Dev-only: eager host time per layer forward at 1 token (GPU mostly idle), and per fused_moe call."""
import time, torch, moekit
from torch.profiler import profile, ProfilerActivity
layer = moekit.MoE(128, 8, 2048, 768, dtype=torch.bfloat16, device="cuda")
x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
tw, ti = layer.route(x)
with torch.no_grad():
    for _ in range(20): layer(x); moekit.fused_moe(x, layer.w13, layer.w2, tw, ti)
    torch.cuda.synchronize()
    for name, fn in [("layer", lambda: layer(x)), ("fused_moe", lambda: moekit.fused_moe(x, layer.w13, layer.w2, tw, ti)),
                     ("route", lambda: layer.route(x)), ("kernel.apply", lambda: layer.kernel.apply(x, tw, ti))]:
        for checks in (True, False):
            moekit.set_host_checks(checks)
            torch.cuda.synchronize(); t = time.perf_counter(); n = 300
            for _ in range(n): fn()
            dt = (time.perf_counter() - t) / n * 1e6; torch.cuda.synchronize()
            print(f"host {name:12s} checks={checks}: {dt:6.1f} us/call", flush=True)
    moekit.set_host_checks(False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(50): layer(x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
