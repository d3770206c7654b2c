"""Names of the quant schemes and the method behind each. ``parse_quant`` turns a user's string into
the canonical name; ``method_for`` gives the scheme's (stateless) method."""

from __future__ import annotations

from moekit.quant import fp8, int8_w8a8, int_weight_only, mxfp4, nvfp4
from moekit.quant.method import QuantMethod

UNQUANTIZED = "none"

METHODS: dict[str, QuantMethod] = {
    **fp8.METHODS, **int8_w8a8.METHODS, **int_weight_only.METHODS, **mxfp4.METHODS, **nvfp4.METHODS,
}

# Short names users type, and the scheme each stands for.
ALIASES = {"fp8": "fp8-per-tensor", "fp8-block": "fp8-block128", "w8a8": "int8-w8a8", "int8": "int8-w8a8",
           "w4a16": "w4a16-g128", "w8a16": "w8a16-ch", "nvfp4a16": "nvfp4", "mxfp4a16": "mxfp4"}

KNOWN_SCHEMES = (UNQUANTIZED, *METHODS)


def parse_quant(quant: str | None) -> str:
    """Return the canonical scheme name for ``quant`` (None means unquantized)."""
    if quant is None:
        return UNQUANTIZED
    if not isinstance(quant, str):
        raise TypeError(f"quant must be a scheme name (str) or None, got {type(quant).__name__}")
    name = quant.strip().lower()
    name = ALIASES.get(name, name)
    if name in KNOWN_SCHEMES:
        return name
    raise ValueError(f"unknown quant scheme {quant!r}; expected one of {KNOWN_SCHEMES} or an alias {sorted(ALIASES)}")


def method_for(scheme: str) -> QuantMethod:
    try:
        return METHODS[parse_quant(scheme)]
    except KeyError:
        raise ValueError(f"scheme {scheme!r} is unquantized: it has no quant method") from None
