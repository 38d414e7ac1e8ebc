"""benchmarks/sass_steps.py's PTX reader (dev tool): the order ptxas is given, to set beside the SASS."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "sass_steps.py"
_spec = importlib.util.spec_from_file_location("sass_steps", _PATH)
sass_steps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sass_steps)

PTX = """
$L__BB0_3:
	add.s32 	%r1, %r1, 1;
$L__BB0_8:
	cvt.rn.bf16.f32 	%rs1, %r10;
	cvt.rn.bf16.f32 	%rs2, %r11;
	wgmma.fence.sync.aligned;
	wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%r1}, %rd1, %rd2, p, 1, 1, 0, 1;
	wgmma.commit_group.sync.aligned;
	wgmma.commit_group.sync.aligned;
	wgmma.wait_group.sync.aligned 1;
	ex2.approx.ftz.f32 	%r5, %r6;
	ex2.approx.ftz.f32 	%r7, %r8;
	wgmma.wait_group.sync.aligned 0;
	cvt.rn.bf16x2.f32 	%r9, %r5, %r7;
$L__BB0_9:
	ex2.approx.ftz.f32 	%r5, %r6;
"""


def test_ptx_blocks_lists_only_blocks_that_commit_products_in_program_order():
    blocks = sass_steps.ptx_blocks(PTX)
    assert blocks == [("$L__BB0_8", "F2FPx2 MMA-commitx2 WAIT1 EX2x2 WAIT0 F2FP")]


def test_ptx_blocks_of_a_kernel_without_products_is_empty():
    assert sass_steps.ptx_blocks("$L__BB0_1:\n\tex2.approx.ftz.f32 %r1, %r2;\n") == []
