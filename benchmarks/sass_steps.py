"""Where a kernel's tensor-core waits sit among its exponentials (dev tool, no GPU needed).

For each loop of a cubin's SASS that issues 16-40 warpgroup MMAs (HGMMA, IGMMA, QGMMA: an
attention kernel's main loop), prints the order of its product commits, `WARPGROUP.DEPBAR` waits
(the number is how many product groups may stay in flight), MUFU exponentials and F2FP packs,
and its local-memory (spill) traffic.

Session 19 found with it (Triton 3.6's ptxas, docs/benchmarks.md): in sla_gluon's default loop the
wait for the previous step's P V sits before the step's exponentials, so softmax does not overlap
that product as the source intends (two steps an iteration with P in two register sets, commit
0d0ebf5, moved most exponentials before that wait but spilled and ran slower). Session 18's
reverted Gluon sagesla (commit 3d7f640) shows the same early wait. Session 20: the PTX has that
wait after the exponentials; ptxas moves it up even where no register of the in-flight P V is
written before it (offline_compile.py --dump writes the PTX beside the cubin to compare).

    PYTHONPATH=<triton 3.6> python benchmarks/offline_compile.py --dump /tmp/k
    python benchmarks/sass_steps.py /tmp/k/<n>_sla_attn_kernel.cubin
    python benchmarks/sass_steps.py /tmp/k/<n>_sla_attn_kernel.ptx    (the same events in the PTX:
        commits, wait_group N, ex2, bf16 packs, per basic block that commits products)
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def sass(cubin: Path) -> list[tuple[int, str]]:
    """(address, instruction) pairs of the cubin, disassembled by Triton's bundled cuobjdump."""
    import triton.backends.nvidia as nvidia

    tool = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    text = subprocess.run([str(tool), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def loops(ins: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(first, last) indices of each backward branch's loop body."""
    index = {a: i for i, (a, _) in enumerate(ins)}
    found = []
    for i, (a, t) in enumerate(ins):
        if "BRA" in t:
            m = re.search(r"0x([0-9a-f]+)", t.split("BRA", 1)[1])
            if m and int(m.group(1), 16) < a and int(m.group(1), 16) in index:
                found.append((index[int(m.group(1), 16)], i))
    return found


def events(body: list[tuple[int, str]]) -> str:
    """The loop's commits, waits, exponentials and packs in order, runs collapsed ("EX2x42")."""
    seq = []
    for _, t in body:
        op = re.sub(r"^@!?U?P\w+\s+", "", t)
        if op.startswith("WARPGROUP.DEPBAR"):
            seq.append("WAIT" + op.split()[-1])
        elif "GMMA" in op.split()[0] and "gsb0" in op:
            seq.append("MMA-commit")
        elif op.startswith("MUFU"):
            seq.append("EX2")
        elif op.startswith("F2FP"):
            seq.append("F2FP")
    return collapse(seq)


def collapse(seq: list[str]) -> str:
    """Events in order, runs of one event collapsed ("EX2x42")."""
    runs: list[list] = []
    for x in seq:
        if runs and runs[-1][0] == x:
            runs[-1][1] += 1
        else:
            runs.append([x, 1])
    return " ".join(f"{x}x{n}" if n > 1 else x for x, n in runs)


def ptx_blocks(text: str) -> list[tuple[str, str]]:
    """(label, events) of each PTX basic block that commits a warpgroup MMA group, in the SASS
    vocabulary (MMA-commit, WAIT<n>, EX2, F2FP for a bf16 / fp16 pack): the order ptxas was given."""
    blocks, label, seq = [], "entry", []

    def close():
        if "MMA-commit" in seq:
            blocks.append((label, collapse(seq)))

    for line in text.splitlines():
        op = line.strip()
        m = re.match(r"^(\$L__BB\w+):", op)
        if m:
            close()
            label, seq = m.group(1), []
        elif op.startswith("wgmma.commit_group"):
            seq.append("MMA-commit")
        elif op.startswith("wgmma.wait_group"):
            seq.append("WAIT" + op.split()[1].rstrip(";"))
        elif op.startswith("ex2.approx"):
            seq.append("EX2")
        elif re.match(r"cvt\.rn\.(bf16|f16)", op):
            seq.append("F2FP")
    close()
    return blocks


def main() -> None:
    if sys.argv[1].endswith(".ptx"):
        for label, order in ptx_blocks(Path(sys.argv[1]).read_text()):
            print(f"block {label}:")
            print("   ", order)
        return
    ins = sass(Path(sys.argv[1]))
    for first, last in loops(ins):
        body = ins[first:last + 1]
        hgmma = sum("GMMA" in t for _, t in body)  # HGMMA (16-bit), IGMMA (int8), QGMMA (fp8)
        if not 16 <= hgmma <= 40 or len(body) > 2000:
            continue
        spills = sum(("LDL" in t or "STL" in t) for _, t in body)
        print(f"loop {ins[first][0]:x}-{ins[last][0]:x}: {len(body)} instructions, {hgmma} GMMA, "
              f"{spills} local loads/stores")
        print("   ", events(body))


if __name__ == "__main__":
    main()
