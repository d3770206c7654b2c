"""Dev-only: cProfile of the eager host path at 1 token."""
import cProfile, pstats, torch, moekit
layer = moekit.MoE(128, 8, 2048, 768, dtype=torch.bfloat16, device="cuda").requires_grad_(False)
x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
moekit.set_host_checks(False)
with torch.inference_mode():
    tw, ti = layer.route(x)
    for _ in range(50): layer(x)
    torch.cuda.synchronize()
    from moekit.triton_ops import launcher
    print("fast path ok:", launcher._fast_path_ok, "cached:", len(launcher._cache))
    pr = cProfile.Profile(); pr.enable()
    for _ in range(200): layer(x)
    pr.disable(); torch.cuda.synchronize()
    pstats.Stats(pr).sort_stats("tottime").print_stats(22)
