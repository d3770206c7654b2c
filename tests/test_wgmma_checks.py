"""triton_ops/wgmma_checks.py's reading of SASS for writes to an unfinished wgmma's A registers, on
hand-written loops (the compiled kernels are checked in tests/test_cli_asm.py)."""

from moekit.triton_ops.wgmma_checks import wgmma_operand_hazards


def _sass(*body: str) -> str:
    lines = ["        /*0000*/                   MOV R1, c[0x0][0x28] ;", ".L_x_0:"]
    lines += [f"        /*{16 * (i + 1):04x}*/                   {text} ;" for i, text in enumerate(body)]
    lines.append(f"        /*{16 * (len(body) + 1):04x}*/                   @P0 BRA `(.L_x_0) ;")
    return "\n".join(lines)


def test_a_write_to_an_unfinished_wgmmas_a_registers_is_found():
    sass = _sass("WARPGROUP.ARRIVE", "HGMMA.64x128x16.F32.BF16 R24, R180, gdesc[UR12], R24, gsb0",
                 "LOP3.LUT R182, R3, 0xf000f, R7, 0xea, !PT",  # R180..R183 still read by the HGMMA
                 "WARPGROUP.DEPBAR.LE gsb0, 0x0")
    assert wgmma_operand_hazards(sass) == ["LOP3.LUT R182, R3, 0xf000f, R7, 0xea, !PT"]


def test_writes_after_the_wait_and_to_other_registers_are_fine():
    sass = _sass("WARPGROUP.ARRIVE", "HGMMA.64x128x16.F32.BF16 R24, R180, gdesc[UR12], R24, gsb0",
                 "LOP3.LUT R184, R3, 0xf000f, R7, 0xea, !PT", "WARPGROUP.DEPBAR.LE gsb0, 0x0",
                 "LDS.128 R180, [R9]")
    assert wgmma_operand_hazards(sass) == []


def test_a_wgmma_left_in_flight_at_the_back_edge_counts():
    # the loop's first instruction overwrites what the last iteration's HGMMA may still read (one
    # left pending by the wait); a 64-bit load into R178..R179 stays clear of R180..R183
    def loop(load):
        return _sass(load, "WARPGROUP.ARRIVE", "HGMMA.64x128x16.F32.BF16 R24, R180, gdesc[UR12], R24, gsb0",
                     "WARPGROUP.DEPBAR.LE gsb0, 0x1")

    assert wgmma_operand_hazards(loop("LDS.128 R178, [R9]")) == ["LDS.128 R178, [R9]"]
    assert wgmma_operand_hazards(loop("LDS.64 R178, [R9]")) == []
