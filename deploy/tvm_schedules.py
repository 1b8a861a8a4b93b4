"""TVM kernels as TE computes plus the schedule a `CpuSchedule` parameterises, one builder per algorithm.

Every kernel is `output = epilogue(acc)`. `acc` is a reduction computed one register tile at a time
into a local accumulator (`compute_at` under the output's tile loops, reduction loops outside the
tile, `decompose_reduction` for its initialisation); the epilogue adds the bias, applies the activation
and casts (fp16) or requantises (int8). `_tile` is where a `CpuSchedule` becomes loops:

- tile "MxN": the output-channel loop is split by M and the spatial loop by N, innermost;
- vec: which of the two tile loops is vectorised (the other is unrolled); the accumulator is laid out
  with that axis innermost, and with vec="oc" the weight is first copied into out-channel blocks
  (O/M, ..., M) so the vector loads are contiguous (a per-call packing stage, part of the measured time);
- par: which block loop (output-channel blocks or spatial blocks) is split into `CHUNKS` parallel
  chunks, the outermost loop, marked `parallel` (the thread count is the runtime's business);
- order: inside a chunk, which block loop is outer: "weight_outer" keeps a block of output channels
  (its weights) while the spatial blocks stream by, "input_outer" the reverse.

Factors are clipped to their extent. A spatial factor that does not divide the output width (direct,
depthwise) or the tile count (Winograd) is honoured by padding: the accumulator covers whole tiles
(its inputs are zero-padded or clamped) and the epilogue writes the valid part. An output-channel
factor, the spatial factor of im2col (over OH*OW) and the lanes of a dense layer fall back to the
nearest divisor of the extent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from envs.network import Layer, Op
from envs.space import CpuSchedule

CHUNKS = 8
"""Parallel chunks of the `par` axis: enough for 1, 2, 4 or 8 threads to share evenly."""


@dataclass(frozen=True)
class Precision:
    """Element types of a quantization: storage (data, weights, output), bias and accumulator."""

    storage: str
    bias: str
    acc: str


PRECISIONS = {
    "fp32": Precision("float32", "float32", "float32"),
    "fp16": Precision("float16", "float16", "float32"),
    "int8": Precision("int8", "int32", "int32"),
}
WINOGRAD_WEIGHT_DTYPE = {"fp32": "float32", "fp16": "float16", "int8": "int16"}
"""Storage of the pre-transformed Winograd weight U; int8 kernels transform in int16 (as ncnn)."""


# ---- Winograd F(m x m, 3 x 3) -----------------------------------------------------------------
@dataclass(frozen=True)
class Winograd:
    """Lavin's transforms: Y = AT [ (G g G^T) * (BT d BT^T) ] AT^T, summed over input channels.

    For int8, `row_scale` d makes d*G integral, so U = (dG) g (dG)^T is an exact int16; the output
    transform then uses AT * (L/d) (L = lcm d) and divides by L^2, exactly.
    """

    m: int
    bt: np.ndarray
    g: np.ndarray
    at: np.ndarray
    row_scale: tuple[int, ...]

    @property
    def alpha(self) -> int:
        """Input tile size m + 2."""
        return self.m + 2

    def transforms(self, quant: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(G, AT, divisor) as used by `quant`: integer-scaled for int8, exact rationals otherwise."""
        if quant != "int8":
            return self.g, self.at, 1
        d = np.array(self.row_scale, dtype=np.float64)
        lcm = math.lcm(*self.row_scale)
        return np.rint(d[:, None] * self.g), self.at * (lcm / d)[None, :], lcm * lcm


WINOGRAD = {
    "winograd_f2": Winograd(
        2,
        bt=np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64),
        g=np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
        at=np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64),
        row_scale=(1, 2, 2, 1),
    ),
    "winograd_f4": Winograd(
        4,
        bt=np.array(
            [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
             [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64,
        ),
        g=np.array(
            [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        ),
        at=np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=np.float64),
        row_scale=(4, 6, 6, 24, 24, 1),
    ),
}


def winograd_weight(weight: np.ndarray, algo: str, quant: str) -> np.ndarray:
    """Ahead-of-time kernel transform: raw (O, C, 3, 3) weight -> U of shape (alpha, alpha, C, O)."""
    g, _, _ = WINOGRAD[algo].transforms(quant)
    u = np.einsum("ir,ocrs,js->ijco", g, weight.astype(np.float64), g)
    dtype = WINOGRAD_WEIGHT_DTYPE[quant]
    return (np.rint(u) if quant == "int8" else u).astype(dtype)


# ---- shared compute pieces ----------------------------------------------------------------------
def _const(matrix: np.ndarray, i: tirx.PrimExpr, j: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    """matrix[i, j] as a select chain; it folds to a constant once the loops over i, j are unrolled."""
    value = tirx.const(0, dtype)
    for (a, b), x in np.ndenumerate(matrix):
        if x != 0:
            x = int(x) if dtype.startswith("int") else float(x)
            value = tirx.Select(tirx.all(i == a, j == b), tirx.const(x, dtype), value)
    return value


def _activate(x: tirx.PrimExpr, activation: str | None) -> tirx.PrimExpr:
    """The fused activation on a float32 value."""
    zero, six = tirx.const(0.0, "float32"), tirx.const(6.0, "float32")
    if activation is None:
        return x
    if activation == "relu":
        return te.max(x, zero)
    if activation == "relu6":
        return te.min(te.max(x, zero), six)
    if activation == "hardswish":
        return x * te.min(te.max(x + 3.0, zero), six) / six
    if activation == "sigmoid":
        return te.sigmoid(x)
    if activation == "hardsigmoid":
        return te.min(te.max(x + 3.0, zero), six) / six
    if activation == "silu":
        return x * te.sigmoid(x)
    raise ValueError(f"activation {activation!r} has no kernel epilogue")


@dataclass(frozen=True)
class Operands:
    """A kernel's input placeholders, in call order."""

    data: te.Tensor
    weight: te.Tensor
    bias: te.Tensor
    requant: te.Tensor | None  # int8 only: (accumulator scale per output channel..., 1 / output scale), float32

    def epilogue(self, quant: str, activation: str | None, acc: tirx.PrimExpr, o: tirx.PrimExpr) -> tirx.PrimExpr:
        """Bias, activation, and the cast (float) or requantisation (int8) of one accumulator value."""
        if self.requant is None:
            x = acc + self.bias[o].astype("float32")
            return _activate(x, activation).astype(PRECISIONS[quant].storage)
        x = _activate((acc + self.bias[o]).astype("float32") * self.requant[o], activation)
        q = te.nearbyint(x * self.requant[self.requant.shape[0] - 1])
        return te.max(te.min(q, tirx.const(127.0, "float32")), tirx.const(-128.0, "float32")).astype("int8")


def _nearest_divisor(n: int, want: int) -> int:
    """The divisor of n closest to `want` (the larger on a tie)."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - want), -d))


def _padded_tile(extent: int, want: int) -> tuple[int, int]:
    """(factor, padded extent): the factor clipped to the extent, the extent rounded up to whole tiles."""
    factor = min(want, extent)
    return factor, -(-extent // factor) * factor


def _padded_input(layer: Layer, data: te.Tensor, height: int, width: int) -> te.Tensor:
    """data[0] zero-padded by `layer.padding` and extended with zeros to (C, height, width)."""
    c, h, w = layer.in_shape
    ph, pw = layer.padding
    zero = tirx.const(0, data.dtype)
    return te.compute(
        (c, height, width),
        lambda ci, y, x: tirx.if_then_else(
            tirx.all(y >= ph, y < h + ph, x >= pw, x < w + pw), data[0, ci, y - ph, x - pw], zero
        ),
        name="pad",
    )


def _chunks(extent: int) -> int:
    """Parallel chunks of a loop: its smallest divisor >= CHUNKS, or the whole extent."""
    return next(d for d in range(1, extent + 1) if extent % d == 0 and (d >= CHUNKS or d == extent))


def _data_axes(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> int:
    return sum(1 for iv in sch.get(block).iter_vars if iv.iter_type == tirx.IterVar.DataPar)


def _inner_pair(df: CpuSchedule, oc: s_tir.schedule.LoopRV, sp: s_tir.schedule.LoopRV) -> tuple:
    """The two tile loops as (unrolled, vectorised)."""
    return (sp, oc) if df.vec == "oc" else (oc, sp)


def _unroll_vectorize(sch: s_tir.Schedule, pair: tuple) -> None:
    sch.unroll(pair[0])
    sch.vectorize(pair[1])


def _register_tile(
    sch: s_tir.Schedule, acc: s_tir.schedule.SBlockRV, df: CpuSchedule, oc: s_tir.schedule.LoopRV,
    sp: s_tir.schedule.LoopRV, reduce: Sequence[s_tir.schedule.LoopRV],
) -> None:
    """Reduction loops outside the (oc, sp) tile, the tile unrolled x vectorised, its init split off."""
    inner = _inner_pair(df, oc, sp)
    sch.reorder(*reduce, *inner)
    _unroll_vectorize(sch, inner)
    init = sch.decompose_reduction(acc, reduce[0])  # its loops follow the tile's order
    _unroll_vectorize(sch, sch.get_loops(init)[-2:])


def _tile(
    sch: s_tir.Schedule,
    out: s_tir.schedule.SBlockRV,
    acc: s_tir.schedule.SBlockRV,
    df: CpuSchedule,
    oc: s_tir.schedule.LoopRV,
    sp: s_tir.schedule.LoopRV,
    factors: tuple[int, int],
    rows: Sequence[s_tir.schedule.LoopRV] = (),
    batch: Sequence[s_tir.schedule.LoopRV] = (),
) -> s_tir.schedule.LoopRV:
    """Tile `out` by (out-channel, spatial) `factors`, compute the accumulator `acc` per tile, and
    return the out-channel block loop.

    `rows` are spatial loops outside the tiled one (fused into the spatial block loop), `batch` loops
    go right inside the parallel chunk loop. `acc`'s last two data axes must be (out-channel, spatial).
    """
    oo, oi = sch.split(oc, [None, factors[0]])
    so, si = sch.split(sp, [None, factors[1]])
    sb = sch.fuse(*rows, so) if rows else so
    par = oo if df.par == "oc" else sb
    chunk, within = sch.split(par, [_chunks(int(sch.get(par).extent)), None])
    oc_block, sp_block = (within, sb) if df.par == "oc" else (oo, within)
    first, second = (oc_block, sp_block) if df.order == "weight_outer" else (sp_block, oc_block)
    inner = _inner_pair(df, oi, si)
    sch.reorder(chunk, *batch, first, second, *inner)
    sch.parallel(chunk)
    _unroll_vectorize(sch, inner)

    sch.set_scope(acc, 0, "local")
    if df.vec == "oc":  # the accumulator tile with its vectorised axis innermost
        sch.transform_layout(acc, ("write", 0), lambda *ax: (*ax[:-2], ax[-1], ax[-2]))
    sch.compute_at(acc, second, preserve_unit_loops=True)
    outer = len(batch) + 3
    loops = sch.get_loops(acc)
    ndim = _data_axes(sch, acc)
    _register_tile(sch, acc, df, loops[outer + ndim - 2], loops[outer + ndim - 1], loops[outer + ndim :])
    return oc_block


def _parallel_outer(sch: s_tir.Schedule, name: str) -> None:
    """A copy-like stage: its outermost loop in parallel."""
    sch.parallel(sch.get_loops(sch.get_sblock(name))[0])


def _pack_weight(sch: s_tir.Schedule, acc: s_tir.schedule.SBlockRV, df: CpuSchedule, mt: int) -> None:
    """With `vec="oc"`, copy the weight ahead of the loop nest into out-channel blocks with the block
    innermost, (O/mt, ..., mt), so the vectorised loads are contiguous (a parallel stage per call)."""
    if df.vec != "oc":
        return
    pack = sch.cache_read(acc, "weight", "global")
    sch.transform_layout(pack, ("write", 0), lambda o, *rest: (o // mt, *rest, o % mt))
    sch.parallel(sch.get_loops(pack)[0])


# ---- algorithms -----------------------------------------------------------------------------
Schedule = Callable[[s_tir.Schedule], None]
Built = tuple[te.Tensor, Schedule]


def _conv_tiles(layer: Layer, df: CpuSchedule) -> tuple[int, int, int]:
    """(out-channel factor, spatial factor over output columns, padded output width)."""
    mt, nt = df.tile_shape
    nt, owp = _padded_tile(layer.out_shape[2], nt)
    return _nearest_divisor(layer.out_shape[0], mt), nt, owp


def _direct(layer: Layer, quant: str, df: CpuSchedule, ops: Operands, per_tile_padding: bool) -> Built:
    """Loop nest over NCHW: acc[oh, oc, ow] += pad[ic, oh*s+kh, ow*s+kw] * w[oc, ic, kh, kw].

    `per_tile_padding` (the depthwise kernel) pads the input inside the out-channel block loop and
    unrolls the whole window; otherwise the padded input is one parallel stage ahead of the loop nest.
    """
    acc_t = PRECISIONS[quant].acc
    cin = layer.in_shape[0]
    cout, oh, ow = layer.out_shape
    (kh, kw), (sh, sw), groups = layer.kernel, layer.stride, layer.groups
    cg, og = cin // groups, cout // groups
    mt, nt, owp = _conv_tiles(layer, df)
    pad = _padded_input(layer, ops.data, (oh - 1) * sh + kh, (owp - 1) * sw + kw)
    window = [te.reduce_axis((0, kh), "rkh"), te.reduce_axis((0, kw), "rkw")]
    channel = [] if cg == 1 else [te.reduce_axis((0, cg), "ric")]
    axes = channel + window

    def body(y, o, x):
        ic = (o // og) * cg + (axes[0] if channel else 0)
        return te.sum(
            pad[ic, y * sh + axes[-2], x * sw + axes[-1]].astype(acc_t)
            * ops.weight[o, axes[0] if channel else 0, axes[-2], axes[-1]].astype(acc_t),
            axis=axes,
        )

    acc = te.compute((oh, cout, owp), body, name="acc")
    out = te.compute(
        (1, cout, oh, ow), lambda n, o, y, x: ops.epilogue(quant, layer.activation, acc[y, o, x], o), name="out"
    )

    def schedule(sch: s_tir.Schedule) -> None:
        b_out, b_acc = sch.get_sblock("out"), sch.get_sblock("acc")
        _pack_weight(sch, b_acc, df, mt)
        if df.vec == "oc" and og < mt and cin % mt == 0:  # the input channel changes along the tile
            sch.transform_layout("pad", ("write", 0), lambda c, y, x: (c // mt, y, x, c % mt))
        n, o, y, x = sch.get_loops(b_out)
        oc_block = _tile(sch, b_out, b_acc, df, o, x, (mt, nt), rows=[y], batch=[n])
        if per_tile_padding:
            sch.compute_at(sch.get_sblock("pad"), oc_block)
            for loop in sch.get_loops(b_acc)[-len(axes) - 2 : -2]:
                sch.unroll(loop)
        else:
            _parallel_outer(sch, "pad")

    return out, schedule


def _im2col(layer: Layer, quant: str, df: CpuSchedule, ops: Operands) -> Built:
    """GEMM acc[oc, p] = sum_k w[oc, k] * col[k, p] over an explicit column buffer (a 1x1 stride-1
    unpadded layer reads the input as its column buffer). The spatial factor is the nearest divisor of
    OH*OW: a tile crossing rows of the output keeps the GEMM's columns contiguous."""
    acc_t = PRECISIONS[quant].acc
    cin, h, w = layer.in_shape
    cout, oh, ow = layer.out_shape
    (kh, kw), (sh, sw), (ph, pw), groups = layer.kernel, layer.stride, layer.padding, layer.groups
    og, k = cout // groups, cin // groups * kh * kw
    mt, nt = (_nearest_divisor(n, want) for n, want in zip((cout, oh * ow), df.tile_shape))
    direct_read = (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0)
    zero = tirx.const(0, ops.data.dtype)

    def gather(kk, q):
        ci, y, x = kk // (kh * kw), (q // ow) * sh + (kk // kw) % kh - ph, (q % ow) * sw + kk % kw - pw
        if direct_read:
            return ops.data[0, ci, y, x]
        return tirx.if_then_else(tirx.all(y >= 0, y < h, x >= 0, x < w), ops.data[0, ci, y, x], zero)

    col = None if direct_read else te.compute((cin * kh * kw, oh * ow), gather, name="col")

    def column(kk, q):
        return gather(kk, q) if col is None else col[kk, q]

    rk = te.reduce_axis((0, k), "rk")
    acc = te.compute(
        (cout, oh * ow),
        lambda o, q: te.sum(
            column((o // og) * k + rk, q).astype(acc_t)
            * ops.weight[o, rk // (kh * kw), (rk // kw) % kh, rk % kw].astype(acc_t),
            axis=rk,
        ),
        name="acc",
    )
    out = te.compute(
        (1, cout, oh, ow),
        lambda n, o, y, x: ops.epilogue(quant, layer.activation, acc[o, y * ow + x], o),
        name="out",
    )

    def schedule(sch: s_tir.Schedule) -> None:
        b_out = sch.get_sblock("out")
        sch.transform_block_layout(b_out, lambda n, o, y, x: (n, o, y * ow + x))
        n, o, q = sch.get_loops(b_out)
        b_acc = sch.get_sblock("acc")
        _pack_weight(sch, b_acc, df, mt)
        _tile(sch, b_out, b_acc, df, o, q, (mt, nt), batch=[n])
        if not direct_read:
            _parallel_outer(sch, "col")

    return out, schedule


def _dense(layer: Layer, quant: str, df: CpuSchedule, ops: Operands) -> Built:
    """GEMV on the flattened input: `tile` = (out features, reduction lanes); `vec` picks lanes or
    features; with batch 1 there is no spatial axis, so the feature blocks are always the parallel loop
    and `order` has nothing to reorder."""
    acc_t = PRECISIONS[quant].acc
    cin, h, w = layer.in_shape
    cout = layer.out_shape[0]
    k = cin * h * w
    mt, lanes = (_nearest_divisor(n, want) for n, want in zip((cout, k), df.tile_shape))
    rk = te.reduce_axis((0, k // lanes), "rk")
    rl = te.reduce_axis((0, lanes), "rl")

    def x_at(i):
        return ops.data[0, i // (h * w), (i // w) % h, i % w].astype(acc_t)

    part = te.compute(
        (cout, lanes),
        lambda o, l: te.sum(x_at(rk * lanes + l) * ops.weight[o, rk * lanes + l].astype(acc_t), axis=rk),
        name="acc",
    )
    total = te.compute((cout,), lambda o: te.sum(part[o, rl], axis=rl), name="total")
    out = te.compute((1, cout, 1, 1), lambda n, o, y, x: ops.epilogue(quant, layer.activation, total[o], o), name="out")

    def schedule(sch: s_tir.Schedule) -> None:
        b_out, b_total, b_part = sch.get_sblock("out"), sch.get_sblock("total"), sch.get_sblock("acc")
        _pack_weight(sch, b_part, df, mt)
        n, o, y, x = sch.get_loops(b_out)
        oo, oi = sch.split(o, [None, mt])
        sch.parallel(oo)
        sch.compute_at(b_total, oo)
        sch.compute_at(b_part, oo)
        _register_tile(sch, b_part, df, *sch.get_loops(b_part)[-3:-1], sch.get_loops(b_part)[-1:])
        sch.unroll(sch.get_loops(b_total)[-1])

    return out, schedule


def _winograd(layer: Layer, quant: str, df: CpuSchedule, ops: Operands, algo: str) -> Built:
    """F(m x m, 3 x 3) with U = G g G^T given: input transform V = BT d BT^T per tile, a batched GEMM
    M[e, n] = U[e, n]^T V[e, n] tiled by `_tile` (out-channels x tiles), output transform AT M AT^T.

    int8: V in int16, M and the output transform in int32, divided exactly by L^2 (see `Winograd`).
    fp16: transforms and GEMM in fp32 from fp16 data and U.
    """
    wino = WINOGRAD[algo]
    m, a = wino.m, wino.alpha
    _, at, divisor = wino.transforms(quant)
    acc_t = PRECISIONS[quant].acc
    t_t = "int16" if quant == "int8" else "float32"  # input transform
    cin = layer.in_shape[0]
    cout, oh, ow = layer.out_shape
    th, tw = -(-oh // m), -(-ow // m)
    tiles = th * tw
    mt, nt = df.tile_shape
    mt = _nearest_divisor(cout, mt)
    nt, tp = _padded_tile(tiles, nt)
    pad = _padded_input(layer, ops.data, th * m + 2, tw * m + 2)
    bt = wino.bt

    r1 = te.reduce_axis((0, a), "r1")

    def tile_row(c, t, e, x):  # tiles past the last (padding of the GEMM) repeat the last one
        t = te.min(t, tiles - 1)
        return te.sum(_const(bt, e, r1, t_t) * pad[c, t // tw * m + r1, t % tw * m + x].astype(t_t), axis=r1)

    v1 = te.compute((cin, tp, a, a), tile_row, name="v1")
    r2 = te.reduce_axis((0, a), "r2")
    v = te.compute(
        (a, a, cin, tp),
        lambda e, u, c, t: te.sum(v1[c, t, e, r2] * _const(bt, u, r2, t_t), axis=r2),
        name="v",
    )
    rc = te.reduce_axis((0, cin), "rc")
    mm = te.compute(
        (a, a, cout, tp),
        lambda e, u, o, t: te.sum(ops.weight[e, u, rc, o].astype(acc_t) * v[e, u, rc, t].astype(acc_t), axis=rc),
        name="acc",
    )
    r3 = te.reduce_axis((0, a), "r3")
    y1 = te.compute(
        (cout, tp, m, a), lambda o, t, i, u: te.sum(_const(at, i, r3, acc_t) * mm[r3, u, o, t], axis=r3), name="y1"
    )
    r4 = te.reduce_axis((0, a), "r4")
    y = te.compute(
        (cout, tp, m, m), lambda o, t, i, j: te.sum(y1[o, t, i, r4] * _const(at, j, r4, acc_t), axis=r4), name="y"
    )

    def result(n, o, yy, xx):
        value = y[o, yy // m * tw + xx // m, yy % m, xx % m]
        return ops.epilogue(quant, layer.activation, value if divisor == 1 else tirx.truncdiv(value, divisor), o)

    out = te.compute((1, cout, oh, ow), result, name="out")

    def schedule(sch: s_tir.Schedule) -> None:
        _parallel_outer(sch, "pad")
        b_v, b_v1 = sch.get_sblock("v"), sch.get_sblock("v1")
        e, u, c, t = sch.get_loops(b_v)[:4]
        sch.reorder(c, t, e, u)
        sch.parallel(c)
        sch.compute_at(b_v1, t)
        for block in (b_v1, b_v):
            for loop in sch.get_loops(block)[2:]:
                sch.unroll(loop)

        b_acc = sch.get_sblock("acc")
        b_copy = sch.cache_write(b_acc, 0, "local")
        e, u, o, t = sch.get_loops(b_copy)
        _tile(sch, b_copy, b_acc, df, o, t, (mt, nt), batch=[e, u])

        b_out = sch.get_sblock("out")
        n, o, yy, xx = sch.get_loops(b_out)
        yo, yi = sch.split(yy, [None, m])
        xo, xi = sch.split(xx, [None, m])
        sch.reorder(o, yo, xo, yi, xi)
        sch.parallel(o)
        for name in ("y", "y1"):
            sch.compute_at(sch.get_sblock(name), xo)
        for block in ("y1", "y", "out"):
            for loop in sch.get_loops(sch.get_sblock(block))[4:]:
                sch.unroll(loop)

    return out, schedule


def kernel_module(layer: Layer, quant: str, algo: str, df: CpuSchedule, inputs: Sequence[te.Tensor]) -> tvm.IRModule:
    """The scheduled module (one PrimFunc "main": inputs, then the output) of a valid choice."""
    ops = Operands(inputs[0], inputs[1], inputs[2], inputs[3] if quant == "int8" else None)
    if layer.op is Op.DENSE:
        out, schedule = _dense(layer, quant, df, ops)
    elif algo in WINOGRAD:
        out, schedule = _winograd(layer, quant, df, ops, algo)
    elif algo == "im2col":
        out, schedule = _im2col(layer, quant, df, ops)
    else:
        out, schedule = _direct(layer, quant, df, ops, per_tile_padding=algo == "depthwise")
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([*inputs, out])}))
    schedule(sch)
    return sch.mod
