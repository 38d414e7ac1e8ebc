"""Registers a pending warpgroup MMA still reads, overwritten (dev tool, no GPU needed).

A Hopper MMA (HGMMA / IGMMA / QGMMA) may take its A operand from registers ("RS" form:
`HGMMA.64x64x16.F32.BF16 R120, R216, gdesc[UR8], R120`). It runs asynchronously: until a
`WARPGROUP.DEPBAR.LE gsb0, N` has let its group complete, nothing may write those registers.
Session 30 found Triton 3.6 breaking this in the VAE conv's multi-row tiles (the next K step's
LDSM into R216-R231 while the step's products were pending: wrong values on an H100 now and
then, docs/benchmarks.md). This walks the SASS's control flow from each RS-form MMA, counting the
groups committed after its own (the MMA marked `gsb0` closes a group), and reports any
instruction that writes one of its 4 A registers before a wait for at most N groups with N or
more newer groups committed (which completes it).

    python benchmarks/wgmma_hazards.py KERNEL.cubin|KERNEL.sass
    (offline_compile.py reports the count for every kernel it compiles)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from sass_steps import sass

_INS = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);")
_MMA = re.compile(r"^[HIQ]GMMA\S*\s+R\d+,\s*R(\d+),")  # RS form: the A operand is a register
_WAIT = re.compile(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x([0-9a-f]+)")
_DEST = re.compile(r"^(\S+)\s+R(\d+)\b")
A_REGS = 4  # a 64 x K x (16 bytes) A fragment: 4 registers a thread


def parse(text: str) -> list[tuple[int, str]]:
    """(address, instruction) pairs of cuobjdump -sass text."""
    return [(int(m.group(1), 16), m.group(2).strip()) for m in map(_INS.match, text.splitlines()) if m]


def _op(t: str) -> tuple[bool, str]:
    """(predicated, the instruction without its predicate)."""
    m = re.match(r"^@!?U?P\w+\s+", t)
    return bool(m), t[m.end():] if m else t


def written(op: str) -> range:
    """The registers an instruction writes (its first operand, widened by its access size)."""
    m = _DEST.match(op)
    if not m or "GMMA" in m.group(1) or m.group(1).startswith(("ST", "RED", "ATOM", "BRA", "ISETP", "FSETP")):
        return range(0)
    name, reg = m.group(1), int(m.group(2))
    width = 4 if ".128" in name or name.endswith(".4") else 2 if ".64" in name or name.endswith((".2", ".WIDE")) else 1
    return range(reg, reg + width)


def successors(ins: list[tuple[int, str]], index: dict[int, int], i: int) -> list[int]:
    pred, op = _op(ins[i][1])
    nxt = [i + 1] if i + 1 < len(ins) else []
    if op.startswith(("EXIT", "RET")):
        return nxt if pred else []
    if op.startswith("BRA"):
        m = re.search(r"0x([0-9a-f]+)", op)
        target = [index[int(m.group(1), 16)]] if m and int(m.group(1), 16) in index else []
        return target + (nxt if pred else [])
    return nxt


def hazards(ins: list[tuple[int, str]]) -> list[dict]:
    """Each RS-form MMA whose A registers an instruction may overwrite while it is pending."""
    index = {a: i for i, (a, _) in enumerate(ins)}
    found = []
    for start, (addr, t) in enumerate(ins):
        m = _MMA.match(_op(t)[1])
        if not m:
            continue
        regs = set(range(int(m.group(1)), int(m.group(1)) + A_REGS))
        # state: (instruction, own group closed, newer groups committed since, capped)
        todo = [(j, "gsb0" in t, 0) for j in successors(ins, index, start)]
        seen = set()
        while todo:
            j, closed, newer = todo.pop()
            if (j, closed, newer) in seen:
                continue
            seen.add((j, closed, newer))
            _, op = _op(ins[j][1])
            w = _WAIT.search(op)
            if w and closed and newer >= int(w.group(1), 16):
                continue  # its group completed here
            if regs & set(written(op)):
                found.append(dict(mma=f"{addr:x}", a=f"R{min(regs)}", writer=f"{ins[j][0]:x}", writes=op))
                break
            if "GMMA" in op and "gsb0" in op:
                newer, closed = (min(newer + 1, 8), True) if closed else (newer, True)
            todo += [(k, closed, newer) for k in successors(ins, index, j)]
    return found


def main() -> None:
    path = Path(sys.argv[1])
    ins = parse(path.read_text()) if path.suffix == ".sass" else sass(path)
    found = hazards(ins)
    for h in found:
        print(f"MMA at {h['mma']} reads {h['a']}-: written at {h['writer']} while it may be pending ({h['writes']})")
    print(f"{len(found)} hazard(s)")


if __name__ == "__main__":
    main()
