"""``moekit asm``: the kernels a forward would launch, compiled for sm90 on this CPU machine (Triton's
wheel carries ptxas), with the compiler's report. Run as a subprocess: the tests' own process
defines moekit's kernels for the interpreter, which compiles nothing."""

import os
import re
import subprocess
import sys

from moekit.cli.main import main
from moekit.triton_ops.offline_compile import _instructions, _main_loop


def _asm(*argv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "moekit.cli", "asm", *argv, "--dump", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_asm_compiles_the_int8_pair_loop_for_sm90(tmp_path):
    done = _asm("--shape", "8,2,256,128", "--quant", "w8a16", "--tokens", "64", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    row = re.search(r"gemm1_quant\s*│\s*(\d+)\s*│\s*(\d+)×(\d+)\s*│\s*(\d+)\s*│\s*(\d+)", out)
    assert row, out
    assert int(row.group(4)) > 0 and int(row.group(5)) == 0  # registers, no stack
    # the swapped loop as the GPU compiles it: int8 pairs by PTX (PRMT, LOP3, HFMA2) feeding wgmma
    loop = re.search(r"gemm1_quant: (\d+): (.*)", out)
    assert loop and all(op in loop.group(2) for op in ("LOP3", "PRMT", "HFMA2")), out
    assert "swapped (W @ x^T)" in out
    sass = next(p for p in tmp_path.iterdir() if p.name.endswith("gemm1_quant.sass")).read_text()
    assert "HGMMA" in sass and "prmt.b32 p" in next(p for p in tmp_path.iterdir()
                                                     if p.name.endswith("gemm1_quant.ptx")).read_text()


def test_asm_refuses_to_run_under_the_interpreter(capsys):
    assert main(["asm", "--shape", "8,2,256,128", "--tokens", "1"]) == 2
    assert "without TRITON_INTERPRET=1" in capsys.readouterr().err


def test_the_main_loop_is_the_innermost_one_with_tensor_core_instructions():
    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
.L_x_2:
        /*0020*/                   LOP3.LUT R3, R3, 0xf, RZ, 0xc0, !PT ;
.L_x_4:
        /*0030*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0040*/              @!P0 BRA `(.L_x_2) ;
        /*0050*/                   FADD R4, R4, R5 ;
        /*0060*/              @!P1 BRA `(.L_x_1) ;
        /*0070*/                   EXIT ;
.L_x_3:
        /*0080*/              @!P2 BRA `(.L_x_3) ;
        /*0090*/                   BRA `(.L_x_4);
"""
    # the K loop (.L_x_2), not the loop around it, the spin wait at .L_x_3, nor the span from .L_x_4
    # to the unconditional jump back out of that wait
    loop = _main_loop(_instructions(sass))
    assert dict(loop) == {"HGMMA": 1, "LOP3": 1, "BRA": 1}
    cuda_cores = sass.replace("HGMMA.64x64x16.F32.BF16", "FFMA")  # no tensor cores: the longest loop
    assert sum(_main_loop(_instructions(cuda_cores)).values()) == 6


_DEQUANTIZING = re.compile(r"^\s*(lop3|fma|prmt|mul\.lo|ld\.shared)\b")


def test_swapped_loop_retires_each_dot_before_writing_operand_registers(tmp_path):
    # ptxas 12.8 (Triton 3.6's) may reuse the A-operand registers of wgmmas still in flight for the
    # next dequantization (undefined behaviour, seen on an H200 as wrong results and an illegal
    # address): each K step's dot is retired (wgmma.wait_group 0) before any dequantizing
    # instruction runs (weight_only_swapped._retire_dots), and ptxas then keeps each dot's wgmmas
    # back to back instead of serializing every one (its note C7513, which moekit asm reports).
    for quant in ("w4a16-g32", "mxfp4"):
        done = _asm("--shape", "8,2,256,128", "--quant", quant, "--tokens", "64", tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "swapped (W @ x^T)" in done.stdout
        assert "serialized its wgmmas" not in done.stdout, done.stdout
        assert "A registers of an unfinished wgmma" not in done.stdout, done.stdout
        for name in ("gemm1_quant", "gemm2_quant"):
            ptx = next(p for p in tmp_path.iterdir() if p.name.endswith(f"{name}.ptx") and quant in p.name)
            in_flight, dots = False, 0
            for line in ptx.read_text().splitlines():
                if "wgmma.mma_async" in line:
                    dots += not in_flight
                    in_flight = True
                elif "wgmma.wait_group.sync.aligned 0;" in line:
                    in_flight = False
                else:
                    assert not (in_flight and _DEQUANTIZING.match(line)), f"{quant} {name}: {line.strip()}"
            assert dots >= 1, f"{quant} {name}: no wgmma"


def _layouts(ttgir: str) -> dict[str, str]:
    return dict(re.findall(r"^#(\w+) = (.*)$", ttgir, flags=re.M))


def test_word_ptx_gets_the_bytes_in_the_order_it_assumes(tmp_path):
    # paired_dequant's word PTX reads four bytes packed as [row r byte 2i, row r+8 byte 2i, row r
    # byte 2i+1, row r+8 byte 2i+1]: the first two register bases of its operand's layout must be
    # row + 8, then column + 1 (quant/code_order.py). A Triton that packs otherwise fails here.
    for scheme in ("w4a16-g32", "mxfp4"):
        done = _asm("--shape", "8,2,256,128", "--quant", scheme, "--tokens", "64", tmp_path=tmp_path / scheme)
        assert done.returncode == 0, done.stderr
        for name in ("gemm1_quant", "gemm2_quant"):
            ttgir = next(p for p in (tmp_path / scheme).iterdir() if p.name.endswith(f"{name}.ttgir")).read_text()
            layouts = _layouts(ttgir)
            operands = re.findall(r"elementwise_inline_asm .*packed_element = 4 .*?: tensor<\d+x\d+xi8, #(\w+)>", ttgir)
            assert operands, f"{scheme} {name}: no word PTX"
            for layout in operands:
                assert re.search(r"register = \[\[8, 0\], \[0, 1\]", layouts[layout]), layouts[layout]
