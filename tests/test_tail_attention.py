"""Attention over keys whose rows repeat from a row on (ops/attention/tail.py): the identity it rests
on, the dense path, repeat_start, the custom op, the DiT's use of it, and the Triton kernel against
float64 attention in Triton's interpreter (a subprocess: TRITON_INTERPRET must be set before triton
is imported)."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from attention_helpers import attention64, repeated_tail_qkv
from interpreter_helpers import assert_runs_interpreted

from turbovid.ops import attention
from turbovid.ops.attention import tail


def test_identity_one_row_weighted_by_its_count():
    """Dense attention over all rows == attention over rows 0..n with log(Lk - n) added to row n's logit."""
    n, Lk = [3, 0], 11
    q, k, v = repeated_tail_qkv(2, 7, Lk, 2, 8, n)
    full = attention64(q, k, v)
    for b, nb in enumerate(n):
        bias = torch.zeros(1, nb + 1, dtype=torch.float64)
        bias[0, nb] = math.log(Lk - nb)
        short = attention64(q[b:b + 1], k[b:b + 1, :nb + 1], v[b:b + 1, :nb + 1], bias)
        torch.testing.assert_close(short, full[b:b + 1], rtol=1e-12, atol=1e-12)


def test_cpu_runs_dense_over_every_row_and_says_so(caplog):
    q, k, v = repeated_tail_qkv(2, 9, 16, 2, 16, [4, 16])
    attention._logged.clear()
    with caplog.at_level(logging.INFO, logger="turbovid.attention"):
        out = tail.tail_attention(q, k, v, torch.tensor([4, 16]))
        tail.tail_attention(q, k, v, torch.tensor([4, 16]))
    assert torch.equal(out, attention.dense_attention(q, k, v))
    assert [r.message for r in caplog.records] == [
        "cross-attention: dense over all text rows (the kernel needs a CUDA device, got cpu)"]


def test_switch_and_unsupported_inputs_name_their_reason(monkeypatch):
    q = torch.zeros(1, 4, 2, 16)
    monkeypatch.setenv("TURBOVID_TAIL_ATTENTION", "0")
    assert tail.kernel_unavailable(q) == "TURBOVID_TAIL_ATTENTION=0"
    monkeypatch.delenv("TURBOVID_TAIL_ATTENTION")
    assert "head dims" in tail.kernel_unavailable(torch.zeros(1, 4, 2, 24))
    assert "float16" in tail.kernel_unavailable(torch.zeros(1, 4, 2, 16, dtype=torch.float64))


@pytest.mark.parametrize("q_shape, k_shape, n, match", [
    ((1, 4, 2, 8), (1, 6, 2, 8), torch.tensor([2, 2]), "n as integers"),
    ((1, 4, 2, 8), (1, 6, 2, 8), torch.tensor([2.0]), "n as integers"),
    ((1, 4, 2, 8), (1, 6, 3, 8), torch.tensor([2]), "expects q"),
    ((4, 2, 8), (1, 6, 2, 8), torch.tensor([2]), "expects q"),
])
def test_bad_inputs(q_shape, k_shape, n, match):
    with pytest.raises(ValueError, match=match):
        tail.tail_attention(torch.zeros(q_shape), torch.zeros(k_shape), torch.zeros(k_shape), n)


def test_repeat_start_counts_rows_up_to_the_last_nonzero_one():
    rows = torch.zeros(3, 6, 4)
    rows[0, :2] = 1.0
    rows[0, 3, 1] = -2.0  # a zero row (2) before it is not a repeat
    rows[2] = 0.5
    assert tail.repeat_start(rows).tolist() == [4, 0, 6]
    assert tail.repeat_start(rows).dtype == torch.int32


def test_custom_op_passes_opcheck_and_compiles():
    q, k, v = repeated_tail_qkv(1, 5, 8, 2, 16, [3])
    n = torch.tensor([3], dtype=torch.int32)
    torch.library.opcheck(torch.ops.turbovid.tail_attention.default, (q, k, v, n))
    compiled = torch.compile(lambda q, k, v, n: tail.tail_attention(q, k, v, n) * 2, backend="eager", fullgraph=True)
    assert torch.equal(compiled(q, k, v, n), tail.tail_attention(q, k, v, n) * 2)


def test_dit_hands_cross_attention_the_prompt_rows(monkeypatch):
    """The DiT's cross-attention gets n = the prompt's rows (its zero padding repeats one embedded
    row), and its output equals attention over all 512 rows."""
    from turbovid.configs import DIT_PRESETS
    from turbovid.models import dit as dit_mod

    cfg = DIT_PRESETS["tiny-random"]
    model = dit_mod.WanDiT(cfg).eval()
    seen, outs = [], []
    real = dit_mod.tail_attention

    def spy(q, k, v, n):
        seen.append(n.tolist())
        out = real(q, k, v, n)
        outs.append((out, attention64(q, k, v)))
        return out

    monkeypatch.setattr(dit_mod, "tail_attention", spy)
    g = torch.Generator().manual_seed(0)
    context = torch.randn(2, 9, cfg.text_dim, generator=g)
    context[1, 5:] = 0  # the second prompt is 5 tokens long, padded to 9
    latents = torch.randn(2, cfg.in_dim, 1, 4, 4, generator=g)
    with torch.no_grad():
        model(latents, torch.tensor([500.0, 500.0]), context)
    assert seen == [[9, 5]] * cfg.num_layers
    for out, want in outs:
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_dit_attends_densely_to_a_context_past_max_rows(monkeypatch):
    """A context of more than tail.MAX_ROWS rows (a long prompt, or one padded by the caller) skips the
    tail op: dense attention over all 512 rows, the same velocity."""
    from turbovid.configs import DIT_PRESETS
    from turbovid.models import dit as dit_mod

    cfg = DIT_PRESETS["tiny-random"]
    model = dit_mod.WanDiT(cfg).eval()
    calls = []
    real = dit_mod.tail_attention
    monkeypatch.setattr(dit_mod, "tail_attention", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(tail, "MAX_ROWS", 6)
    g = torch.Generator().manual_seed(0)
    context = torch.randn(1, 9, cfg.text_dim, generator=g)
    latents = torch.randn(1, cfg.in_dim, 1, 4, 4, generator=g)
    with torch.no_grad():
        dense = model(latents, torch.tensor([500.0]), context)
        assert calls == []
        short = model(latents, torch.tensor([500.0]), context[:, :6])  # 6 rows: the tail op
        assert len(calls) == cfg.num_layers
        monkeypatch.setattr(tail, "MAX_ROWS", 512)
        via_tail = model(latents, torch.tensor([500.0]), context)
    assert len(calls) == 2 * cfg.num_layers
    torch.testing.assert_close(via_tail, dense, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(short, dense)  # the 6-row prompt is another prompt


KERNEL_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from attention_helpers import attention64, repeated_tail_qkv
from turbovid.ops import attention
from turbovid.ops.attention import tail, tail_kernel
attention.allow_interpreter(True)

cfg = tail_kernel.Config(block_m=16, block_n=16, num_warps=1)
# n per item: inside the first key block, on a block edge, past it, no repeats (n = Lk), all repeats (0)
for n, Lk in (([5, 16], 40), ([17, 0], 40), ([40, 33], 40), ([3], 7)):
    B = len(n)
    q, k, v = repeated_tail_qkv(B, 37, Lk, 2, 32, n, seed=Lk + n[0])
    want = attention64(q, k, v)
    nt = torch.tensor(n, dtype=torch.int32)
    out = tail_kernel.tail_attention(q, k, v, nt, cfg)  # float32: ieee dots
    assert (out.double() - want).abs().max() < 1e-5, (n, (out.double() - want).abs().max())
    q16, k16, v16 = (x.half() for x in (q, k, v))
    out16 = tail_kernel.tail_attention(q16, k16, v16, nt, cfg)
    low = attention.dense_attention(q16.float(), k16.float(), v16.float()).half()  # fp16-rounded inputs and output
    err, bound = (out16.double() - want).abs().max(), 2 * (low.double() - want).abs().max() + 1e-3
    assert err <= bound, (n, err, bound)
    # the op picks the kernel here (interpreter allowed) and matches the direct call
    assert torch.equal(tail.tail_attention(q16, k16, v16, nt), tail_kernel.tail_attention(q16, k16, v16, nt))
print("kernel ok")
"""


def test_kernel_matches_float64_attention_in_the_interpreter():
    assert_runs_interpreted(KERNEL_SCRIPT.format(tests=str(Path(__file__).resolve().parent)))
