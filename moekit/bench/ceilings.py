"""The device's two ceilings, measured once at the start of each run (they vary from run to run and
machine to machine: never reuse a figure): memory bandwidth and dense matmul rate."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moekit.bench.timing import median_ms

STREAM_BYTES = 1 << 30  # 1 GiB: far past any L2, so every byte comes from device memory
MATMUL_N = 8192


@dataclass(frozen=True)
class Ceilings:
    copy_bytes_per_s: float  # device-to-device copy, bytes read plus bytes written
    read_bytes_per_s: float  # read-only reduction (sum)
    matmul_flops_per_s: float  # MATMUL_N³ torch.mm on random data
    matmul_dtype: str

    @property
    def bandwidth(self) -> float:
        # A read-only stream can beat a copy on some parts (H200): take the better one.
        return max(self.copy_bytes_per_s, self.read_bytes_per_s)


def measure_ceilings(device: torch.device, dtype: torch.dtype) -> Ceilings:
    """Time a 1 GiB copy, a 1 GiB sum and an 8192³ matmul in ``dtype`` with ``median_ms``."""
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
    torch.cuda.empty_cache()
    return Ceilings(
        copy_bytes_per_s=2 * STREAM_BYTES / copy_s,
        read_bytes_per_s=STREAM_BYTES / read_s,
        matmul_flops_per_s=2 * MATMUL_N**3 / mm_s,
        matmul_dtype=str(dtype).removeprefix("torch."),
    )
