"""A cheaper launch for moekit's Triton kernels in eager mode.

Triton's ``kernel[grid](...)`` binds and specializes every argument on every call: about 35-50 µs
of host time per launch on the lent H100 machines (triton 3.6), which is most of an eager decode
step. After the first launch of a specialization, moekit keeps the compiled kernel under a key
that holds everything Triton specializes on (tensor dtypes and 16-byte alignment, integers equal
to 1, divisible by 16, or past 32 bits, the constexprs and launch options) and calls its launcher
directly. A specialization seen the first time, the interpreter, or a triton whose launcher does
not take the call, goes through ``kernel[grid]`` (the fast path is then switched off, once).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

_cache: dict[tuple, object] = {}
_fast_path_ok = True
_captured: list[Launch] | None = None  # while capture_launches() is active


@dataclass(frozen=True)
class Launch:
    """One launch as moekit asked for it (recorded by capture_launches, not run)."""
    kernel: object
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict
    num_warps: int
    num_stages: int


@contextlib.contextmanager
def capture_launches():
    """Within this block every launch is recorded instead of run; yields the list. With tensors on
    the meta device a forward then says what it would compile, on a machine without a GPU
    (``moekit asm``: triton_ops/offline_compile.py)."""
    global _captured
    saved, _captured = _captured, []
    try:
        yield _captured
    finally:
        _captured = saved


def launch(kernel, grid: tuple[int, ...], args: tuple, constexprs: dict, num_warps: int, num_stages: int):
    """``kernel[grid](*args, **constexprs, num_warps=..., num_stages=...)``, with the binder skipped
    when this specialization was launched before. ``args`` are the kernel's leading (non-constexpr)
    parameters in order, ``constexprs`` the rest, by name."""
    global _fast_path_ok
    if _captured is not None:
        _captured.append(Launch(kernel, tuple(grid), tuple(args), dict(constexprs), num_warps, num_stages))
        return None
    if not args[0].is_cuda:  # the interpreter
        return kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
    device = args[0].device.index
    key = (kernel, device, num_warps, num_stages, *constexprs.values(), *[
        (a.dtype, not a.data_ptr() & 15) if type(a) is torch.Tensor else _int_or_other(a) for a in args])
    compiled = _cache.get(key) if _fast_path_ok else None
    if compiled is not None:
        try:
            return _run(compiled, grid, device, args, constexprs)
        except TypeError:  # this triton's launcher takes other arguments: use the regular path
            _fast_path_ok = False
    compiled = kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
    if _fast_path_ok and compiled is not None and hasattr(compiled, "run") and hasattr(compiled, "packed_metadata"):
        _cache[key] = compiled
    return compiled


def _run(compiled, grid, device, args, constexprs):
    import triton

    hooks = triton.knobs.runtime
    stream = torch._C._cuda_getCurrentRawStream(device)
    metadata = compiled.launch_metadata(grid, stream, *args, *constexprs.values()) \
        if hooks.launch_enter_hook is not None else None
    g0, g1, g2 = (*grid, 1, 1)[:3]
    compiled.run(g0, g1, g2, stream, compiled.function, compiled.packed_metadata, metadata,
                 hooks.launch_enter_hook, hooks.launch_exit_hook, *args, *constexprs.values())
    return compiled


def _int_or_other(arg):
    """What Triton specializes an integer on (== 1, divisible by 16, its width); other scalars by type."""
    if type(arg) is int:
        return arg == 1, not arg & 15, -(2**31) <= arg < 2**31, arg < 2**63
    return type(arg)


def cdiv(a: int, b: int) -> int:
    """Ceiling division in plain Python: triton.cdiv costs microseconds per host call."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), in plain Python."""
    return 1 << max(n - 1, 0).bit_length()
