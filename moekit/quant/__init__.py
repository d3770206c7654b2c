"""Quantization schemes: one file per scheme (fp8, int8_w8a8, int_weight_only, mxfp4, nvfp4), the
number formats in formats.py, the reference dequantization in dequant.py, and the names here."""

from moekit.quant.registry import KNOWN_SCHEMES, METHODS, method_for, parse_quant
from moekit.quant.spec import QuantizedMatrix, QuantSpec

__all__ = ["KNOWN_SCHEMES", "METHODS", "QuantSpec", "QuantizedMatrix", "method_for", "parse_quant"]
