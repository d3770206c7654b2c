"""The tolerance policy against the float64 spec, in one place (the tests and `moekit run` use it):
relative Frobenius error per output dtype."""

import torch

REL_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float64: 1e-12}


def relative_error(out: torch.Tensor, ref64: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in float64; NaN anywhere gives NaN (which fails every bound)."""
    return ((out.double() - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()

# w8a8 schemes quantize the activations too: their error against the spec (which does not) is the
# activation quantization's, measured on Gaussian inputs at ~0.02-0.05 (fp8 e4m3) and ~0.01 (int8).
ACT_QUANT_REL_TOL = {"fp8_e4m3": 0.08, "int8": 0.03}
