"""The device's ceilings, measured once at the start of each run (they vary from run to run and
machine to machine: never reuse a figure): memory bandwidth and dense matmul rate; with ``--quant``
also the fp8 and int8 tensor-core rates, only when a benched scheme multiplies in that format."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from moekit.bench.timing import describe_error, median_ms
from moekit.quant.spec import ActQuant, QuantSpec

STREAM_BYTES = 1 << 30  # 1 GiB: far past any L2, so every byte comes from device memory
MATMUL_N = 8192

# The low-precision rates a scheme's matmuls run at (weight-only schemes dequantize to the layer
# dtype and run at its rate).
FP8, INT8 = "fp8", "int8"


@dataclass(frozen=True)
class Ceilings:
    copy_bytes_per_s: float  # device-to-device copy, bytes read plus bytes written
    read_bytes_per_s: float  # read-only reduction (sum)
    matmul_flops_per_s: float  # MATMUL_N³ torch.mm on random data
    matmul_dtype: str
    fp8_flops_per_s: float | None = None  # MATMUL_N³ torch._scaled_mm, e4m3 x e4m3 -> bf16; None: not measured
    int8_ops_per_s: float | None = None  # MATMUL_N³ torch._int_mm, int8 x int8 -> int32; None: not measured
    low_precision_errors: dict | None = None  # {"fp8"|"int8": why the rate could not be measured}

    @property
    def bandwidth(self) -> float:
        # A read-only stream can beat a copy on some parts (H200): take the better one.
        return max(self.copy_bytes_per_s, self.read_bytes_per_s)

    def matmul_rate_for(self, spec: QuantSpec | None) -> tuple[float, str]:
        """(rate, its name) that bounds a scheme's matmuls: fp8/int8 for w8a8 schemes where measured,
        otherwise the layer dtype's (weight-only schemes dequantize to it)."""
        kind = low_precision_kind(spec)
        rate = {FP8: self.fp8_flops_per_s, INT8: self.int8_ops_per_s}.get(kind)
        if rate is None:
            return self.matmul_flops_per_s, self.matmul_dtype
        return rate, kind


def low_precision_kind(spec: QuantSpec | None) -> str | None:
    """FP8, INT8 or None (unquantized or weight-only)."""
    if spec is None:
        return None
    return {ActQuant.FP8: FP8, ActQuant.INT8: INT8}.get(spec.act)


def measure_ceilings(device: torch.device, dtype: torch.dtype, low_precision: Iterable[str] = ()) -> Ceilings:
    """Time a 1 GiB copy, a 1 GiB sum and an 8192³ matmul in ``dtype`` with ``median_ms``; and the
    fp8 / int8 matmul rates named in ``low_precision`` (a rate the device cannot run is recorded
    as an error, and its schemes' floors fall back to the ``dtype`` rate)."""
    # Random data, never zeros: zeros can run faster than real data.
    src = torch.empty(STREAM_BYTES // 4, dtype=torch.float32, device=device).uniform_(-1, 1)
    dst = torch.empty_like(src)
    copy_s = median_ms(lambda: dst.copy_(src)) * 1e-3
    read_s = median_ms(lambda: torch.sum(src)) * 1e-3
    del src, dst
    a = torch.randn(MATMUL_N, MATMUL_N, dtype=dtype, device=device)
    b = torch.randn(MATMUL_N, MATMUL_N, dtype=dtype, device=device)
    c = torch.empty(MATMUL_N, MATMUL_N, dtype=dtype, device=device)
    mm_s = median_ms(lambda: torch.mm(a, b, out=c)) * 1e-3
    del a, b, c
    rates, errors = {}, {}
    for kind in dict.fromkeys(low_precision):
        try:
            rates[kind] = 2 * MATMUL_N**3 / (_LOW_PRECISION_MATMUL[kind](device) * 1e-3)
        except Exception as e:  # noqa: BLE001 - e.g. no fp8 tensor cores before sm89
            errors[kind] = describe_error(e)
    torch.cuda.empty_cache()
    return Ceilings(
        copy_bytes_per_s=2 * STREAM_BYTES / copy_s,
        read_bytes_per_s=STREAM_BYTES / read_s,
        matmul_flops_per_s=2 * MATMUL_N**3 / mm_s,
        matmul_dtype=str(dtype).removeprefix("torch."),
        fp8_flops_per_s=rates.get(FP8),
        int8_ops_per_s=rates.get(INT8),
        low_precision_errors=errors or None,
    )


def _fp8_matmul_ms(device: torch.device) -> float:
    # cuBLASLt's fp8 GEMM wants A row-major and B column-major: B is a transposed row-major matrix.
    a = torch.randn(MATMUL_N, MATMUL_N, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(MATMUL_N, MATMUL_N, device=device).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=device)
    return median_ms(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))


def _int8_matmul_ms(device: torch.device) -> float:
    a = torch.randint(-127, 128, (MATMUL_N, MATMUL_N), dtype=torch.int8, device=device)
    b = torch.randint(-127, 128, (MATMUL_N, MATMUL_N), dtype=torch.int8, device=device).t()
    return median_ms(lambda: torch._int_mm(a, b))


_LOW_PRECISION_MATMUL = {FP8: _fp8_matmul_ms, INT8: _int8_matmul_ms}
