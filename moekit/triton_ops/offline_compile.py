"""Compile recorded launches (launcher.capture_launches) for a GPU architecture on a machine without
a GPU, and read the compiler's report: registers, spills, shared memory, and the instruction mix of
the kernel's main loop in the SASS.

Why: kernel work reads these before it changes tiles at random, and GPU time is scarce. Triton's
wheel carries ptxas, cuobjdump and nvdisasm, so a CPU machine compiles exactly what the GPU would
(same triton version) — this is how the int8 pair dequantization was measured at 424 -> 284
instructions per K step before any GPU ran it. A launch is specialized as Triton's JIT would
specialize it (its own ``native_specialize_impl``: dtypes, 16-byte alignment, integers equal to 1
or divisible by 16), taking a meta tensor's address as aligned, as CUDA allocations are.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

from moekit.triton_ops.launcher import Launch


@dataclass(frozen=True)
class KernelReport:
    launch: Launch
    registers: int
    stack_bytes: int  # per thread: spills and local arrays
    shared_bytes: int
    loop_instructions: collections.Counter  # opcode -> count in the main loop (_main_loop; empty: none)
    layout_conversions: int  # convert_layout ops in the TTGIR
    shared_stores: int  # local_store ops in the TTGIR (a tile written back to shared memory)
    wgmma_serialized: str | None = None  # why ptxas serialized the kernel's wgmmas (its C7513 note); None: it did not
    wgmma_hazards: int = 0  # writes to an unretired wgmma's A registers in the main loop (wgmma_checks.py)

    @property
    def name(self) -> str:
        return self.launch.kernel.__name__

    def loop_mix(self, top: int = 8) -> str:
        total = sum(self.loop_instructions.values())
        if not total:
            return "no loop"
        mix = ", ".join(f"{op} {n}" for op, n in self.loop_instructions.most_common(top))
        return f"{total}: {mix}"


def compile_launch(launch: Launch, arch: int = 90):
    """The compiled kernel Triton would build for ``launch`` on an sm_``arch`` GPU."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    fn = launch.kernel
    if not hasattr(fn, "arg_names") or type(fn).__name__ == "InterpretedFunction":
        raise RuntimeError("offline compilation needs Triton's compiler: unset TRITON_INTERPRET")
    names = fn.arg_names
    signature, constexprs, attrs = {}, dict(launch.constexprs), {}
    declared = {p.name for p in fn.params if p.is_constexpr}
    for i, (name, arg) in enumerate(zip(names, launch.args)):
        kind, key = native_specialize_impl(BaseBackend, arg, False, True, True)
        if name in declared:  # a value passed positionally to a tl.constexpr parameter
            signature[name] = "constexpr"
            constexprs[name] = arg
        elif kind == "constexpr":
            signature[name] = "constexpr"
            constexprs[name] = key
        else:
            signature[name] = kind
            if key == "D":
                attrs[(i,)] = [["tt.divisibility", 16]]
    for name in names[len(launch.args):]:
        signature[name] = "constexpr"
    source = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=launch.num_warps, num_stages=launch.num_stages))


def report(launch: Launch, compiled) -> KernelReport:
    """What the compiler made of ``launch``: resources from the cubin, the SASS's main loop."""
    usage = _on_cubin(compiled, "cuobjdump", "--dump-resource-usage")
    from moekit.triton_ops.wgmma_checks import wgmma_operand_hazards, wgmma_serialization

    sass = sass_text(compiled)
    instructions = _instructions(sass)
    ttgir = compiled.asm["ttgir"]
    return KernelReport(launch, int(re.search(r"REG:(\d+)", usage).group(1)),
                        int(re.search(r"STACK:(\d+)", usage).group(1)), compiled.metadata.shared,
                        _main_loop(instructions), ttgir.count("convert_layout"), ttgir.count("local_store"),
                        wgmma_serialization(compiled), len(wgmma_operand_hazards(sass)))


def sass_text(compiled) -> str:
    """The compiled kernel's SASS (nvdisasm)."""
    return _on_cubin(compiled, "nvdisasm", "-c")


def _on_cubin(compiled, tool: str, *args: str) -> str:
    """The output of one of the CUDA tools Triton's wheel carries, run on the kernel's cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        return _tool(tool, *args, f.name)
    finally:
        os.unlink(f.name)


def _tool(name: str, *args: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return subprocess.run([path, *args], capture_output=True, text=True, check=True).stdout


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^\s*\.(L_x_\d+):")
_TARGET = re.compile(r"\.(L_x_\d+)")


def _instructions(sass: str, modifiers: bool = False) -> list[tuple[bool, str, str, str | None]]:
    """(predicated, opcode without modifiers (with them: ``modifiers``), operands, label placed just
    before it) per instruction."""
    out, label = [], None
    for line in sass.splitlines():
        placed = _LABEL.match(line)
        if placed:
            label = placed.group(1)
            continue
        m = _LINE.search(line)
        if m:
            opcode = m.group(3) if modifiers else m.group(3).split(".")[0]
            out.append((m.group(2) is not None, opcode, m.group(4), label))
            label = None
    return out


_MMA = {"HGMMA", "HMMA", "IMMA", "QGMMA", "IGMMA"}


def _main_loop(instructions) -> collections.Counter:
    """The opcodes of the kernel's main loop (main_loop_span)."""
    a, b = main_loop_span(instructions)
    return collections.Counter(op for _, op, _, _ in instructions[a:b])


def main_loop_span(instructions) -> tuple[int, int]:
    """Where the kernel's main loop lies in ``instructions`` (_instructions): of the loops (predicated
    backward branches to a label; an unconditional one jumps back from an out-of-line wait) issuing
    tensor-core instructions and holding no such loop inside, the longest (a persistent kernel's tile
    loop holds its K loop; a K loop may be followed by a shorter tail loop); for CUDA-core kernels
    the longest loop. (0, 0): no loop."""
    where = {label: i for i, (_, _, _, label) in enumerate(instructions) if label}
    spans = []
    for index, (predicated, opcode, operands, _) in enumerate(instructions):
        target = _TARGET.search(operands) if opcode == "BRA" and predicated else None
        start = where.get(target.group(1)) if target else None
        if start is not None and start < index:
            spans.append((start, index + 1))
    ops = [op for _, op, _, _ in instructions]
    mma = [(a, b) for a, b in spans if _MMA.intersection(ops[a:b])]
    innermost = [(a, b) for a, b in mma if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in mma)]
    return max(innermost or spans, key=lambda span: span[1] - span[0], default=(0, 0))


def forward_launches(shape, scheme: str, tokens: int, tiles) -> list[Launch]:
    """The launches of one Triton experts forward at ``shape`` (tuning.tuner.TuneShape) with ``tiles``,
    on meta tensors: nothing runs, nothing of the model's size is allocated. One expert's weights
    stand for all (the kernels' code depends on the weights' dtypes and strides, not on E), quantized
    on the CPU when ``scheme`` is not "none"."""
    import dataclasses

    import torch

    from moekit.experts import ExpertWeights, TritonExperts
    from moekit.oracle.quantized import convert_weights
    from moekit.quant import method_for
    from moekit.quant.scale_layout import word_padded
    from moekit.triton_ops.experts_kernels import fused_experts
    from moekit.triton_ops.launcher import capture_launches

    H, I = shape.hidden_size, shape.intermediate_size
    rows = 2 * I if shape.activation.gated else I
    meta = dict(device="meta", dtype=shape.dtype)
    if scheme == "none":
        w13, w2, spec = torch.empty(1, rows, H, **meta), torch.empty(1, H, I, **meta), None
    else:
        method = method_for(scheme)
        spec = method.spec

        def on_meta(m):  # (scales laid out as the layer keeps them: quant/scale_layout.py)
            m = dataclasses.replace(m, scale=word_padded(m.scale))
            return dataclasses.replace(m, **{f.name: _to_meta(getattr(m, f.name)) for f in dataclasses.fields(m)
                                            if isinstance(getattr(m, f.name), torch.Tensor)})

        # converted as the layer converts its own for Triton (4-bit codes in MMA order, scales marked)
        converted = convert_weights(TritonExperts, ExpertWeights(method.quantize(torch.randn(1, rows, H)),
                                                                 method.quantize(torch.randn(1, H, I)), quant=spec),
                                    own_codes=True)
        w13, w2 = on_meta(converted.w13), on_meta(converted.w2)
    b13, b2 = (torch.empty(1, rows, **meta), torch.empty(1, H, **meta)) if shape.bias else (None, None)
    x = torch.empty(tokens, H, **meta)
    ids = torch.empty(tokens, shape.top_k, device="meta", dtype=torch.int32)
    weights = torch.empty(tokens, shape.top_k, device="meta", dtype=torch.float32)
    with capture_launches() as launches:
        fused_experts(x, w13, w2, weights, ids, shape.activation, shape.gate_up_layout, tiles, b13, b2, quant=spec)
    return launches


def _to_meta(t):
    """``t`` on the meta device with its strides and storage size (``.to("meta")`` would make a
    padded view contiguous)."""
    import torch

    storage = torch.empty(t.untyped_storage().nbytes() // t.element_size(), dtype=t.dtype, device="meta")
    return storage.as_strided(t.shape, t.stride(), t.storage_offset())
