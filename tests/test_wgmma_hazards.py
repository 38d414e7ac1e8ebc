"""benchmarks/wgmma_hazards.py (dev tool): a register an asynchronous wgmma reads, overwritten
before a wait has completed its group, is found; the waits that complete it clear it."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import wgmma_hazards  # noqa: E402

# two K steps' products a loop iteration, A from registers, Triton 3.6's shape of the race: the
# last wait lets one group stay pending, and the loop's top reloads that group's A registers
LOOP = """
        /*0100*/                   LDSM.16.M88.4 R216, [R2+UR8] ;                                       /* 0x0 */
        /*0110*/                   LDSM.16.M88.4 R232, [R3+UR8] ;                                       /* 0x0 */
        /*0120*/                   HGMMA.64x64x16.F32.BF16 R120, R216, gdesc[UR8].tnspB, R120, gsb0 ;   /* 0x0 */
        /*0130*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;                                      /* 0x0 */
        /*0140*/                   HGMMA.64x64x16.F32.BF16 R88, R232, gdesc[UR8].tnspB, R88, gsb0 ;     /* 0x0 */
        /*0150*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;                                      /* 0x0 */
        /*0160*/               @P0 BRA 0x100 ;                                                          /* 0x0 */
        /*0170*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;                                      /* 0x0 */
        /*0180*/                   EXIT ;                                                               /* 0x0 */
"""


def test_a_register_reloaded_across_the_loop_while_its_group_is_pending_is_found():
    found = wgmma_hazards.hazards(wgmma_hazards.parse(LOOP))
    # the first group completes at 0x150 (one newer group, at most one pending); the second does not
    assert found == [dict(mma="140", a="R232", writer="110", writes="LDSM.16.M88.4 R232, [R3+UR8]")]


def test_a_wait_for_every_group_before_the_reload_clears_it():
    fenced = LOOP.replace("/*0150*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1",
                          "/*0150*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0")
    assert fenced != LOOP
    assert wgmma_hazards.hazards(wgmma_hazards.parse(fenced)) == []


def test_a_write_next_to_the_a_registers_is_not_a_hazard_and_wide_writes_count_their_width():
    assert list(wgmma_hazards.written("LDSM.16.M88.2 R230, [R2]")) == [230, 231]
    assert list(wgmma_hazards.written("LDS.128 R228, [R2]")) == [228, 229, 230, 231]
    assert list(wgmma_hazards.written("IMAD.WIDE R4, R2, 0x4, R6")) == [4, 5]
    assert list(wgmma_hazards.written("HGMMA.64x64x16.F32.BF16 R232, R216, gdesc[UR8], R232")) == []
    assert list(wgmma_hazards.written("STS.128 [R2], R232")) == []
    near = LOOP.replace("LDSM.16.M88.4 R232, [R3+UR8]", "LDSM.16.M88.2 R230, [R3+UR8]")
    assert wgmma_hazards.hazards(wgmma_hazards.parse(near)) == []
    overlapping = LOOP.replace("LDSM.16.M88.4 R232, [R3+UR8]", "LDSM.16.M88.2 R231, [R3+UR8]")
    assert [h["writer"] for h in wgmma_hazards.hazards(wgmma_hazards.parse(overlapping))] == ["110"]


def test_shared_memory_operands_are_not_checked():
    ss = LOOP.replace("R120, R216, gdesc", "R120, gdesc").replace("R88, R232, gdesc", "R88, gdesc")
    assert wgmma_hazards.hazards(wgmma_hazards.parse(ss)) == []
