"""The VAE's causal 3x3x3 conv with Winograd's F(2, 3) along the image rows: 2/3 of the products.

Same contract as ops/causal_conv.py (buf [P + T, H, W, C], P = 2 frames of history, zero padding
of 1 in H and W; out [T, H, W, Cout]), for an even W. Two neighbouring output pixels 2j, 2j + 1 of
a row share one "tile" j, whose four inputs are the pixels d_i = x[2j - 1 + i] (zero outside the
row). Per (dt, dh) tap the three horizontal taps g0, g1, g2 of a weight reduce to four products:

    v0 = d0 - d2   v1 = d1 + d2   v2 = d2 - d1   v3 = d1 - d3        (input transform, exact sums)
    u0 = g0        u1 = (g0 + g1 + g2) / 2        u2 = (g0 - g1 + g2) / 2        u3 = g2
    m_k = v_k . u_k (over channels)     y[2j] = m0 + m1 + m2     y[2j + 1] = m1 - m2 - m3

so a tile of two pixels costs 4 channel dot products a tap where the direct conv spends 6. The
kernel is an implicit GEMM over tiles: a program holds BLOCK_M tiles of one frame and a group of
output channels in four float32 accumulators (one per k), runs K = 9 taps x C channels, and reads
d0..d3 through a view of the input's rows as pixel pairs [.., W / 2, 2C] (pair j - 1's second
pixel, pair j's two, pair j + 1's first): the input is not rewritten. The v_k are formed in float32
and rounded once to the input dtype, as the pixels are; the u_k are packed once per conv.

The PyTorch reference is the direct conv (causal_conv.causal_conv_reference); `winograd_reference`
computes the transform's algebra in PyTorch for tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from turbovid.ops import causal_conv, rms_silu
from turbovid.ops.causal_conv import TensorDescriptor, frame_tile, split_channels

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

TAPS = 9  # (dt, dh): the horizontal taps are in the transform
POINTS = 4  # products a tile and tap


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """[Cout, C, 3, 3, 3] -> [Cout, C, 3, 3, 4]: u_k of the module docstring, in float32."""
    g = weight.detach().float()
    g0, g1, g2 = g[..., 0], g[..., 1], g[..., 2]
    return torch.stack([g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2], -1)


@dataclass(frozen=True)
class PackedWinograd:
    weight: torch.Tensor  # [9 * 4 * C, groups * (N1 + N2)]: row ((dt * 3 + dh) * 4 + k) * C + c, column o
    bias: Optional[torch.Tensor]  # [Cout]
    cin: int
    cout: int
    n1: int  # a program's output channels: n1 + n2 (a power-of-two split as causal_conv's)
    n2: int
    groups: int  # programs along the output channels
    ref_weight: torch.Tensor  # [Cout, C, 3, 3, 3], the reference path's


def pack(weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype, group: int = 0) -> PackedWinograd:
    """A conv's weight in the kernel's layout; `group` output channels a program (0: all of them)."""
    cout, cin, *k = weight.shape
    if tuple(k) != (3, 3, 3):
        raise ValueError(f"winograd_conv packs 3x3x3 kernels, got {tuple(k)}")
    group = group or cout
    n1, n2 = split_channels(group)
    groups = -(-cout // group)
    u = transform_weight(weight).permute(2, 3, 4, 1, 0).reshape(TAPS * POINTS * cin, cout)
    packed = u.new_zeros(TAPS * POINTS * cin, groups * (n1 + n2))
    for gi in range(groups):  # group gi's channels at columns gi * (n1 + n2) ...
        lo, hi = gi * group, min(cout, (gi + 1) * group)
        packed[:, gi * (n1 + n2): gi * (n1 + n2) + hi - lo] = u[:, lo:hi]
    b = None if bias is None else bias.detach().to(dtype).contiguous()
    ref = causal_conv.pack(weight, bias, dtype).ref_weight
    return PackedWinograd(packed.to(dtype).contiguous(), b, cin, cout, n1, n2, groups, ref)


def winograd_reference(buf: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The transform's algebra in float64 PyTorch: buf [P + T, H, W, C] -> [T, H, W, Cout]."""
    x = torch.nn.functional.pad(buf.double(), (0, 0, 1, 1, 1, 1))  # [P + T, H + 2, W + 2, C]
    t, h, w = buf.shape[0] - 2, buf.shape[1], buf.shape[2]
    u = transform_weight(weight).double()  # [O, C, 3, 3, 4]
    out = x.new_zeros(t, h, w // 2, 2, weight.shape[0])
    for dt in range(3):
        for dh in range(3):
            rows = x[dt:dt + t, dh:dh + h]  # [T, H, W + 2, C]
            d = [rows[:, :, i:i + w - 1:2] for i in range(4)]  # d_i of tile j: padded column 2j + i
            v = [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
            m = [v[k] @ u[:, :, dt, dh, k].T for k in range(4)]
            out[..., 0, :] += m[0] + m[1] + m[2]
            out[..., 1, :] += m[1] - m[2] - m[3]
    return out.reshape(t, h, w, -1)


def transform_input(buf: torch.Tensor) -> torch.Tensor:
    """[P + T, H, W, C] -> [P + T, H, W / 2, 4C]: each tile's v_0..v_3 (float32 sums, rounded once)."""
    x = torch.nn.functional.pad(buf.float(), (0, 0, 1, 1))  # a zero pixel each side of a row
    w = buf.shape[2]
    d = [x[:, :, i:i + w - 1:2] for i in range(4)]
    return torch.cat([d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]], -1).to(buf.dtype).contiguous()


if triton is not None:

    @triton.jit
    def _load_point(X, XD, f, hh, h0, j0, mj, c0, W, W2, C: tl.constexpr, I: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, H, USE_TMA: tl.constexpr, PRE: tl.constexpr):
        """PRE: v_I of the program's tiles from the transformed input [.., W / 2, 4C]; else d_I, pixel
        2j - 1 + I of row hh (pair j + (I - 1) // 2, half (I + 1) % 2)."""
        if USE_TMA:  # out-of-bounds pairs and rows read as zeros: the padding
            if PRE:
                return XD.load([f, h0, j0, I * C + c0]).reshape(BLOCK_M, BLOCK_K)
            else:
                return XD.load([f, h0, j0 + (I - 1) // 2, ((I + 1) % 2) * C + c0]).reshape(BLOCK_M, BLOCK_K)
        else:
            k = tl.arange(0, BLOCK_K)
            if PRE:
                ok = (mj < W2) & (hh >= 0) & (hh < H)
                at = ((f * H + hh).to(tl.int64) * W2 + mj) * (4 * C) + I * C
            else:
                px = 2 * mj - 1 + I
                ok = (px >= 0) & (px < W) & (mj < W2) & (hh >= 0) & (hh < H)
                at = ((f * H + hh).to(tl.int64) * W + px) * C
            return tl.load(X + at[:, None] + c0 + k[None, :], mask=ok[:, None] & (k < BLOCK_K)[None, :], other=0.0)

    @triton.jit
    def _point(v, U, UD, row, col, acc, NP, N: tl.constexpr, BLOCK_K: tl.constexpr, USE_TMA: tl.constexpr,
               PRECISION: tl.constexpr):
        if USE_TMA:
            u = UD.load([row, col])
        else:
            k = tl.arange(0, BLOCK_K)
            u = tl.load(U + (row + k)[:, None] * NP + col + tl.arange(0, N)[None, :])
        return tl.dot(v, u, acc, input_precision=PRECISION)

    @triton.jit
    def _store_pair(Y, B, acc0, acc1, acc2, acc3, f, mh, mj, H, W, W2, COUT, n,
                    HAS_BIAS: tl.constexpr):
        y0 = acc0 + acc1 + acc2
        y1 = acc1 - acc2 - acc3
        if HAS_BIAS:
            b = tl.load(B + n, mask=n < COUT, other=0.0).to(tl.float32)[None, :]
            y0 += b
            y1 += b
        pix = (f * H + mh).to(tl.int64) * W + 2 * mj
        ok = ((mh < H) & (mj < W2))[:, None] & (n < COUT)[None, :]
        tl.store(Y + pix[:, None] * COUT + n[None, :], y0.to(Y.dtype.element_ty), mask=ok)
        tl.store(Y + (pix + 1)[:, None] * COUT + n[None, :], y1.to(Y.dtype.element_ty), mask=ok)

    @triton.jit
    def _winograd_conv_kernel(X, XD, U, UD1, UD2, B, Y, H, W, COUT, NP,
                              C: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, HAS_N2: tl.constexpr,
                              NG: tl.constexpr, HAS_BIAS: tl.constexpr, USE_TMA: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr = 1,
                              PRECISION: tl.constexpr = "ieee", PRE: tl.constexpr = False):
        # a program: BLOCK_M tiles (ROWS rows of BLOCK_M / ROWS tiles) of output frame f, output
        # channels [n0, n0 + N1 + N2); taps read input frames f .. f + 2
        W2 = W // 2
        f, h0, j0, mh, mj = frame_tile(H, W2, BLOCK_M, ROWS)
        n0 = tl.program_id(1) * NG  # the group's first column of U and first channel of Y (groups are dense)
        a0 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
        a1 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
        a2 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
        a3 = tl.zeros((BLOCK_M, N1), dtype=tl.float32)
        b0 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
        b1 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
        b2 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
        b3 = tl.zeros((BLOCK_M, N2), dtype=tl.float32)
        NC: tl.constexpr = C // BLOCK_K
        for it in range(9 * NC):
            tap = it // NC
            c0 = (it - tap * NC) * BLOCK_K
            ft = f + tap // 3
            dh = tap % 3 - 1
            if PRE:
                v0 = _load_point(X, XD, ft, mh + dh, h0 + dh, j0, mj, c0, W, W2, C, 0, BLOCK_M, BLOCK_K, H, USE_TMA, PRE)
                v1 = _load_point(X, XD, ft, mh + dh, h0 + dh, j0, mj, c0, W, W2, C, 1, BLOCK_M, BLOCK_K, H, USE_TMA, PRE)
                v2 = _load_point(X, XD, ft, mh + dh, h0 + dh, j0, mj, c0, W, W2, C, 2, BLOCK_M, BLOCK_K, H, USE_TMA, PRE)
                v3 = _load_point(X, XD, ft, mh + dh, h0 + dh, j0, mj, c0, W, W2, C, 3, BLOCK_M, BLOCK_K, H, USE_TMA, PRE)
            else:
                d0 = _load_point(X, XD, ft, mh + dh, h0 + dh, j0, mj, c0, W, W2, C, 0, BLOCK_M, BLOCK_K, H, USE_TMA, PRE).to(tl.float32)
                d1 = _load_point(X, XD, ft, mh + dh, h0 + dh, j0, mj, c0, W, W2, C, 1, BLOCK_M, BLOCK_K, H, USE_TMA, PRE).to(tl.float32)
                d2 = _load_point(X, XD, ft, mh + dh, h0 + dh, j0, mj, c0, W, W2, C, 2, BLOCK_M, BLOCK_K, H, USE_TMA, PRE).to(tl.float32)
                d3 = _load_point(X, XD, ft, mh + dh, h0 + dh, j0, mj, c0, W, W2, C, 3, BLOCK_M, BLOCK_K, H, USE_TMA, PRE).to(tl.float32)
                v0 = (d0 - d2).to(X.dtype.element_ty)
                v1 = (d1 + d2).to(X.dtype.element_ty)
                v2 = (d2 - d1).to(X.dtype.element_ty)
                v3 = (d1 - d3).to(X.dtype.element_ty)
            row = tap * 4 * C + c0
            a0 = _point(v0, U, UD1, row, n0, a0, NP, N1, BLOCK_K, USE_TMA, PRECISION)
            a1 = _point(v1, U, UD1, row + C, n0, a1, NP, N1, BLOCK_K, USE_TMA, PRECISION)
            a2 = _point(v2, U, UD1, row + 2 * C, n0, a2, NP, N1, BLOCK_K, USE_TMA, PRECISION)
            a3 = _point(v3, U, UD1, row + 3 * C, n0, a3, NP, N1, BLOCK_K, USE_TMA, PRECISION)
            if HAS_N2:
                b0 = _point(v0, U, UD2, row, n0 + N1, b0, NP, N2, BLOCK_K, USE_TMA, PRECISION)
                b1 = _point(v1, U, UD2, row + C, n0 + N1, b1, NP, N2, BLOCK_K, USE_TMA, PRECISION)
                b2 = _point(v2, U, UD2, row + 2 * C, n0 + N1, b2, NP, N2, BLOCK_K, USE_TMA, PRECISION)
                b3 = _point(v3, U, UD2, row + 3 * C, n0 + N1, b3, NP, N2, BLOCK_K, USE_TMA, PRECISION)
        _store_pair(Y, B, a0, a1, a2, a3, f, mh, mj, H, W, W2, COUT, n0 + tl.arange(0, N1), HAS_BIAS)
        if HAS_N2:
            _store_pair(Y, B, b0, b1, b2, b3, f, mh, mj, H, W, W2, COUT, n0 + N1 + tl.arange(0, N2), HAS_BIAS)


@dataclass(frozen=True)
class Config:
    block_m: int = 64  # tiles (pixel pairs) a program: `rows` image rows of block_m // rows tiles
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 3
    tma: bool = False
    rows: int = 1


def supported(buf_shape: tuple, conv) -> bool:
    """Whether the Winograd path takes this input: an even row length."""
    return len(buf_shape) == 4 and buf_shape[2] % 2 == 0 and buf_shape[3] == conv.cin


def winograd_conv(buf: torch.Tensor, conv: PackedWinograd, bias: bool = True, out: Optional[torch.Tensor] = None,
                  config: Optional[Config] = None, pre: Optional[torch.Tensor] = None) -> torch.Tensor:
    """causal_conv.causal_conv's contract, computed by F(2, 3) tiles (W even). pre: buf's
    transform_input, read in buf's place (the kernel then forms no sums)."""
    if buf.dim() != 4 or buf.shape[-1] != conv.cin or buf.shape[0] < 3 or not buf.is_contiguous() or buf.shape[2] % 2:
        raise ValueError(f"winograd_conv: buf must be a contiguous [2 + T, H, W, {conv.cin}] tensor with W even, "
                         f"got {tuple(buf.shape)}")
    if buf.dtype != conv.weight.dtype:
        raise ValueError(f"winograd_conv: buf is {buf.dtype}, the packed weights {conv.weight.dtype}")
    p_t, h, w, c = buf.shape
    t = p_t - 2
    if out is None:
        out = buf.new_empty(t, h, w, conv.cout)
    elif tuple(out.shape) != (t, h, w, conv.cout) or not out.is_contiguous() or out.dtype != buf.dtype:
        raise ValueError(f"winograd_conv: out must be a contiguous {(t, h, w, conv.cout)} {buf.dtype} tensor")
    cfg = config or Config()
    if c % cfg.block_k or cfg.block_m % cfg.rows:
        raise ValueError(f"winograd_conv: {c} channels / block_k={cfg.block_k}, block_m={cfg.block_m} / "
                         f"rows={cfg.rows} do not divide")
    if conv.groups > 1 and conv.cout % (conv.n1 + conv.n2):
        raise ValueError("winograd_conv: output channel groups must be dense (cout a multiple of the group)")
    if not rms_silu._use_kernel(buf):
        return out.copy_(causal_conv.causal_conv_reference(buf, causal_conv.PackedConv(
            conv.weight, conv.bias, c, conv.cout, 0, 0, conv.ref_weight), bias))
    use_tma = cfg.tma and buf.is_cuda and TensorDescriptor is not None
    xd = ud1 = ud2 = None
    if pre is not None and (tuple(pre.shape) != (p_t, h, w // 2, 4 * c) or not pre.is_contiguous()):
        raise ValueError(f"winograd_conv: pre must be a contiguous {(p_t, h, w // 2, 4 * c)} tensor")
    src = buf if pre is None else pre
    if use_tma:  # the input's rows as pixel pairs [P + T, H, W / 2, 2C], or the transformed input
        pairs = buf.view(p_t, h, w // 2, 2 * c) if pre is None else pre
        xd = TensorDescriptor(pairs, list(pairs.shape), list(pairs.stride()),
                              [1, cfg.rows, cfg.block_m // cfg.rows, cfg.block_k])
        ud1 = TensorDescriptor.from_tensor(conv.weight, [cfg.block_k, conv.n1])
        ud2 = TensorDescriptor.from_tensor(conv.weight, [cfg.block_k, conv.n2]) if conv.n2 else ud1
    has_bias = bias and conv.bias is not None
    grid = (causal_conv.tile_grid(t, h, w // 2, cfg.block_m, cfg.rows)[0], conv.groups)
    _winograd_conv_kernel[grid](
        src, xd if use_tma else src, conv.weight, ud1 if use_tma else conv.weight, ud2 if use_tma else conv.weight,
        conv.bias if has_bias else conv.weight, out, h, w, conv.cout, conv.weight.shape[1],
        C=c, N1=conv.n1, N2=max(conv.n2, 16), HAS_N2=conv.n2 > 0, NG=conv.n1 + conv.n2, HAS_BIAS=has_bias, USE_TMA=use_tma,
        BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, ROWS=cfg.rows, PRECISION=causal_conv.dot_precision(buf),
        PRE=pre is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
