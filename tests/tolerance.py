"""Assertions of the tolerance policy (moekit/tolerance.py): float outputs against a float64
reference within a per-dtype bound; indices and counts by exact equality."""

import torch

from moekit.tolerance import REL_TOL, relative_error


def assert_close_to_reference(out: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype) -> None:
    """Relative Frobenius error <= REL_TOL[dtype], and every element within that bound of the
    largest reference value (so a row left unwritten cannot hide inside a norm)."""
    assert out.shape == ref64.shape, (out.shape, ref64.shape)
    assert out.dtype == dtype, (out.dtype, dtype)
    assert torch.isfinite(out).all(), "output has non-finite values"
    if ref64.numel() == 0:
        return
    tol = REL_TOL[dtype]
    err = out.double() - ref64
    rel = relative_error(out, ref64)
    assert rel <= tol, f"relative error {rel:.3g} > {tol:g} for {dtype}"
    bound = 4 * tol * ref64.abs().max().clamp_min(1e-30)
    worst = err.abs().max().item()
    assert worst <= bound.item(), f"max elementwise error {worst:.3g} > {bound.item():.3g}"


# fp32 sums keep ~ulps of the sum of their terms' absolute values however small the result: about
# 16 ulps of that magnitude on top of the relative bound (hypothesis found a 1-element output that
# cancelled to 2% of its terms: 1.4e-5 relative, 2.5e-7 absolute).
CANCELLATION = {torch.float32: 1e-6}


def assert_close_allowing_cancellation(out: torch.Tensor, ref64: torch.Tensor, magnitude64: torch.Tensor,
                                       dtype: torch.dtype) -> None:
    """As assert_close_to_reference, with the bound grown by CANCELLATION[dtype] times the terms'
    absolute magnitude (``magnitude64``: the same computation on absolute values, float64)."""
    assert out.shape == ref64.shape == magnitude64.shape, (out.shape, ref64.shape, magnitude64.shape)
    assert out.dtype == dtype, (out.dtype, dtype)
    assert torch.isfinite(out).all(), "output has non-finite values"
    if ref64.numel() == 0:
        return
    tol, cancel = REL_TOL[dtype], CANCELLATION[dtype]
    err = out.double() - ref64
    allowed = tol * ref64.norm() + cancel * magnitude64.norm()
    assert err.norm() <= allowed, f"error {err.norm():.3g} > {allowed:.3g} ({relative_error(out, ref64):.3g} relative)"
    bound = 4 * (tol * ref64.abs().max() + cancel * magnitude64.abs().max()).clamp_min(1e-30)
    worst = err.abs().max().item()
    assert worst <= bound.item(), f"max elementwise error {worst:.3g} > {bound.item():.3g}"
