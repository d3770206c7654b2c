"""Quantization schemes. One scheme per file as they land; this module maps names to them."""

from moekit.quant.registry import KNOWN_SCHEMES, PLANNED_SCHEMES, parse_quant

__all__ = ["KNOWN_SCHEMES", "PLANNED_SCHEMES", "parse_quant"]
