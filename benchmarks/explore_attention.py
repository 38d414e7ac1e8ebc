"""Exploration on the GPU (dev tool): where the SLA attention kernel loses to the reference's.

Times, at L=32760, B=1, 12 heads x 128, topk 0.1, one block map shared by all:
  - the reference kernel `_attn_fwd` (from .ref/, head-major copies, its own launch settings);
  - our `_sla_fwd_kernel` without the linear branch, for its configs;
  - a plain variant (`_variant` below) over: trip count as constexpr or not, K loaded as K^T
    through pointers or transposed in registers, our [B, L, H, D] layout or head-major copies,
    one or two key blocks per softmax step, warps and stages;
  - block-map launches for StatsConfig variants (select rows, key-pass stages).
Writes $OUT/explore_attention.json; prints a sorted table last.
--order: the same block map visited in other orders (ascending as our select writes it, the
reference's own torch.topk(sorted=False) order, descending score, a fixed stride permutation,
random), by the reference kernel and by ours, at L = 32768 (no ragged key block, so any order is
exact). Writes $OUT/explore_order.json.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from attention_helpers import proj_params, random_qkv, rel_l2  # noqa: E402

from turbovid.ops.attention import blockmap, sla_kernel  # noqa: E402

H, D, L, TOPK = 12, 128, 32760, 0.1
LOG2E = 1.4426950408889634


@triton.jit
def _variant(
    Q, K, V, O, LUT, sq_h, sq_l, sk_h, sk_l, so_h, so_l, L, NQ, kk_rt, qk_scale,
    KK: tl.constexpr, CONST_KK: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLKK: tl.constexpr,
    KT_PTR: tl.constexpr, GROUP: tl.constexpr, Q_DESC: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.arange(0, BLKK)
    d = tl.arange(0, D)
    if Q_DESC:  # Q through a tensor descriptor over (L, H*D): may stay in shared memory for the dot
        q = Q.load([pid_m * BLOCK_M, (h * D).to(tl.int32)])
    else:
        q = tl.load(Q + h * sq_h + rows[:, None] * sq_l + d[None, :], mask=rows[:, None] < L, other=0.0)
    kb = K + h * sk_h
    vb = V + h * sk_h
    lut = LUT + (h * NQ + pid_m) * KK
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    if CONST_KK:
        trips = KK // GROUP
    else:
        trips = kk_rt // GROUP
    for t in range(trips):  # the ragged last block never lands here in this benchmark (L % 64 != 0 aside)
        i0 = tl.load(lut + t * GROUP)
        keys0 = i0 * BLKK + n
        if KT_PTR:
            k0 = tl.load(kb + keys0[None, :] * sk_l + d[:, None], mask=keys0[None, :] < L, other=0.0)
            s0 = tl.dot(q, k0)
        else:
            k0 = tl.load(kb + keys0[:, None] * sk_l + d[None, :], mask=keys0[:, None] < L, other=0.0)
            s0 = tl.dot(q, tl.trans(k0))
        s0 = tl.where((keys0 < L)[None, :], s0, float("-inf"))
        v0 = tl.load(vb + keys0[:, None] * sk_l + d[None, :], mask=keys0[:, None] < L, other=0.0)
        mx = tl.max(s0, 1)
        if GROUP == 2:
            i1 = tl.load(lut + t * GROUP + 1)
            keys1 = i1 * BLKK + n
            if KT_PTR:
                k1 = tl.load(kb + keys1[None, :] * sk_l + d[:, None], mask=keys1[None, :] < L, other=0.0)
                s1 = tl.dot(q, k1)
            else:
                k1 = tl.load(kb + keys1[:, None] * sk_l + d[None, :], mask=keys1[:, None] < L, other=0.0)
                s1 = tl.dot(q, tl.trans(k1))
            s1 = tl.where((keys1 < L)[None, :], s1, float("-inf"))
            v1 = tl.load(vb + keys1[:, None] * sk_l + d[None, :], mask=keys1[:, None] < L, other=0.0)
            mx = tl.maximum(mx, tl.max(s1, 1))
        m_new = tl.maximum(m_i, mx * qk_scale)
        alpha = tl.math.exp2(m_i - m_new)
        p0 = tl.math.exp2(s0 * qk_scale - m_new[:, None])
        rs = tl.sum(p0, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p0.to(v0.dtype), v0, acc)
        if GROUP == 2:
            p1 = tl.math.exp2(s1 * qk_scale - m_new[:, None])
            rs += tl.sum(p1, 1)
            acc = tl.dot(p1.to(v1.dtype), v1, acc)
        l_i = l_i * alpha + rs
        m_i = m_new
    o = acc / l_i[:, None]
    tl.store(O + h * so_h + rows[:, None] * so_l + d[None, :], o.to(O.dtype.element_ty), mask=rows[:, None] < L)


def med(fn, rep=200):
    return do_bench(fn, warmup=30, rep=rep, return_mode="median")


def main():
    out_path = os.path.join(os.environ.get("OUT", "."), "explore_attention.json")
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    rows = res["rows"]
    q, k, v = random_qkv(1, L, H, D, torch.bfloat16, device="cuda", seed=3)
    w, b = proj_params(D, "cuda")
    st = blockmap.block_stats(q, k, v, TOPK, 128, 64, linear=False)
    kk = st.kk
    kk_even = kk - kk % 2  # the variant runs GROUP-sized steps only
    nq = st.lut.shape[1]
    lut = st.lut.contiguous()
    qh, kh, vh = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # head-major (1, H, L, D)

    # our kernel, no linear branch, precomputed stats
    base = None
    for cfg in [sla_kernel.Config(group=2, num_warps=8, num_stages=s, tma=t) for s in (2, 3) for t in (True, False)] + \
               [sla_kernel.Config(group=1, num_warps=8, num_stages=3, tma=False),
                sla_kernel.Config(group=1, num_warps=4, num_stages=3, tma=False)]:
        fn = lambda: sla_kernel.sla_forward(q, k, v, TOPK, None, None, config=cfg, stats=st)  # noqa: E731
        o = fn()
        base = o if base is None else base
        rows.append({"what": f"ours {cfg}", "ms": med(fn), "diff": rel_l2(o, base)})
        print(rows[-1], flush=True)
    # whole op with linear, for reference
    fn = lambda: sla_kernel.sla_forward(q, k, v, TOPK, w, b)  # noqa: E731
    rows.append({"what": "ours whole op (default config, with linear)", "ms": med(fn)})

    # the reference kernel on head-major copies with our LUT
    root = os.path.join(os.path.dirname(__file__), "..", ".ref", "turbodiffusion")
    if os.path.isdir(root):
        sys.path.insert(0, root)
        from SLA.kernel import _attn_fwd

        os_ = torch.empty_like(qh)
        lse = torch.empty(1, H, L, device="cuda", dtype=torch.float32)

        def ref_fn():
            _attn_fwd[(nq, H)](qh, kh, vh, D**-0.5, kk, lut, lse, os_, L, nq, D, 128, 64, num_warps=8, num_stages=3)

        ref_fn()
        rows.append({"what": "reference _attn_fwd (head-major)", "ms": med(ref_fn),
                     "diff": rel_l2(os_.transpose(1, 2), base)})
        print(rows[-1], flush=True)

    # the plain variant
    out = torch.empty_like(q)
    for layout in ("ours", "head-major"):
        if layout == "ours":
            args = (q, k, v, out, lut, D, H * D, D, H * D, D, H * D)
        else:
            outh = torch.empty_like(qh)
            args = (qh, kh, vh, outh, lut, L * D, D, L * D, D, L * D, D)
        for const in (True, False):
            for kt in (True, False):
                for group in (1, 2):
                    for warps, stages in ((8, 2), (8, 3), (4, 3)):
                        name = f"variant {layout} const_kk={const} kt_ptr={kt} group={group} w{warps} s{stages}"
                        try:
                            def fn():
                                _variant[(nq, H)](*args, L, nq, kk if group == 1 else kk_even, D**-0.5 * LOG2E, KK=kk, CONST_KK=const,
                                                  D=D, BLOCK_M=128, BLKK=64, KT_PTR=kt, GROUP=group,
                                                  num_warps=warps, num_stages=stages)
                            fn()
                            rows.append({"what": name, "ms": med(fn, 100)})
                        except Exception as e:  # noqa: BLE001
                            rows.append({"what": name, "error": str(e)[:200]})
                        print(rows[-1], flush=True)

    # block-map launches
    for cfg in [blockmap.StatsConfig()] + [
        # (the radix2 select variant of the recorded run was reverted; programs_per_sm is now residency)
        blockmap.StatsConfig(select_rows=r, select_warps=w, key_stages=ks, programs_per_sm=pp)
        for r, w, ks, pp in [(4, 8, 1, 1), (4, 4, 1, 1), (8, 8, 1, 1), (2, 4, 1, 1), (16, 8, 2, 1), (16, 8, 3, 2)]
    ]:
        for name, kw in (("sla", dict(blkq=128, blkk=64)), ("sagesla", dict(blkq=64, blkk=128, v_absmax=True))):
            fn = lambda: blockmap.block_stats(q, k, v, TOPK, cfg=cfg, **kw)  # noqa: E731
            s2 = fn()
            s1 = blockmap.block_stats(q, k, v, TOPK, **kw)
            same = bool(torch.equal(s1.lut, s2.lut))
            rows.append({"what": f"stats {name} {cfg}", "ms": med(fn), "same_lut": same})
            print(rows[-1], flush=True)
    # the select launch alone
    json.dump(res, open(out_path, "w"), indent=1)
    print("\n==== sorted ====")
    for r in sorted([r for r in rows if "ms" in r], key=lambda r: (r["what"].split()[0], r["ms"])):
        print(f"{r['ms']:8.3f}  {r['what']}  {r.get('diff', '')} {r.get('same_lut', '')}")


@triton.jit
def _l2_read(X, OUT, SLICE_ROWS, N_SLICES, COLS: tl.constexpr, ROWS: tl.constexpr):
    # each program sums one slice of the buffer (16-byte loads along COLS)
    pid = tl.program_id(0)
    base = X + (pid % N_SLICES).to(tl.int64) * SLICE_ROWS * COLS
    acc = tl.zeros([ROWS, COLS], dtype=tl.float32)
    r = tl.arange(0, ROWS)
    c = tl.arange(0, COLS)
    for i in range(0, SLICE_ROWS, ROWS):
        acc += tl.load(base + (i + r)[:, None] * COLS + c[None, :]).to(tl.float32)
    tl.store(OUT + pid, tl.sum(tl.sum(acc, 1), 0))


def registers():
    """Registers and spills of the shipped kernels' compilations and of variants (Q via descriptor)."""
    from turbovid.ops.attention import sagesla_kernel
    from triton.tools.tensor_descriptor import TensorDescriptor

    res = []
    q, k, v = random_qkv(1, L, H, D, torch.bfloat16, device="cuda", seed=3)
    w, b = proj_params(D, "cuda")
    sla_kernel.sla_forward(q, k, v, TOPK, w, b)
    sagesla_kernel.sagesla_forward(q, k, v, TOPK, w, b)
    for kern in (sla_kernel._sla_fwd_kernel, sagesla_kernel._sagesla_fwd_kernel, blockmap._select_kernel,
                 blockmap._key_pass_kernel):
        try:  # Triton internals (3.6): device -> (compiled kernels by key, ...)
            for dev_cache in kern.device_caches.values():
                for ck in dev_cache[0].values():
                    res.append({"kernel": kern.__name__, "n_regs": ck.n_regs, "n_spills": ck.n_spills,
                                "shared": ck.metadata.shared, "warps": ck.metadata.num_warps})
                    print(res[-1], flush=True)
        except Exception as e:  # noqa: BLE001
            print("no compile info:", type(e).__name__, e, flush=True)
    st = blockmap.block_stats(q, k, v, TOPK, 128, 64, linear=False)
    nq, kk = st.lut.shape[1], st.kk
    out = torch.empty_like(q)
    qd = TensorDescriptor.from_tensor(q.view(L, H * D), [128, D])
    for qdesc in (False, True):
        for group, warps, stages in ((1, 4, 2), (1, 4, 3), (1, 8, 3), (2, 8, 3)):
            def fn():
                return _variant[(nq, H)](qd if qdesc else q, k, v, out, st.lut, D, H * D, D, H * D, D, H * D, L, nq,
                                         kk if group == 1 else kk - kk % 2, D**-0.5 * LOG2E, KK=kk, CONST_KK=False,
                                         D=D, BLOCK_M=128, BLKK=64, KT_PTR=False, GROUP=group, Q_DESC=qdesc,
                                         num_warps=warps, num_stages=stages)
            ck = fn()
            row = {"variant": f"q_desc={qdesc} group={group} w{warps} s{stages}", "ms": med(fn, 100),
                   "n_regs": getattr(ck, "n_regs", None), "n_spills": getattr(ck, "n_spills", None)}
            res.append(row)
            print(row, flush=True)
    json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "registers.json"), "w"), indent=1)


def l2_bandwidth():
    """Read bandwidth into the SMs: 8192 programs re-reading 1 MiB slices of a 24 MiB bf16 buffer
    (half the 50 MB L2), against one pass over a 4 GiB buffer (DRAM); the attention kernels' K/V
    gathers are priced at the first."""
    res = {}
    cols, rows, slice_rows = 128, 64, 4096  # one slice = 1 MiB of bf16
    for name, n_slices, programs in (("l2_24MiB", 24, 8192), ("dram_4GiB", 4096, 4096)):
        x = torch.randn(n_slices * slice_rows, cols, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(programs, device="cuda")
        ms = med(lambda x=x, out=out, n_slices=n_slices, programs=programs: _l2_read[(programs,)](
            x, out, slice_rows, n_slices, COLS=cols, ROWS=rows, num_warps=8))
        nbytes = programs * slice_rows * cols * 2
        res[name] = {"ms": ms, "bytes": nbytes, "TB_per_s": nbytes / ms / 1e9}
        print(name, res[name], flush=True)
        del x
    json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "l2_bandwidth.json"), "w"), indent=1)


def list_orders():
    """Does the order in which a query block visits its key blocks matter? (see the module doc)"""
    import dataclasses

    n = 32768
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    q, k, v = random_qkv(1, n, H, D, torch.bfloat16, device="cuda", seed=3)
    qh, kh, vh = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    g = torch.Generator(device="cuda").manual_seed(0)
    orders = {}
    for name, blkq, blkk in (("sla", 128, 64), ("sagesla", 64, 128)):
        st = blockmap.block_stats(q, k, v, TOPK, blkq, blkk, linear=False, v_absmax=name == "sagesla")
        asc = st.lut.long()  # (H, nq, kk)
        pq = qh.float().unflatten(2, (-1, blkq)).mean(3)  # (1, H, nq, D)
        ks = kh.float() - kh.float().mean(2, keepdim=True)
        pk = ks.unflatten(2, (-1, blkk)).mean(3)
        scores = (pq @ pk.transpose(-1, -2))[0]  # (H, nq, nk)
        kk = asc.shape[-1]
        stride = next(s for s in (7, 11, 13, 17) if kk % s)
        luts = {
            "ascending (ours)": asc,
            "reference torch.topk(sorted=False)": torch.topk(scores, kk, dim=-1, sorted=False).indices,
            "descending score": torch.topk(scores, kk, dim=-1, sorted=True).indices,
            f"stride {stride} permutation": asc[..., (torch.arange(kk, device="cuda") * stride) % kk],
            "random per row": torch.gather(asc, -1, torch.rand(asc.shape, generator=g, device="cuda").argsort(-1)),
        }
        orders[name] = (st, luts)
    root = os.path.join(os.path.dirname(__file__), "..", ".ref", "turbodiffusion")
    ref_kernel = None
    if os.path.isdir(root):
        sys.path.insert(0, root)
        from SLA.kernel import _attn_fwd as ref_kernel
    from turbovid.ops.attention import sagesla_kernel

    rows = res["rows"]
    for name, (st, luts) in orders.items():
        base = None
        for lname, lut in luts.items():
            same_set = bool(torch.equal(lut.sort(-1).values, luts["ascending (ours)"].sort(-1).values))
            st2 = dataclasses.replace(st, lut=lut.to(torch.int32).contiguous())
            if name == "sla":
                fn = lambda: sla_kernel.sla_forward(q, k, v, TOPK, None, None, stats=st2)  # noqa: E731
            else:
                fn = lambda: sagesla_kernel.sagesla_forward(q, k, v, TOPK, None, None, stats=st2)  # noqa: E731
            o = fn()
            base = o if base is None else base
            rows.append({"kernel": f"ours {name}", "order": lname, "ms": med(fn), "same_set": same_set,
                         "rel_vs_ascending": rel_l2(o, base)})
            print(rows[-1], flush=True)
            if name == "sla" and ref_kernel is not None:
                lut32 = lut.to(torch.int32).contiguous()
                os_ = torch.empty_like(qh)
                lse = torch.empty(1, H, n, device="cuda", dtype=torch.float32)
                kk, nq = lut.shape[-1], lut.shape[-2]

                def ref_fn():
                    ref_kernel[(nq, H)](qh, kh, vh, D**-0.5, kk, lut32, lse, os_, n, nq, D, 128, 64,
                                        num_warps=8, num_stages=3)

                rows.append({"kernel": "reference _attn_fwd (head-major)", "order": lname, "ms": med(ref_fn)})
                print(rows[-1], flush=True)
    json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "explore_order.json"), "w"), indent=1)


if __name__ == "__main__":
    t0 = time.time()
    if "--order" in sys.argv:
        list_orders()
    elif "--l2" in sys.argv:
        l2_bandwidth()
    elif "--registers" in sys.argv:
        registers()

    else:
        main()
    print(f"elapsed {time.time() - t0:.0f}s")
