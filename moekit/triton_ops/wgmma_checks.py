"""Two things ptxas does to Hopper's wgmma that Triton does not show, read from a compiled kernel
(``moekit asm`` reports both; tests/test_cli_asm.py holds the swapped weight-only loop to them).

- **Serialization** (ptxas note C7513, printed only with ``-v``): when it cannot prove a wgmma
  pipeline safe, ptxas waits for every wgmma before the next instruction, and the tensor cores idle
  between them. Seen for every 4-bit build of the swapped loop while its K step was retired at the
  top of the next step, and where a scale-word K tail loop followed the main loop (docs/facts.md).
- **Operand hazards**: ptxas 12.8 (Triton 3.6's) may give a register that an issued, unfinished
  wgmma still reads as its A operand to another instruction (triton-lang/triton#9433, fixed in
  ptxas 13.3): wrong, run-to-run different results. Found by walking the main loop's SASS twice (its
  back edge), tracking the A registers of HGMMAs not yet retired by a ``WARPGROUP.DEPBAR``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

from moekit.triton_ops.offline_compile import _instructions, main_loop_span

_SERIALIZED = re.compile(r"wgmma\.mma_async instructions are serialized due to (.*?) in the function")
_REGISTER = re.compile(r"^R(\d+)$")


def wgmma_serialization(compiled) -> str | None:
    """Why ptxas serialized the kernel's wgmmas, from its note C7513; None when it did not, or when
    the kernel has none. The PTX is assembled again, by the ptxas Triton compiled it with (Triton 3.9
    takes a newer one for sm90 than the one in its bin folder)."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptx = compiled.asm["ptx"]
    if "wgmma.mma_async" not in ptx:
        return None
    arch = re.search(r"^\.target\s+(sm_(\d+)\w*)", ptx, flags=re.M)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run([get_ptxas(int(arch.group(2))).path, f"-arch={arch.group(1)}", "-v", path, "-o",
                               os.path.join(folder, "kernel.cubin")], capture_output=True, text=True, check=True)
    found = _SERIALIZED.search(done.stdout + done.stderr)  # (the notes go to stderr)
    return found.group(1) if found else None


def wgmma_operand_hazards(sass: str) -> list[str]:
    """The main loop's instructions that write a register an unretired HGMMA reads as its A operand
    (empty: none; see the module docstring)."""
    instructions = _instructions(sass, modifiers=True)
    a, b = main_loop_span(instructions)
    loop = instructions[a:b]
    in_flight: list[set[int]] = []  # the A registers of each unretired HGMMA, oldest first
    hazards = []
    for step, (_predicated, opcode, operands, _label) in enumerate(loop * 2):
        second_pass = step >= len(loop)  # (the first only sets up what is in flight at the back edge)
        fields = [f.strip() for f in operands.split(",")]
        if opcode.startswith("HGMMA"):
            in_flight.append(_registers(fields[1], 4))  # A in registers: 8 16-bit values a thread
        elif opcode.startswith("WARPGROUP.DEPBAR"):
            pending = int(fields[-1], 16)  # wait until at most this many are pending
            in_flight = in_flight[len(in_flight) - pending:] if pending else []
        elif second_pass and any(_registers(fields[0], _width(opcode)) & read for read in in_flight):
            hazards.append(f"{opcode} {operands.strip()}")
    return hazards


def _registers(operand: str, count: int) -> set[int]:
    """The registers ``operand`` names when it is a register (R<n>, ``count`` of them from it)."""
    m = _REGISTER.match(operand)
    return set(range(int(m.group(1)), int(m.group(1)) + count)) if m else set()


def _width(opcode: str) -> int:
    """How many 32-bit registers an instruction writes from its first operand."""
    if ".128" in opcode or opcode.endswith(".M88.4"):
        return 4
    if ".64" in opcode or ".WIDE" in opcode or opcode.endswith(".M88.2"):
        return 2
    return 1
