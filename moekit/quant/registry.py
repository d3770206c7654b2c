"""Names of quantization schemes: the ones built, and the ones planned but not built yet.

A planned scheme is a legal request the library cannot serve yet (NotImplementedError); a name that
is neither is a user error (ValueError)."""

from __future__ import annotations

UNQUANTIZED = "none"

# Built: weights in the activation dtype (fp32, bf16, fp16).
KNOWN_SCHEMES = (UNQUANTIZED,)

# Planned: the schemes of DESIGN.md, each to land in a file of its own under moekit/quant/.
PLANNED_SCHEMES = (
    "fp8-block128",  # DeepSeek-V3: fp8 e4m3 weights, 128x128 block scales
    "fp8-per-tensor",
    "fp8-per-channel",
    "int8-w8a8",
    "w8a16",
    "w4a16-g128",  # Kimi-K2 style int4 weight-only, group 128
    "mxfp4",  # gpt-oss: e2m1 values, e8m0 scales per 32
    "nvfp4",
)


def parse_quant(quant: str | None) -> str:
    """Return the canonical scheme name for ``quant`` (None means unquantized)."""
    if quant is None:
        return UNQUANTIZED
    if not isinstance(quant, str):
        raise TypeError(f"quant must be a scheme name (str) or None, got {type(quant).__name__}")
    name = quant.strip().lower()
    if name in KNOWN_SCHEMES:
        return name
    if name in PLANNED_SCHEMES:
        raise NotImplementedError(
            f"quant scheme {quant!r} is planned but not built yet; built schemes: {KNOWN_SCHEMES}"
        )
    raise ValueError(f"unknown quant scheme {quant!r}; expected one of {KNOWN_SCHEMES + PLANNED_SCHEMES}")
