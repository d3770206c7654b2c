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
