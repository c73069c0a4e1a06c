"""Scalar building blocks shared by every quantization kernel.

Everything here is float32-exact: the kernels that call these reproduce ggml's reference C, which
does plain IEEE float32 arithmetic with no fused multiply-add. Never write a bare Python float literal
inside a kernel (it is a float64 and silently promotes the expression); wrap it: ``np.float32(0.5)``.
"""

from __future__ import annotations

import sys
import types as pytypes

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from qtool.kernels import prepare_numba

prepare_numba()  # before the first kernel is jitted (kernels/__init__.py)

F32 = np.float32
#: Per-block kernels. error_model="numpy" gives C's IEEE x/0 (inf/NaN) instead of ZeroDivisionError,
#: which huge finite inputs reach in ggml's searches.
jit = numba.njit(cache=True, nogil=True, error_model="numpy")
#: Small helpers called in a hot loop: inlined into each caller in Numba's IR. A call between jitted functions
#: is a real call (LLVM never sees both), with every array argument passed as seven values and its
#: reference count raised and lowered (atomic operations) on entry and exit.
jit_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
#: The one parallel driver per type, looping over rows with numba.prange.
jit_rows = numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")


@intrinsic
def borrowed(typingctx, value):
    """``value`` (an array, or a tuple whose arrays are taken so; its other items as they are) as views that
    hold no reference: the same data, shape and strides, no memory owner. Every view of an array raises and
    lowers its owner's count with an atomic add (NRT_incref/decref): a slice, an argument on entry to a
    jitted function and on exit, each alias an inlined helper makes. A block function called per block with
    its row, importance vector and scratch paid dozens of those per block, and the two threads' slices of one
    row array contended for its count's cache line; views of borrowed arrays pay a test for a null owner
    instead.

    Only for arrays that something else keeps alive while the views are used (a driver's arguments, or a
    scratch tuple held and then passed to keep_alive after the loop that uses its views), and never
    returned or stored beyond that."""
    if not isinstance(value, (types.Array, types.BaseTuple)):
        return None

    def codegen(context, builder, sig, args):
        def strip(ty, v):
            if isinstance(ty, types.Array):
                ary = context.make_array(ty)(context, builder, value=v)
                ary.meminfo = ir.Constant(ary.meminfo.type, None)
                ary.parent = ir.Constant(ary.parent.type, None)
                return ary._getvalue()
            if isinstance(ty, types.BaseTuple):
                parts = [strip(t, builder.extract_value(v, i)) for i, t in enumerate(ty)]
                return context.make_tuple(builder, ty, parts)
            return v

        return strip(sig.args[0], args[0])

    return value(value), codegen


@intrinsic
def local_f32(typingctx, n):
    """float32[n] in the calling function's stack frame (n a compile-time constant), a view that owns
    nothing: scratch for a few lanes without an allocation per call, which LLVM keeps in registers. Valid
    until the function that called it returns (also where Numba inlined that function): never return
    or keep it."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    count = n.literal_value
    arrty = types.Array(types.float32, 1, "C")

    def codegen(context, builder, sig, args):
        from numba.core import cgutils

        data = cgutils.alloca_once(builder, ir.FloatType(), size=count)
        ary = context.make_array(arrty)(context, builder)
        itemsize = context.get_constant(types.intp, 4)
        context.populate_array(ary, data=data, shape=[context.get_constant(types.intp, count)],
                               strides=[itemsize], itemsize=itemsize, meminfo=None)
        return ary._getvalue()

    return arrty(n), codegen


@intrinsic
def keep_alive(typingctx, value):
    """Nothing, at this point of the code: ``value`` (the owner of borrowed views) is used here, so Numba
    releases it no earlier."""
    def codegen(context, builder, sig, args):
        return context.get_dummy_value()

    return types.none(value), codegen


@intrinsic
def f32_bits(typingctx, x):
    """Reinterpret a float32 as its uint32 bit pattern (C's memcpy between float and int)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, x):
    """Reinterpret the low 32 bits of an integer as a float32."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if x.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif x.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(x), codegen


@intrinsic
def pick(typingctx, condition, a, b):
    """C's ``condition ? a : b`` without a branch (LLVM's select): Numba writes a conditional expression as
    a branch, and one inside a loop keeps LLVM from vectorizing it. Both values are computed, so neither
    may be one that must not be (an out-of-range cast is harmless: its value is simply not picked)."""
    if condition != types.boolean or a != b:
        return None

    def codegen(context, builder, sig, args):
        return builder.select(*args)

    return a(condition, a, b), codegen


@intrinsic
def abs_max_bits(typingctx, x, first, n):
    """The largest bit pattern of |x[first]|, ..., |x[first + n - 1]| (sign bits cleared) as uint32, n a
    compile-time constant, x a contiguous float32 array or bfloat16 words (uint16: the pattern is then the
    float32 one, the word's bits above 16 zero bits): one vector load and LLVM's unsigned-max reduction. For
    floats without NaN the largest pattern is the largest magnitude, whatever the order."""
    if not (isinstance(x, types.Array) and x.dtype in (types.float32, types.uint16) and x.layout == "C"
            and isinstance(first, types.Integer) and isinstance(n, types.IntegerLiteral)):
        return None
    count = n.literal_value
    width = 16 if x.dtype == types.uint16 else 32

    def codegen(context, builder, sig, args):
        from numba.core import cgutils

        vi = ir.VectorType(ir.IntType(width), count)
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        at = context.cast(builder, args[1], sig.args[1], types.int64)
        words = builder.load(builder.bitcast(cgutils.gep(builder, data, at), vi.as_pointer()), align=width // 8)
        magnitudes = builder.and_(words, ir.Constant(vi, [(1 << (width - 1)) - 1] * count))
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(width), [vi]),
                                                f"llvm.vector.reduce.umax.v{count}i{width}")
        largest = builder.call(reduce, [magnitudes])
        if width == 32:
            return largest
        return builder.shl(builder.zext(largest, ir.IntType(32)), ir.Constant(ir.IntType(32), 16))

    return types.uint32(x, first, n), codegen


@intrinsic
def first_with_abs_bits(typingctx, x, first, n, m):
    """The smallest j < n with |x[first + j]|'s bit pattern equal to m (uint32), or n where there is none; n a
    compile-time constant of at most 64, x a contiguous float32 array: one vector compare, its mask's trailing
    zeros."""
    if not (isinstance(x, types.Array) and x.dtype == types.float32 and x.layout == "C"
            and isinstance(first, types.Integer) and isinstance(n, types.IntegerLiteral)
            and n.literal_value <= 64 and m == types.uint32):
        return None
    count = n.literal_value

    def codegen(context, builder, sig, args):
        from numba.core import cgutils

        i32, i64 = ir.IntType(32), ir.IntType(64)
        vi = ir.VectorType(i32, count)
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        at = context.cast(builder, args[1], sig.args[1], types.int64)
        bits = builder.load(builder.bitcast(cgutils.gep(builder, data, at), vi.as_pointer()), align=4)
        magnitude = builder.and_(bits, ir.Constant(vi, [0x7FFFFFFF] * count))
        wanted = builder.insert_element(ir.Constant(vi, ir.Undefined), args[3], ir.Constant(i32, 0))
        wanted = builder.shuffle_vector(wanted, ir.Constant(vi, ir.Undefined), ir.Constant(vi, [0] * count))
        equal = builder.icmp_unsigned("==", magnitude, wanted)
        mask = builder.zext(builder.bitcast(equal, ir.IntType(count)), i64)
        mask = builder.or_(mask, ir.Constant(i64, 1 << count if count < 64 else 0))
        cttz = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]),
                                              "llvm.cttz.i64")
        return builder.call(cttz, [mask, ir.Constant(ir.IntType(1), 0)])

    return types.int64(x, first, n, m), codegen


@intrinsic
def order_key_range(typingctx, x, first, n):
    """(smallest, largest) order key of x[first], ..., x[first + n - 1] as int32, n a compile-time constant, x a
    contiguous float32 array: a float's key is its magnitude bits, negated where its sign bit is set, so that
    keys order as the floats do, with -0 and +0 both 0 and a NaN beyond +-inf on its sign's side. One vector
    load and LLVM's signed min and max reductions."""
    if not (isinstance(x, types.Array) and x.dtype == types.float32 and x.layout == "C"
            and isinstance(first, types.Integer) and isinstance(n, types.IntegerLiteral)):
        return None
    count = n.literal_value
    pair = types.UniTuple(types.int32, 2)

    def codegen(context, builder, sig, args):
        from numba.core import cgutils

        i32 = ir.IntType(32)
        vi = ir.VectorType(i32, count)
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        at = context.cast(builder, args[1], sig.args[1], types.int64)
        bits = builder.load(builder.bitcast(cgutils.gep(builder, data, at), vi.as_pointer()), align=4)
        magnitude = builder.and_(bits, ir.Constant(vi, [0x7FFFFFFF] * count))
        negative = builder.icmp_signed("<", bits, ir.Constant(vi, [0] * count))
        keys = builder.select(negative, builder.neg(magnitude), magnitude)
        ends = []
        for op in ("smin", "smax"):
            reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [vi]),
                                                    f"llvm.vector.reduce.{op}.v{count}i32")
            ends.append(builder.call(reduce, [keys]))
        return context.make_tuple(builder, pair, ends)

    return pair(x, first, n), codegen


@intrinsic
def float_at(typingctx, x, j):
    """x[j] as float32, for 0 <= j < len(x): a float32 array's element, or the value of a bfloat16 word (x
    uint16: the word is a float32's upper half, so the widening is exact). x contiguous, so that a kernel
    written with it reads either kind of row."""
    if not (isinstance(x, types.Array) and x.dtype in (types.float32, types.uint16) and x.layout == "C"
            and isinstance(j, types.Integer)):
        return None
    words = x.dtype == types.uint16

    def codegen(context, builder, sig, args):
        from numba.core import cgutils

        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        at = context.cast(builder, args[1], sig.args[1], types.int64)
        value = builder.load(cgutils.gep(builder, data, at))
        if not words:
            return value
        wide = builder.shl(builder.zext(value, ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())

    return types.float32(x, j), codegen


def _vector_scan(builder, count, start, step):
    """Emit ``for i in range(count): state = step(i, state)`` with the loop's state (a tuple of LLVM values)
    in phi nodes, not in memory: the scans below run inlined in the kernels' loops, where a stack slot
    was left unpromoted and each iteration went through memory. Returns the final state."""
    entry = builder.block
    head = builder.append_basic_block("scan.head")
    body = builder.append_basic_block("scan.body")
    done = builder.append_basic_block("scan.done")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(count.type)
    i.add_incoming(ir.Constant(count.type, 0), entry)
    state = [builder.phi(v.type) for v in start]
    for phi, v in zip(state, start):
        phi.add_incoming(v, entry)
    builder.cbranch(builder.icmp_signed("<", i, count), body, done)
    builder.position_at_end(body)
    following = step(i, tuple(state))
    i.add_incoming(builder.add(i, ir.Constant(count.type, 1)), builder.block)
    for phi, v in zip(state, following):
        phi.add_incoming(v, builder.block)
    builder.branch(head)
    builder.position_at_end(done)
    return tuple(state)


class _ScanArgs:
    """What both scans below read from their arguments, as LLVM values: integers as int64, elements of
    arrays, values splatted across a vector, and the rows of the points' coordinates."""

    def __init__(self, context, builder, sig, args):
        self.context, self.builder, self.sig, self.args = context, builder, sig, args

    def int64(self, k):
        return self.context.cast(self.builder, self.args[k], self.sig.args[k], types.int64)

    def array(self, k):
        return self.context.make_array(self.sig.args[k])(self.context, self.builder, self.args[k])

    def at(self, k, index):
        """A pointer to element ``index`` (an int64 LLVM value) of array argument k."""
        from numba.core import cgutils

        return cgutils.gep(self.builder, self.array(k).data, index)

    def splat(self, value, vty):
        undef = ir.Constant(vty, ir.Undefined)
        lane0 = self.builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
        return self.builder.shuffle_vector(lane0, undef, ir.Constant(ir.VectorType(ir.IntType(32), vty.count),
                                                                      [0] * vty.count))

    def splat_elements(self, k, first, n, vty):
        """Elements first .. first+n-1 of array argument k, each splatted across a vector."""
        return [self.splat(self.builder.load(self.at(k, self.builder.add(first, ir.Constant(first.type, i)))), vty)
                for i in range(n)]

    def point_rows(self, k, first, n):
        """Pointers to element ``first`` of each of the n rows of the C-contiguous 2-D array argument k."""
        from numba.core import cgutils

        b = self.builder
        pos = self.array(k)
        stride = cgutils.unpack_tuple(b, pos.shape, 2)[1]
        return [cgutils.gep(b, pos.data, b.add(b.mul(ir.Constant(stride.type, i), stride), first)) for i in range(n)]


def _distances(builder, scale, points, xs, ws, vty):
    """0 + w0*(s*p0 - x0)^2 + w1*(s*p1 - x1)^2 + ... lane by lane, each step as C orders it in float32
    ((w*diff)*diff, the sum from the left). All arguments vectors of type vty; scale None where the points
    are the products s*p already."""
    d = ir.Constant(vty, [0.0] * vty.count)
    for p, x, w in zip(points, xs, ws):
        diff = builder.fsub(p if scale is None else builder.fmul(scale, p), x)
        d = builder.fadd(d, builder.fmul(builder.fmul(w, diff), diff))
    return d


def _is_f32_array(a) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.float32


_FLT_MAX = float(np.finfo(np.float32).max)


@intrinsic
def nearest_listed_8(typingctx, pos, first_point, n_points, x, w, at_x, scales, first_scale, idx, at_idx):
    """A nearest-point scan for eight trial scales at once: for t < 8, with s = scales[first_scale + t],
    idx[at_idx + t] gets the first j < n_points (or -1) with the strictly smallest distance below
    FLT_MAX, where point j's distance, with c = first_point + j and y = at_x, is

        d = 0 + w[y]*(s*pos[0, c] - x[y])^2 + ... + w[y+3]*(s*pos[3, c] - x[y+3])^2

    each product and sum in this order as float32 (w*diff*diff is (w*diff)*diff, as C groups it). So
    each trial gets what a scalar scan of the points in order gives. pos float32[4, m] C-contiguous;
    x, w, scales float32[...]; idx int32[...]. Written as LLVM vector operations (the trials side by
    side, each trial's best kept in a register across the scan): Numba's loop over so few lanes stayed
    scalar."""
    if not (_is_f32_array(pos) and pos.ndim == 2 and pos.layout == "C" and _is_f32_array(x) and _is_f32_array(w)
            and _is_f32_array(scales) and isinstance(idx, types.Array) and idx.dtype == types.int32
            and all(isinstance(v, types.Integer) for v in (first_point, n_points, at_x, first_scale, at_idx))):
        return None
    sig = types.void(pos, first_point, n_points, x, w, at_x, scales, first_scale, idx, at_idx)

    def codegen(context, builder, sig, args):
        a = _ScanArgs(context, builder, sig, args)
        vf, vi = ir.VectorType(ir.FloatType(), 8), ir.VectorType(ir.IntType(32), 8)
        s = builder.load(builder.bitcast(a.at(6, a.int64(7)), vf.as_pointer()), align=4)
        xs, ws = a.splat_elements(3, a.int64(5), 4, vf), a.splat_elements(4, a.int64(5), 4, vf)
        rows = a.point_rows(0, a.int64(1), 4)

        def step(j, state):
            held, found = state
            points = [a.splat(builder.load(builder.gep(row, [j])), vf) for row in rows]
            d = _distances(builder, s, points, xs, ws, vf)
            better = builder.fcmp_ordered("<", d, held)
            return builder.select(better, d, held), builder.select(better, a.splat(builder.trunc(j, vi.element), vi),
                                                                   found)

        _, found = _vector_scan(builder, a.int64(2), (ir.Constant(vf, [_FLT_MAX] * 8), ir.Constant(vi, [-1] * 8)),
                                step)
        builder.store(found, builder.bitcast(a.at(8, a.int64(9)), vi.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


#: listed points measured side by side by nearest_packed_point_8d (one AVX-512 vector, two AVX2 ones)
POINT_LANES = 16


def _has_avx512(context) -> bool:
    """Whether the code being compiled may use AVX-512F (the features Numba compiles for: the host's, or
    NUMBA_CPU_FEATURES)."""
    return "+avx512f" in str(getattr(context.codegen(), "_tm_features", "")).split(",")


def _packed_scan_codegen(context, builder, sig, args):
    """nearest_packed_point_8d's code: a vector loop over the list, 16 points a chunk. A coordinate's
    product s*values[level] is one of three, formed once before the loop (the same float32 products C forms
    point by point); with AVX-512 each coordinate is picked by one permute from a 16-entry table (entry i holds
    the product of level i & 3: the index's bits above the level are the next coordinate's), where selects by
    comparisons took ~7 instructions a coordinate."""
    from numba.core import cgutils

    a = _ScanArgs(context, builder, sig, args)
    width = POINT_LANES
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vf, vi, vh = (ir.VectorType(t, width) for t in (ir.FloatType(), i32, ir.IntType(16)))
    xs, ws = a.splat_elements(3, a.int64(5), 8, vf), a.splat_elements(4, a.int64(5), 8, vf)
    n = a.int64(2)
    codes = a.at(0, a.int64(1))
    products = [builder.fmul(args[6], builder.load(a.at(7, ir.Constant(i64, k)))) for k in range(3)]
    if _has_avx512(context) and width == 16:
        table = ir.Constant(vf, ir.Undefined)
        for i in range(width):
            table = builder.insert_element(table, products[min(i & 3, 2)], ir.Constant(i32, i))
        permute = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vi]),
                                                 "llvm.x86.avx512.permvar.sf.512")

        def coordinates(code):  # coordinate k of a point is the product of level (code >> 2k) & 3
            wide = builder.zext(code, vi)
            return [builder.call(permute, [table, builder.lshr(wide, ir.Constant(vi, [2 * k] * width))])
                    for k in range(8)]
    else:
        values = [a.splat(p, vf) for p in products]
        zero, one, three = (ir.Constant(vh, [v] * width) for v in (0, 1, 3))

        def coordinates(code):
            points = []
            for k in range(8):
                lv = builder.and_(builder.lshr(code, ir.Constant(vh, [2 * k] * width)), three)
                points.append(builder.select(builder.icmp_signed("==", lv, zero), values[0],
                                             builder.select(builder.icmp_signed("==", lv, one), values[1], values[2])))
            return points

    lane_ids = ir.Constant(vi, list(range(width)))
    n_lanes = a.splat(builder.trunc(n, i32), vi)
    chunks = builder.sdiv(builder.add(n, ir.Constant(i64, width - 1)), ir.Constant(i64, width))

    def step(chunk, state):
        held, found = state
        c = builder.mul(chunk, ir.Constant(i64, width))
        code = builder.load(builder.bitcast(builder.gep(codes, [c]), vh.as_pointer()), align=2)
        points = coordinates(code)
        d = _distances(builder, None, points, xs, ws, vf)
        j = builder.add(a.splat(builder.trunc(c, i32), vi), lane_ids)
        better = builder.and_(builder.fcmp_ordered("<", d, held), builder.icmp_signed("<", j, n_lanes))
        return builder.select(better, d, held), builder.select(better, j, found)

    bests, founds = _vector_scan(builder, chunks, (ir.Constant(vf, [_FLT_MAX] * width),
                                                   ir.Constant(vi, [-1] * width)), step)

    # the lanes merged by (distance, position) in one unsigned reduction of 64-bit keys (two trees, distances
    # then the positions at the smallest, took twice the steps). A distance's key is its bit pattern with the
    # sign bit flipped, or every bit where negative (a negative importance weight): unsigned order is then the
    # float order, -0 aside, which a sum from +0 never gives; NaN is never held (it compares false). A lane
    # that found none holds FLT_MAX, which no held distance equals, and position -1: the largest key of all.
    v64 = ir.VectorType(i64, width)
    bits = builder.bitcast(bests, vi)
    flip = builder.or_(builder.ashr(bits, ir.Constant(vi, [31] * width)), ir.Constant(vi, [-2**31] * width))
    keys = builder.or_(builder.shl(builder.zext(builder.xor(bits, flip), v64), ir.Constant(v64, [32] * width)),
                       builder.zext(founds, v64))
    reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [v64]),
                                            f"llvm.vector.reduce.umin.v{width}i64")
    key = builder.call(reduce, [keys])
    unfound = int(np.float32(_FLT_MAX).view(np.uint32)) ^ 0x80000000
    none = builder.icmp_unsigned("==", builder.lshr(key, ir.Constant(i64, 32)), ir.Constant(i64, unfound))
    return builder.select(none, ir.Constant(i64, -1), builder.and_(key, ir.Constant(i64, 0xFFFFFFFF)))


@intrinsic
def nearest_packed_point_8d(typingctx, codes, first_point, n_points, x, w, at_x, scale, values):
    """The position j < n_points of the listed point nearest to x[at_x:at_x+8] at ``scale``, or -1 where no
    distance is below FLT_MAX: the first strictly smallest of

        d = 0 + w[y]*(scale*p0 - x[y])^2 + ... + w[y+7]*(scale*p7 - x[y+7])^2

    where pk = values[(codes[c] >> 2k) & 3] (c = first_point + j, y = at_x; each product and sum in this
    order as float32, w*diff*diff being (w*diff)*diff as C groups it), which is what a scalar scan of the
    points in order keeps. codes uint16[m]: a point's 8 level indices (0, 1 or 2) packed 2 bits each, with
    POINT_LANES - 1 readable entries past the last point; values float32[3]: each level's coordinate (IQ1:
    its x_p or x_m; IQ2: the odd 1, 3, 5); x, w float32[...]. The points are measured POINT_LANES at a time,
    each vector lane keeping its own first smallest; the lanes are merged at the end by (distance, position).
    Written as LLVM vector operations: Numba's loop left the comparisons scalar, in a second pass over the
    stored distances. Packed, a list of n points is 2n contiguous bytes, where a float32 table with a row
    per coordinate (1.6-11 MB) spread it over eight rows: the lists are read from memory mostly not in the
    cache, and a search now touches a fraction of the cache lines."""
    if not (isinstance(codes, types.Array) and codes.dtype == types.uint16 and codes.ndim == 1
            and codes.layout == "C" and _is_f32_array(x) and _is_f32_array(w) and _is_f32_array(values)
            and scale == types.float32 and all(isinstance(v, types.Integer) for v in (first_point, n_points, at_x))):
        return None
    sig = types.int64(codes, first_point, n_points, x, w, at_x, scale, values)
    return sig, _packed_scan_codegen


#: blocks searched side by side by lane_quant_sums and lane_fit_errors (one AVX-512 vector, two AVX2 ones)
SUB_WIDTH = 16


def _lane_arrays_ok(*arrays) -> bool:
    return all(_is_f32_array(a) and a.layout == "C" for a in arrays)


class _Lanes:
    """Whole vectors of ``width`` floats (SUB_WIDTH unless given) of array arguments, for the lane scans below."""

    def __init__(self, context, builder, sig, args, width=SUB_WIDTH):
        self.a = _ScanArgs(context, builder, sig, args)
        self.b = builder
        self.width = width
        self.vf = ir.VectorType(ir.FloatType(), width)
        self.vi = ir.VectorType(ir.IntType(32), width)

    def load(self, k, index):
        return self.b.load(self.b.bitcast(self.a.at(k, index), self.vf.as_pointer()), align=4)

    def store(self, v, k, index):
        self.b.store(v, self.b.bitcast(self.a.at(k, index), self.vf.as_pointer()), align=4)

    def row(self, k, i):
        """The flat index of row i's first element in the 2-D array argument k."""
        from numba.core import cgutils

        return self.b.mul(i, cgutils.unpack_tuple(self.b, self.a.array(k).shape, 2)[1])

    def floats(self, value):
        return ir.Constant(self.vf, [value] * self.width)

    def fabs(self, x):
        """fabsf lane by lane (the sign bit cleared)."""
        return self.b.bitcast(self.b.and_(self.b.bitcast(x, self.vi), self.ints(0x7FFFFFFF)), self.vf)

    def nearest_int(self, value):
        """ggml's nearest_int lane by lane: the 1.5*2^23 magic-number trick, in int32."""
        r = self.b.fadd(value, self.floats(12582912.0))
        return self.b.sub(self.b.and_(self.b.bitcast(r, self.vi), self.ints(0x007FFFFF)), self.ints(0x00400000))

    def first_largest(self, count, k):
        """(largest |x|, the first x of that magnitude, as C's strict > keeps it) of each lane over the first
        count rows of the 2-D array argument k."""
        b = self.b

        def step(i, state):
            top, at_top = state
            x = self.load(k, self.row(k, i))
            ax = self.fabs(x)
            bigger = b.fcmp_ordered(">", ax, top)
            return b.select(bigger, ax, top), b.select(bigger, x, at_top)

        return _vector_scan(b, count, (self.floats(0.0),) * 2, step)

    def ints(self, value):
        return ir.Constant(self.vi, [value] * self.width)


@intrinsic
def lane_quant_sums(typingctx, xt, wt, lt, n, isc, vmin, nmax, sl, sl2, sxl):
    """One trial of make_qkx2/qkx3_quants for SUB_WIDTH blocks side by side, block b in lane b (column b
    of xt, wt: float32[n, SUB_WIDTH]): with s = isc[b], m = vmin[b], for i < n in order

        l = MAX(0, MIN(nmax, nearest_int(s*(x - m))));  lt[i, b] = l
        sl[b] += w*l;  sl2[b] += w*l*l;  sxl[b] += w*l*x          (from 0; w*l*l is (w*l)*l as C groups it)

    each step in C's float32 order (nearest_int by ggml's 1.5*2^23 trick, in int32). Written as LLVM
    vector operations with the sums in registers: Numba's loop kept them in memory. Each row of xt, wt, lt
    and each of isc .. sxl is read or written as one whole vector of SUB_WIDTH floats: the caller sees to
    the sizes."""
    if not (_lane_arrays_ok(xt, wt, lt, isc, vmin, sl, sl2, sxl) and xt.ndim == 2 and wt.ndim == 2 and lt.ndim == 2
            and isinstance(n, types.Integer) and isinstance(nmax, types.Integer)):
        return None
    sig = types.void(xt, wt, lt, n, isc, vmin, nmax, sl, sl2, sxl)

    def codegen(context, builder, sig, args):
        v = _Lanes(context, builder, sig, args)
        zero = ir.Constant(ir.IntType(64), 0)
        s, m = v.load(4, zero), v.load(5, zero)
        nm = v.a.splat(builder.trunc(v.a.int64(6), ir.IntType(32)), v.vi)

        def step(i, state):
            a, c, e = state
            x, w = v.load(0, v.row(0, i)), v.load(1, v.row(1, i))
            q = v.nearest_int(builder.fmul(s, builder.fsub(x, m)))
            q = builder.select(builder.icmp_signed("<", nm, q), nm, q)
            q = builder.select(builder.icmp_signed("<", q, v.ints(0)), v.ints(0), q)
            fl = builder.sitofp(q, v.vf)
            v.store(fl, 2, v.row(2, i))
            wl = builder.fmul(w, fl)
            return builder.fadd(a, wl), builder.fadd(c, builder.fmul(wl, fl)), builder.fadd(e, builder.fmul(wl, x))

        a, c, e = _vector_scan(builder, v.a.int64(3), (v.floats(0.0),) * 3, step)
        for k, total in ((7, a), (8, c), (9, e)):
            v.store(total, k, zero)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def lane_trial_sums(typingctx, w, x, n, ls, lanes, sqx, sq2):
    """The IQ2/IQ3 searches' sums over every trial at once: for each lane s < lanes (a compile-time constant)
    and i < n in order, with q = float(2*ls[i, s] + 1),

        sqx[s] += (w[i]*x[i])*q;  sq2[s] += (w[i]*q)*q

    each step in C's float32 order. ls int32[n, lanes] C-contiguous (a row read as one vector), w, x float32[n],
    sqx, sq2 float32[lanes]. The sums stay in registers across the loop (Numba's loop kept the 2 x 32 sums in
    memory, a store and a load per weight and lane)."""
    if not (_lane_arrays_ok(w, x, sqx, sq2) and isinstance(ls, types.Array) and ls.dtype == types.int32
            and ls.ndim == 2 and ls.layout == "C" and isinstance(n, types.Integer)
            and isinstance(lanes, types.IntegerLiteral)):
        return None
    width = lanes.literal_value
    sig = types.void(w, x, n, ls, lanes, sqx, sq2)

    def codegen(context, builder, sig, args):
        v = _Lanes(context, builder, sig, args, width)
        zero = ir.Constant(ir.IntType(64), 0)

        def step(i, state):
            a, c = state
            wi = builder.load(v.a.at(0, i))
            wx = v.a.splat(builder.fmul(wi, builder.load(v.a.at(1, i))), v.vf)
            levels = builder.load(builder.bitcast(v.a.at(3, v.row(3, i)), v.vi.as_pointer()), align=4)
            q = builder.sitofp(builder.add(builder.shl(levels, v.ints(1)), v.ints(1)), v.vf)
            wq = builder.fmul(v.a.splat(wi, v.vf), q)
            return builder.fadd(a, builder.fmul(wx, q)), builder.fadd(c, builder.fmul(wq, q))

        a, c = _vector_scan(builder, v.a.int64(2), (v.load(5, zero), v.load(6, zero)), step)
        v.store(a, 5, zero)
        v.store(c, 6, zero)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def lane_fit_errors(typingctx, xt, wt, lt, n, ts, tm, use_mad, err):
    """The fit error of make_qkx2/qkx3_quants for SUB_WIDTH blocks side by side (as lane_quant_sums): for
    i < n in order, d = ts[b]*lt[i, b] + tm[b] - x, err[b] += w*|d| (use_mad) or w*(d*d), from 0, in C's
    float32 order."""
    if not (_lane_arrays_ok(xt, wt, lt, ts, tm, err) and xt.ndim == 2 and wt.ndim == 2 and lt.ndim == 2
            and isinstance(n, types.Integer) and isinstance(use_mad, types.Boolean)):
        return None
    sig = types.void(xt, wt, lt, n, ts, tm, use_mad, err)

    def codegen(context, builder, sig, args):
        v = _Lanes(context, builder, sig, args)
        zero = ir.Constant(ir.IntType(64), 0)
        t, mm = v.load(4, zero), v.load(5, zero)
        mad = v.a.splat(context.cast(builder, args[6], sig.args[6], types.boolean), ir.VectorType(ir.IntType(1),
                                                                                                     SUB_WIDTH))

        def step(i, state):
            (e,) = state
            x, w, fl = v.load(0, v.row(0, i)), v.load(1, v.row(1, i)), v.load(2, v.row(2, i))
            d = builder.fsub(builder.fadd(builder.fmul(t, fl), mm), x)
            d = builder.select(mad, v.fabs(d), builder.fmul(d, d))
            return (builder.fadd(e, builder.fmul(w, d)),)

        (e,) = _vector_scan(builder, v.a.int64(3), (v.floats(0.0),), step)
        v.store(e, 7, zero)
        return context.get_dummy_value()

    return sig, codegen


#: make_qp_quants' trial steps: (nmax + 0.1*is)/max for is = -4..-1, 1..4
QP_TRIALS = 8


@intrinsic
def lane_qp_steps(typingctx, x, w, n, nmax, iscale, scale, mse):
    """make_qp_quants' eight trial scales side by side, trial t in lane t: for i < n in order,

        l = MIN(nmax, nearest_int(iscale[t]*x[i]));  diff = x[i] - scale[t]*l;  mse[t] += w[i]*diff*diff

    (from 0, C's float32 order, nearest_int in int32). Numba's loop over the trials was unrolled into
    scalar code, eight times the instructions."""
    if not (_lane_arrays_ok(x, w, iscale, scale, mse) and x.ndim == 1 and w.ndim == 1
            and isinstance(n, types.Integer) and isinstance(nmax, types.Integer)):
        return None
    sig = types.void(x, w, n, nmax, iscale, scale, mse)

    def codegen(context, builder, sig, args):
        b = builder
        v = _Lanes(context, builder, sig, args, QP_TRIALS)
        zero = ir.Constant(ir.IntType(64), 0)
        inv, s = v.load(4, zero), v.load(5, zero)
        top = v.a.splat(b.trunc(v.a.int64(3), ir.IntType(32)), v.vi)

        def step(i, state):
            (e,) = state
            xi = v.a.splat(b.load(v.a.at(0, i)), v.vf)
            wi = v.a.splat(b.load(v.a.at(1, i)), v.vf)
            q = v.nearest_int(b.fmul(inv, xi))
            q = b.select(b.icmp_signed("<", top, q), top, q)
            diff = b.fsub(xi, b.fmul(s, b.sitofp(q, v.vf)))
            return (b.fadd(e, b.fmul(b.fmul(wi, diff), diff)),)

        (e,) = _vector_scan(b, v.a.int64(2), (v.floats(0.0),), step)
        v.store(e, 6, zero)
        return context.get_dummy_value()

    return sig, codegen


def _clamped(b, q, lo, hi):
    """MAX(lo, MIN(hi, q)) lane by lane (int32 vectors; lo <= hi)."""
    q = b.select(b.icmp_signed("<", q, lo), lo, q)
    return b.select(b.icmp_signed(">", q, hi), hi, q)


#: make_qx_quants' trials: the first fit at -nmax/max, then -(nmax + 0.1*is)/max for is = -9..-1, 1..9
QX_TRIALS = 19


@intrinsic
def lane_qx_search(typingctx, xt, wt, n, nmax, scales, best_iscale, amax):
    """ggml's make_qx_quants(n, nmax, x, L, 1, w) for SUB_WIDTH blocks side by side, block b in lane b
    (column b of xt, wt: float32[n, SUB_WIDTH]; wt holds the weights, x*x where C passes none): writes each
    block's largest |x| to amax[b] (max is the x of the first largest), its scale to scales[b] and the
    inverse scale of the trial that won to best_iscale[b]. The caller tests amax against GROUP_MAX_EPS (C then
    returns at once, all quants 0) and rounds the quants at best_iscale, which gives what C stored.

    Every trial runs in every lane, in C's order and float32 arithmetic: iscale = -(nmax + 0.1f*is)/max,
    l = clamp(nearest_int(iscale*x), -nmax, nmax-1), sumlx += (w*x)*l, suml2 += (w*l)*l for i < n, from 0;
    the first fit is kept whatever its error (scale = suml2 != 0 ? sumlx/suml2 : 0, best = scale*sumlx),
    a later trial wins where suml2 > 0 and sumlx*sumlx > best*suml2. One LLVM loop over the trials with
    every lane's sums, scale and best in registers: Numba's loops over the lanes kept them in memory and left
    the rounding scalar (~2x slower)."""
    if not (_lane_arrays_ok(xt, wt, scales, best_iscale, amax) and xt.ndim == 2 and wt.ndim == 2
            and isinstance(n, types.Integer) and isinstance(nmax, types.Integer)):
        return None
    sig = types.void(xt, wt, n, nmax, scales, best_iscale, amax)

    def codegen(context, builder, sig, args):
        v = _Lanes(context, builder, sig, args)
        b = builder
        i32, f32 = ir.IntType(32), ir.FloatType()
        zero = ir.Constant(ir.IntType(64), 0)
        count = v.a.int64(2)
        nm = b.trunc(v.a.int64(3), i32)
        lo, hi = v.a.splat(b.neg(nm), v.vi), v.a.splat(b.sub(nm, ir.Constant(i32, 1)), v.vi)
        fnmax = b.sitofp(nm, f32)

        top, vmax = v.first_largest(count, 0)
        v.store(top, 6, zero)

        def trial(t, state):
            scale, best, kept = state
            t = b.trunc(t, i32)
            first = b.icmp_signed("==", t, ir.Constant(i32, 0))
            step = b.select(first, ir.Constant(i32, 0),
                            b.sub(t, b.select(b.icmp_signed("<", t, ir.Constant(i32, 10)), ir.Constant(i32, 10),
                                              ir.Constant(i32, 9))))
            num = b.fneg(b.fadd(fnmax, b.fmul(ir.Constant(f32, 0.1), b.sitofp(step, f32))))
            iscale = b.fdiv(v.a.splat(num, v.vf), vmax)

            def add(i, sums):
                sumlx, suml2 = sums
                x, w = v.load(0, v.row(0, i)), v.load(1, v.row(1, i))
                fl = b.sitofp(_clamped(b, v.nearest_int(b.fmul(iscale, x)), lo, hi), v.vf)
                return b.fadd(sumlx, b.fmul(b.fmul(w, x), fl)), b.fadd(suml2, b.fmul(b.fmul(w, fl), fl))

            sumlx, suml2 = _vector_scan(b, count, (v.floats(0.0),) * 2, add)
            fit = b.fdiv(sumlx, suml2)
            lanes_first = v.a.splat(first, ir.VectorType(ir.IntType(1), SUB_WIDTH))
            first_fit = b.select(b.fcmp_unordered("!=", suml2, v.floats(0.0)), fit, v.floats(0.0))
            better = b.and_(b.fcmp_ordered(">", suml2, v.floats(0.0)),
                            b.fcmp_ordered(">", b.fmul(sumlx, sumlx), b.fmul(best, suml2)))
            win = b.or_(lanes_first, better)
            fit = b.select(lanes_first, first_fit, fit)
            return b.select(win, fit, scale), b.select(win, b.fmul(fit, sumlx), best), b.select(win, iscale, kept)

        scale, _, kept = _vector_scan(b, ir.Constant(ir.IntType(64), QX_TRIALS), (v.floats(0.0),) * 3, trial)
        v.store(scale, 4, zero)
        v.store(kept, 5, zero)
        return context.get_dummy_value()

    return sig, codegen


def _split_scan(builder, n, start, step):
    """``for i1 in range(n + 1): for i2 in range(i1, n + 1): state = step(i1, i2, state)`` (i1, i2 int64 LLVM
    values), the state in registers; returns the final state."""
    i64 = ir.IntType(64)

    def row(i1, state):
        return _vector_scan(builder, builder.sub(builder.add(n, ir.Constant(i64, 1)), i1), state,
                            lambda i, inner: step(i1, builder.add(i1, i), inner))

    return _vector_scan(builder, builder.add(n, ir.Constant(i64, 1)), start, row)


def _wins(b, v, qx, q2, best):
    """ggml's test of the IQ1 split searches, per lane: q2 > 0 and qx*qx > best*q2."""
    return b.and_(b.fcmp_ordered(">", q2, v.floats(0.0)), b.fcmp_ordered(">", b.fmul(qx, qx), b.fmul(best, q2)))


def _take_better(b, v, candidates, state, i1, i2):
    """ggml's updates of the IQ1 split searches at one split, per lane, for each candidate (qx, q2, code) in
    order: where q2 > 0 and qx*qx > best*q2, scale = qx/q2, best = scale*qx and the split (i1, i2) and the
    candidate's code are kept. state: (best, scale, i1, i2, code) as float vectors.

    The updates sit behind one branch, taken only where some candidate beats the best the split started
    from in some lane: where none does, none updates (each is tested against that same best, the ones
    before it having left it alone), and the next split's tests need not wait on this one's (a division
    and a masked multiply on every candidate were the scan's critical path; a branch per candidate
    mispredicted ~4 times as often with IQ1_M's 16 lanes)."""
    best = state[0]
    some = None
    for qx, q2, _ in candidates:
        win = _wins(b, v, qx, q2, best)
        some = win if some is None else b.or_(some, win)
    some = b.icmp_unsigned("!=", b.bitcast(some, ir.IntType(v.width)), ir.Constant(ir.IntType(v.width), 0))
    before = b.block
    with b.if_then(some, likely=False):
        taken = state
        for qx, q2, code in candidates:
            best, scale, k1, k2, kc = taken
            win = _wins(b, v, qx, q2, best)
            fit = b.fdiv(qx, q2)
            taken = (b.select(win, b.fmul(fit, qx), best), b.select(win, fit, scale), b.select(win, i1, k1),
                     b.select(win, i2, k2), b.select(win, v.floats(float(code)), kc))
        updated = b.block
    merged = []
    for old, new in zip(state, taken):
        phi = b.phi(old.type)
        phi.add_incoming(new, updated)
        phi.add_incoming(old, before)
        merged.append(phi)
    return tuple(merged)


def _split_result(b, v, state, out):
    """Rows 0..3 of the float32[4, width] argument number ``out``: scale, i1, i2, variant of each lane's best
    split."""
    _, scale, k1, k2, kc = state
    for row, value in enumerate((scale, k1, k2, kc)):
        v.store(value, out, ir.Constant(ir.IntType(64), row * v.width))


#: IQ1's block levels with the group's delta added (x_p) or taken away (x_m): level - 1 +- 0.125
IQ1_X_P = np.array([-1 + 0.125, 0.125, 1 + 0.125], np.float32)
IQ1_X_M = np.array([-1 - 0.125, -0.125, 1 - 0.125], np.float32)
#: the blocks of a super-block searched side by side: IQ1_S has 8 of 32 weights, IQ1_M 16 of 16
IQ1_S_LANES, IQ1_M_LANES = 8, 16


@intrinsic
def lane_iq1s_splits(typingctx, sx, sw, n, out):
    """The split search of ggml's quantize_row_iq1_s_impl for IQ1_S_LANES blocks side by side, block b in
    lane b: sx, sw float32[n + 1, lanes] C-contiguous hold each block's prefix sums of w*x and w over its
    weights in sorted order (row 0 zero). For every split i1 <= i2 in C's order, x_p then x_m,

        sumqx = (sx[i1] - sx[0])*xx[0] + (sx[i2] - sx[i1])*xx[1] + (sx[n] - sx[i2])*xx[2]
        sumq2 = (sw[i1] - sw[0])*xx[0]*xx[0] + (sw[i2] - sw[i1])*xx[1]*xx[1] + (sw[n] - sw[i2])*xx[2]*xx[2]

    (float32, from the left) replaces the best (from -FLT_MAX) where sumq2 > 0 and sumqx*sumqx > best*sumq2.
    out float32[4, lanes] gets each lane's scale, i1, i2 and shift (1 for x_p, -1 for x_m; i1 = i2 = -1 and
    shift 0 where no split won). Every lane runs every split, each update a select: ggml's in-order scan
    mispredicts on most of the updates that win (~29 of 561 splits a block)."""
    if not (_lane_arrays_ok(sx, sw, out) and sx.ndim == 2 and sw.ndim == 2 and out.ndim == 2
            and isinstance(n, types.Integer)):
        return None
    sig = types.void(sx, sw, n, out)

    def codegen(context, builder, sig, args):
        b = builder
        v = _Lanes(context, builder, sig, args, IQ1_S_LANES)
        n_ = v.a.int64(2)
        width = ir.Constant(ir.IntType(64), IQ1_S_LANES)

        def at(k, i):
            return v.load(k, b.mul(i, width))

        sx0, sw0, sxn, swn = at(0, ir.Constant(n_.type, 0)), at(1, ir.Constant(n_.type, 0)), at(0, n_), at(1, n_)
        levels = [[v.floats(float(c)) for c in xx] for xx in (IQ1_X_P, IQ1_X_M)]

        def step(i1, i2, state):
            s1, w1_, s2, w2_ = at(0, i1), at(1, i1), at(0, i2), at(1, i2)
            a = (b.fsub(s1, sx0), b.fsub(s2, s1), b.fsub(sxn, s2))
            w = (b.fsub(w1_, sw0), b.fsub(w2_, w1_), b.fsub(swn, w2_))
            f1 = v.a.splat(b.sitofp(i1, ir.FloatType()), v.vf)
            f2 = v.a.splat(b.sitofp(i2, ir.FloatType()), v.vf)
            candidates = []
            for xx, code in zip(levels, (1, -1)):
                qx = b.fadd(b.fadd(b.fmul(a[0], xx[0]), b.fmul(a[1], xx[1])), b.fmul(a[2], xx[2]))
                q2 = b.fadd(b.fadd(b.fmul(b.fmul(w[0], xx[0]), xx[0]), b.fmul(b.fmul(w[1], xx[1]), xx[1])),
                            b.fmul(b.fmul(w[2], xx[2]), xx[2]))
                candidates.append((qx, q2, code))
            return _take_better(b, v, candidates, state, f1, f2)

        start = (v.floats(-_FLT_MAX), v.floats(0.0), v.floats(-1.0), v.floats(-1.0), v.floats(0.0))
        _split_result(b, v, _split_scan(b, n_, start, step), 3)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def lane_iq1m_splits(typingctx, pre, n, out):
    """The split search of ggml's quantize_row_iq1_m_impl for IQ1_M_LANES blocks side by side, block b in
    lane b: pre float32[4*(n + 1), lanes] C-contiguous holds each block's prefix sums over its weights in
    sorted order, per half of the block (px[h][j]: rows h*(n + 1) + j; pw[h][j]: rows (2 + h)*(n + 1) + j).
    For every split i1 <= i2 in C's order, with p2 = x_p[2], m2 = x_m[2], cp1 = x_p[0]^2 - x_p[1]^2, ...:

        qx_p[h] = px[h][n]*p2 - (px[h][i1] + px[h][i2])
        q2_p[h] = pw[h][n]*p2*p2 + pw[h][i1]*cp1 + pw[h][i2]*cp2

    (x_m alike), the four sign variants k = (+,+), (+,-), (-,+), (-,-) of the two halves' sums in that order
    each replace the best (from -FLT_MAX) where sumq2 > 0 and sumqx*sumqx > best*sumq2. out float32[4, lanes]
    gets each lane's scale, i1, i2 and k (-1, -1, -1 where none won)."""
    if not (_lane_arrays_ok(pre, out) and pre.ndim == 2 and out.ndim == 2 and isinstance(n, types.Integer)):
        return None
    sig = types.void(pre, n, out)

    def codegen(context, builder, sig, args):
        b = builder
        v = _Lanes(context, builder, sig, args, IQ1_M_LANES)
        n_ = v.a.int64(1)
        i64 = ir.IntType(64)
        width = ir.Constant(i64, IQ1_M_LANES)
        rows = b.add(n_, ir.Constant(i64, 1))

        def at(table, i):  # table 0, 1: px[0], px[1]; 2, 3: pw[0], pw[1]
            return v.load(0, b.mul(b.add(b.mul(ir.Constant(i64, table), rows), i), width))

        p2, m2 = IQ1_X_P[2], IQ1_X_M[2]
        cp1, cp2 = IQ1_X_P[0] * IQ1_X_P[0] - IQ1_X_P[1] * IQ1_X_P[1], IQ1_X_P[1] * IQ1_X_P[1] - IQ1_X_P[2] * IQ1_X_P[2]
        cm1, cm2 = IQ1_X_M[0] * IQ1_X_M[0] - IQ1_X_M[1] * IQ1_X_M[1], IQ1_X_M[1] * IQ1_X_M[1] - IQ1_X_M[2] * IQ1_X_M[2]
        vp2, vm2, vcp1, vcp2, vcm1, vcm2 = (v.floats(float(c)) for c in (p2, m2, cp1, cp2, cm1, cm2))
        tx = [at(h, n_) for h in (0, 1)]
        tw = [at(2 + h, n_) for h in (0, 1)]
        tp = [b.fmul(b.fmul(t, vp2), vp2) for t in tw]
        tm = [b.fmul(b.fmul(t, vm2), vm2) for t in tw]

        def step(i1, i2, state):
            qxp, qxm, q2p, q2m = [], [], [], []
            for h in (0, 1):
                sx = b.fadd(at(h, i1), at(h, i2))
                qxp.append(b.fsub(b.fmul(tx[h], vp2), sx))
                qxm.append(b.fsub(b.fmul(tx[h], vm2), sx))
                w1, w2 = at(2 + h, i1), at(2 + h, i2)
                q2p.append(b.fadd(b.fadd(tp[h], b.fmul(w1, vcp1)), b.fmul(w2, vcp2)))
                q2m.append(b.fadd(b.fadd(tm[h], b.fmul(w1, vcm1)), b.fmul(w2, vcm2)))
            f1 = v.a.splat(b.sitofp(i1, ir.FloatType()), v.vf)
            f2 = v.a.splat(b.sitofp(i2, ir.FloatType()), v.vf)
            variants = ((qxp[0], qxp[1], q2p[0], q2p[1]), (qxp[0], qxm[1], q2p[0], q2m[1]),
                        (qxm[0], qxp[1], q2m[0], q2p[1]), (qxm[0], qxm[1], q2m[0], q2m[1]))
            candidates = [(b.fadd(x0, x1), b.fadd(q0, q1), k) for k, (x0, x1, q0, q1) in enumerate(variants)]
            return _take_better(b, v, candidates, state, f1, f2)

        start = (v.floats(-_FLT_MAX), v.floats(0.0), v.floats(-1.0), v.floats(-1.0), v.floats(-1.0))
        _split_result(b, v, _split_scan(b, n_, start, step), 2)
        return context.get_dummy_value()

    return sig, codegen


#: make_q3_quants' refinement passes at most
Q3_PASSES = 5


@intrinsic
def lane_q3_search(typingctx, xt, lt, n, nmax, amax, scales):
    """ggml's make_q3_quants(n, nmax, x, L, true) for SUB_WIDTH blocks side by side, block b in lane b
    (column b of xt: float32[n, SUB_WIDTH]): writes each block's largest |x| to amax[b], its quants to
    lt[:, b] (int32, -nmax..nmax-1, not offset) and its scale (suml2 > 0 ? sumlx/suml2 : 0) to scales[b].
    The caller tests amax against GROUP_MAX_EPS (C then returns at once, all quants 0, scale 0).

    In C's order and float32 arithmetic: the first fit at iscale = -nmax/max (max the x of the first
    largest |x|) gives l = clamp(nearest_int(iscale*x), -nmax, nmax-1) and the sums with w = x*x,
    sumlx += (w*x)*l, suml2 += (w*l)*l; then passes over i in order try new_l = clamp(nearest_int(x*sl2/slx))
    against the sums without weight i (slx = sumlx - (w*x)*l, sl2 = suml2 - (w*l)*l, where slx > 0) and
    take it where it differs, sl2' > 0 and slx'*slx'*suml2 > sumlx*sumlx*sl2' (each product from the
    left). C stops a block after a pass that takes nothing, at most Q3_PASSES passes; a pass over a block
    that took nothing takes nothing again (it is a function of the unchanged state), so all lanes run
    until a pass takes nothing in any lane. One LLVM loop with the lanes' sums in registers."""
    if not (_lane_arrays_ok(xt, amax, scales) and xt.ndim == 2 and isinstance(lt, types.Array)
            and lt.dtype == types.int32 and lt.ndim == 2 and lt.layout == "C"
            and isinstance(n, types.Integer) and isinstance(nmax, types.Integer)):
        return None
    sig = types.void(xt, lt, n, nmax, amax, scales)

    def codegen(context, builder, sig, args):
        v = _Lanes(context, builder, sig, args)
        b = builder
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        zero = ir.Constant(i64, 0)
        count = v.a.int64(2)
        nm = b.trunc(v.a.int64(3), i32)
        lo, hi = v.a.splat(b.neg(nm), v.vi), v.a.splat(b.sub(nm, ir.Constant(i32, 1)), v.vi)

        def q_at(i):
            return b.bitcast(v.a.at(1, v.row(1, i)), v.vi.as_pointer())

        def rounded(value):  # clamp(nearest_int(value), -nmax, nmax-1)
            return _clamped(b, v.nearest_int(value), lo, hi)

        top, vmax = v.first_largest(count, 0)
        v.store(top, 4, zero)
        iscale = b.fdiv(v.a.splat(b.sitofp(b.neg(nm), f32), v.vf), vmax)

        def first_fit(i, sums):
            sumlx, suml2 = sums
            x = v.load(0, v.row(0, i))
            q = rounded(b.fmul(iscale, x))
            b.store(q, q_at(i), align=4)
            w, fl = b.fmul(x, x), b.sitofp(q, v.vf)
            return b.fadd(sumlx, b.fmul(b.fmul(w, x), fl)), b.fadd(suml2, b.fmul(b.fmul(w, fl), fl))

        sums = _vector_scan(b, count, (v.floats(0.0),) * 2, first_fit)

        def refine(i, state):
            sumlx, suml2, took = state
            x = v.load(0, v.row(0, i))
            q = b.load(q_at(i), align=4)
            w = b.fmul(x, x)
            wx, fl = b.fmul(w, x), b.sitofp(q, v.vf)
            slx = b.fsub(sumlx, b.fmul(wx, fl))
            sl2 = b.fsub(suml2, b.fmul(b.fmul(w, fl), fl))
            new = rounded(b.fdiv(b.fmul(x, sl2), slx))  # garbage where slx <= 0: then never taken
            fnew = b.sitofp(new, v.vf)
            slx_new = b.fadd(slx, b.fmul(wx, fnew))
            sl2_new = b.fadd(sl2, b.fmul(b.fmul(w, fnew), fnew))
            take = b.and_(b.and_(b.fcmp_ordered(">", slx, v.floats(0.0)), b.icmp_signed("!=", new, q)),
                          b.and_(b.fcmp_ordered(">", sl2_new, v.floats(0.0)),
                                 b.fcmp_ordered(">", b.fmul(b.fmul(slx_new, slx_new), suml2),
                                                b.fmul(b.fmul(sumlx, sumlx), sl2_new))))
            b.store(b.select(take, new, q), q_at(i), align=4)
            return b.select(take, slx_new, sumlx), b.select(take, sl2_new, suml2), b.or_(took, take)

        # the passes: while pass < Q3_PASSES and the previous pass took something in some lane
        entry = b.block
        head, body, done = (b.append_basic_block(name) for name in ("q3.head", "q3.body", "q3.done"))
        b.branch(head)
        b.position_at_end(head)
        npass = b.phi(i64)
        npass.add_incoming(zero, entry)
        go = b.phi(ir.IntType(1))
        go.add_incoming(ir.Constant(ir.IntType(1), 1), entry)
        state = [b.phi(v.vf) for _ in sums]
        for phi, value in zip(state, sums):
            phi.add_incoming(value, entry)
        b.cbranch(b.and_(go, b.icmp_signed("<", npass, ir.Constant(i64, Q3_PASSES))), body, done)
        b.position_at_end(body)
        none = ir.Constant(ir.VectorType(ir.IntType(1), SUB_WIDTH), [0] * SUB_WIDTH)
        sumlx, suml2, took = _vector_scan(b, count, (*state, none), refine)
        anywhere = b.icmp_unsigned("!=", b.bitcast(took, ir.IntType(SUB_WIDTH)), ir.Constant(ir.IntType(SUB_WIDTH), 0))
        npass.add_incoming(b.add(npass, ir.Constant(i64, 1)), b.block)
        go.add_incoming(anywhere, b.block)
        for phi, value in zip(state, (sumlx, suml2)):
            phi.add_incoming(value, b.block)
        b.branch(head)
        b.position_at_end(done)
        sumlx, suml2 = state
        fit = b.fdiv(sumlx, suml2)
        v.store(b.select(b.fcmp_ordered(">", suml2, v.floats(0.0)), fit, v.floats(0.0)), 5, zero)
        return context.get_dummy_value()

    return sig, codegen


@jit
def nearest_int(v):
    """ggml's nearest_int: round half to even through the 1.5*2^23 magic-number trick.

    Reproduced bit for bit (not with rint) so that out-of-range inputs give the same garbage
    the C code gives; ggml only calls it for |v| <= 4194303.
    """
    t = v + F32(12582912.0)
    i = np.int32(f32_bits(t) & np.uint32(0x007FFFFF))
    return i - np.int32(0x00400000)


@jit_inline
def fp32_to_fp16_bits_flat(f):
    """fp32_to_fp16_bits(f) for every float32 (compared over all 2^32 patterns), without a branch, so that a loop
    over elements vectorizes: the float32 arithmetic of ggml's software GGML_FP32_TO_FP16. |f| is scaled by 2^112
    and then 2^-110 (overflowing to inf where the half does), and a power of two placed by f's exponent (at least
    2^-14's bias) is added, so that float32's own round-to-nearest-even leaves the half's exponent and mantissa
    in the sum's bits 13-27; a NaN gives the quiet half NaN 0x7E00, with f's sign."""
    w = f32_bits(f)
    shl1 = np.uint32(w << np.uint32(1))  # (Numba widens uint32 arithmetic to 64 bits: each step cast back)
    sign = np.uint32((w >> np.uint32(16)) & np.uint32(0x8000))
    bias = np.uint32(shl1 & np.uint32(0xFF000000))
    bias = pick(bias < np.uint32(0x71000000), np.uint32(0x71000000), bias)
    base = (bits_f32(w & np.uint32(0x7FFFFFFF)) * bits_f32(np.uint32(0x77800000))) * bits_f32(np.uint32(0x08800000))
    base = bits_f32(np.uint32((bias >> np.uint32(1)) + np.uint32(0x07800000))) + base
    b = f32_bits(base)
    nonsign = np.uint32(((b >> np.uint32(13)) & np.uint32(0x7C00)) + (b & np.uint32(0x0FFF)))
    return np.uint16(sign | pick(shl1 > np.uint32(0xFF000000), np.uint32(0x7E00), nonsign))


@jit_inline
def fp32_to_fp16_bits(f):
    """float32 -> IEEE half bits, round to nearest even (as ggml's GGML_FP32_TO_FP16 and F16C)."""
    w = f32_bits(f)
    sign = np.uint16((w >> np.uint32(16)) & np.uint32(0x8000))
    exp = np.int32((w >> np.uint32(23)) & np.uint32(0xFF))
    mant = w & np.uint32(0x7FFFFF)
    if exp == 0xFF:
        if mant != 0:
            return np.uint16(sign | np.uint16(0x7E00))
        return np.uint16(sign | np.uint16(0x7C00))
    e = exp - 127 + 15
    if e >= 31:
        return np.uint16(sign | np.uint16(0x7C00))
    if e <= 0:
        # Result is subnormal (or zero): shift the full 24-bit significand into place.
        if e < -10:
            return sign
        m = mant | np.uint32(0x800000)
        shift = np.uint32(14 - e)
        half = m >> shift
        rem = m & ((np.uint32(1) << shift) - np.uint32(1))
        halfway = np.uint32(1) << (shift - np.uint32(1))
        if rem > halfway or (rem == halfway and (half & np.uint32(1)) != 0):
            half += np.uint32(1)
        return np.uint16(sign | np.uint16(half))
    half = (np.uint32(e) << np.uint32(10)) | (mant >> np.uint32(13))
    rem = mant & np.uint32(0x1FFF)
    if rem > np.uint32(0x1000) or (rem == np.uint32(0x1000) and (half & np.uint32(1)) != 0):
        half += np.uint32(1)  # a carry into the exponent is the correct rounding, up to infinity
    return np.uint16(sign | np.uint16(half))


@jit
def fp16_bits_to_fp32(h):
    """IEEE half bits -> float32 (exact; NaNs come out quiet, as from ggml's GGML_FP16_TO_FP32)."""
    h32 = np.uint32(h)
    sign = (h32 & np.uint32(0x8000)) << np.uint32(16)
    exp = (h32 >> np.uint32(10)) & np.uint32(0x1F)
    mant = h32 & np.uint32(0x3FF)
    if exp == 0:
        if mant == 0:
            return bits_f32(sign)
        # subnormal: mant * 2^-24, exact in float32
        v = F32(mant) * F32(5.960464477539063e-08)
        return -v if sign != 0 else v
    if exp == 31:
        if mant != 0:  # NaN: ggml converts through float arithmetic, which quiets a signalling NaN
            mant |= np.uint32(0x200)
        return bits_f32(sign | np.uint32(0x7F800000) | (mant << np.uint32(13)))
    return bits_f32(sign | ((exp + np.uint32(112)) << np.uint32(23)) | (mant << np.uint32(13)))


@jit
def round_fp16(f):
    """The float32 value a float32 takes after a round trip through half precision."""
    return fp16_bits_to_fp32(fp32_to_fp16_bits(f))


@jit_inline
def store_u16(out, pos, v):
    """Write a uint16 little-endian into a uint8 buffer."""
    out[pos] = np.uint8(v & np.uint16(0xFF))
    out[pos + 1] = np.uint8(v >> np.uint16(8))


@jit
def load_u16(buf, pos):
    """Read a little-endian uint16 from a uint8 buffer."""
    return np.uint16(buf[pos]) | (np.uint16(buf[pos + 1]) << np.uint16(8))


@jit_inline
def store_fp16(out, pos, f):
    """Round a float32 to half and write it little-endian at out[pos:pos+2]; return the rounded value."""
    h = fp32_to_fp16_bits(f)
    store_u16(out, pos, h)
    return fp16_bits_to_fp32(h)


@jit
def load_fp16(buf, pos):
    """Read a little-endian half at buf[pos:pos+2] as float32."""
    return fp16_bits_to_fp32(load_u16(buf, pos))


@jit
def requantize(x, d, m, L, lo, hi, off):
    """The k-quants' closing pass: L[k] = clamp(nearest_int((x[k] + m[k]) / d[k]), lo, hi) + off, kept
    as it is where d[k] == 0 (ggml skips such a sub-block). x, d, m float32[n]: the weights and their
    sub-block's scale and min, spread per weight (m = 0 where ggml adds none: x + 0 is x, -0 aside,
    which rounds alike). One flat loop, which vectorizes; per sub-block loops of 16 or 32 compile to
    scalar divisions (~6x slower)."""
    lo = np.int32(lo)
    hi = np.int32(hi)
    off = np.int32(off)
    for k in range(x.shape[0]):
        dk = d[k]
        l = nearest_int((x[k] + m[k]) / dk)
        l = l if l > lo else lo
        l = l if l < hi else hi
        L[k] = l + off if dk != F32(0.0) else L[k]


@jit
def holds_nonfinite(x):
    """Whether the row x (contiguous float32[n]) holds NaN or Inf: its 32-value blocks' largest magnitude bits
    (abs_max_bits) reach the exponent's all-ones pattern, then any values after the last whole block."""
    n = x.shape[0]
    bad = False
    for b in range(n // 32):
        bad |= abs_max_bits(x, b * 32, 32) >= np.uint32(0x7F800000)
    for j in range(n // 32 * 32, n):
        bad |= (f32_bits(x[j]) & np.uint32(0x7FFFFFFF)) >= np.uint32(0x7F800000)
    return bad


@jit
def first_true(flags):
    """The index of the first True in the bool array ``flags``, or -1."""
    for r in range(flags.shape[0]):
        if flags[r]:
            return r
    return -1


@jit_inline
def largest_abs_of(m, x, first, n):
    """What C's ``amax = MAX(amax, fabsf(x[j]))`` from amax = 0 gives over x[first:first + n], given
    m = abs_max_bits(x, first, n) (n a compile-time constant; m also tells the caller whether the block holds
    NaN or Inf: m >= 0x7F800000): the largest |x| from that one vector reduction. A NaN, which the serial MAX
    keeps only where it comes last, sends the block through the serial loop."""
    if m <= np.uint32(0x7F800000):
        return bits_f32(m)
    amax = F32(0.0)
    for j in range(first, first + n):
        av = abs(float_at(x, j))
        amax = amax if amax > av else av
    return amax


def _first_nonfinite_row(rows):
    """Index of the first row of a 2-D float32 array holding NaN or Inf, or -1. Shape [nrows, n].

    Branch-free (the largest exponent field per row), so it vectorizes: ~3x a test-and-break loop.
    """
    nrows, n = rows.shape
    bad = np.zeros(nrows, dtype=np.bool_)
    for r in numba.prange(nrows):
        m = np.uint32(0)
        for j in range(n):
            m = max(m, f32_bits(rows[r, j]) & np.uint32(0x7F800000))
        bad[r] = m == np.uint32(0x7F800000)
    return first_true(bad)


# -- row drivers ----------------------------------------------------------------------------------
# Every type's parallel driver is the same loop over rows and blocks around a different block
# function. The loop is written once below, as a template, and each type gets its own jitted copy
# from ``row_driver``: the template's code with the block function and the block sizes bound as
# globals (Numba freezes globals as compile-time constants, so a copy compiles to exactly what a
# hand-written driver does, the block function inlined).
#
# Why copies and not one driver taking the block function: Numba cannot cache either of the usual
# ways. A closure over a jitted function hashes the pickled dispatcher, which holds a random
# per-process uuid, and a dispatcher passed as an argument puts the process's function object in
# the signature; both miss the cache in every new process and compile again (checked with numba
# 0.68). A copy is a plain function: it caches under its own name, in the __pycache__ of the module
# that asks for it, stamped with that module's source (so editing the block functions there
# recompiles it; an edited template changes the bytecode hash, which recompiles every copy).

def specialize(template, module: str, name: str, doc: str, decorator, **bind):
    """``decorator`` applied to a copy ``module.name`` of ``template``'s code, with the globals ``bind``
    adds (Numba reads them as compile-time constants: an ``if`` on a bound flag costs nothing)."""
    code = template.__code__.replace(co_filename=sys.modules[module].__file__, co_name=name, co_qualname=name)
    fn = pytypes.FunctionType(code, {**template.__globals__, **bind}, name)
    fn.__module__, fn.__qualname__, fn.__doc__ = module, name, doc
    return decorator(fn)


first_nonfinite_row = specialize(_first_nonfinite_row, __name__, "first_nonfinite_row",
                                 _first_nonfinite_row.__doc__, jit_rows)
#: the same on one thread: for a small tensor, waking the other threads costs more than the test (1-4 ms a
#: call on a 2-vCPU VM, whose idle vCPU the host must schedule again, against ~60 us for 432 KB on one thread)
first_nonfinite_row_1 = specialize(_first_nonfinite_row, __name__, "first_nonfinite_row_1",
                                   _first_nonfinite_row.__doc__, jit)


def row_driver(template, module: str, name: str, doc: str, tables: tuple = (), **bind):
    """A jitted driver ``module.name``: ``template``'s code with the globals ``bind`` adds. With
    ``tables`` (lookup arrays the block function takes last), a Python function that passes them."""
    driver = specialize(template, module, name, doc, jit_rows, **bind)
    if not tables:
        return driver

    def with_tables(*args):
        return driver(*args, *tables)

    with_tables.__module__, with_tables.__name__, with_tables.__qualname__, with_tables.__doc__ = module, name, name, doc
    return with_tables


def block_drivers(module: str, name: str, qk: int, nbytes: int, quantize_block, dequantize_block, *, scratch=None,
                  tables: tuple = (), dequantize_tables: tuple | None = None, template=None, **bind):
    """``(quantize_<name>, dequantize_<name>)`` of ``module`` over all rows: each_block_tested of
    ``quantize_block`` (rows, out), or each_block_weighted with ``scratch`` (rows, weights, out), or a
    ``template`` of the module's own with ``bind``; each_block of ``dequantize_block`` (data, out). ``tables`` go
    to both block functions unless ``dequantize_tables`` is given."""
    if template is None:
        template = each_block_weighted if scratch is not None else each_block_tested
    quantize = row_driver(template, module, f"quantize_{name}", f"ggml's quantize_{name} over all rows.", tables,
                          BLOCK=quantize_block, SCRATCH=scratch, IN=qk, OUT=nbytes, **bind)
    dequantize = row_driver(each_block, module, f"dequantize_{name}", f"ggml's dequantize_row_{name} over all rows.",
                            tables if dequantize_tables is None else dequantize_tables, BLOCK=dequantize_block,
                            IN=nbytes, OUT=qk)
    return quantize, dequantize


def checked_driver(module: str, name: str, qk: int, nbytes: int, quantize_block, scratch, **bind):
    """``quantize_<name>`` of ``module`` over all rows through each_block_checked: ``quantize_block`` returns
    a status code (non-zero where ggml aborts), ``scratch`` its per-row scratch; ``bind`` adds TAIL."""
    return row_driver(each_block_checked, module, f"quantize_{name}", f"ggml's quantize_{name} over all rows.",
                      BLOCK=quantize_block, SCRATCH=scratch, IN=qk, OUT=nbytes, **bind)


# Template globals, bound per driver: BLOCK (the block function), IN and OUT (the widths of one block
# in the source and destination rows: weights and bytes, or bytes and weights), SCRATCH (a jitted
# function returning the block function's per-row scratch), ELEMENT (an element-wise conversion),
# TAIL (each_block_checked: hand the block function the rest of the row), REF and IMPL (each_block_paths),
# ROW (each_row: a function over one whole row).
BLOCK = IN = OUT = SCRATCH = ELEMENT = REF = IMPL = ROW = None
TAIL = False


def each_block(src, dst, *tables):
    """For every row r and block b: BLOCK(src[r, b*IN:(b+1)*IN], dst[r, b*OUT:(b+1)*OUT], *tables)."""
    nrows, n = src.shape
    src, dst, tables = borrowed(src), borrowed(dst), borrowed(tables)
    for r in numba.prange(nrows):
        s = src[r]
        d = dst[r]
        for b in range(n // IN):
            BLOCK(s[b * IN:(b + 1) * IN], d[b * OUT:(b + 1) * OUT], *tables)


def each_block_tested(src, dst, *tables):
    """each_block for a quantizer: a row holding NaN or Inf is found first and left unwritten (holds_nonfinite:
    the scan brings the row into the cache its blocks are read from); returns the first such row, or -1."""
    nrows, n = src.shape
    nonfinite = np.zeros(nrows, dtype=np.bool_)
    src, dst, tables = borrowed(src), borrowed(dst), borrowed(tables)
    for r in numba.prange(nrows):
        nonfinite[r] = holds_nonfinite(src[r])
        if not nonfinite[r]:
            s = src[r]
            d = dst[r]
            for b in range(n // IN):
                BLOCK(s[b * IN:(b + 1) * IN], d[b * OUT:(b + 1) * OUT], *tables)
    return first_true(nonfinite)


def each_block_weighted(rows, weights, out, *tables):
    """For every row r and block b: BLOCK(x, qw, y, scratch, *tables), x and y the block's weights and
    bytes, qw its slice of the importance vector (or the zero-length ``weights`` itself: C's NULL,
    the ``_ref`` path), scratch = SCRATCH() once per row. A row holding NaN or Inf is found first and left
    unwritten (holds_nonfinite: the scan brings the row into the cache its blocks are read from); returns the
    first such row, or -1."""
    nrows, n = rows.shape
    use_w = weights.shape[0] > 0
    nonfinite = np.zeros(nrows, dtype=np.bool_)
    rows, weights, out, tables = borrowed(rows), borrowed(weights), borrowed(out), borrowed(tables)
    for r in numba.prange(nrows):
        nonfinite[r] = holds_nonfinite(rows[r])
        if not nonfinite[r]:
            owned = SCRATCH()
            scratch = borrowed(owned)
            for b in range(n // IN):
                qw = weights[b * IN:(b + 1) * IN] if use_w else weights
                BLOCK(rows[r, b * IN:(b + 1) * IN], qw, out[r, b * OUT:(b + 1) * OUT], scratch, *tables)
            keep_alive(owned)
    return first_true(nonfinite)


def each_block_checked(rows, weights, out, *args):
    """each_block_weighted for block functions that report where ggml aborts the process: per block
    code = BLOCK(x, qw, y, scratch, *tables), tables = args[:-1], x the block's weights (with TAIL the
    row from the block on, the block its first IN). A non-zero code ends the row: status = args[-1]
    (int32[nrows, 2], zero on entry) gets (code, block)."""
    status = args[-1]
    tables = borrowed(args[:-1])
    rows, weights, out = borrowed(rows), borrowed(weights), borrowed(out)
    nrows, n = rows.shape
    use_w = weights.shape[0] > 0
    for r in numba.prange(nrows):
        owned = SCRATCH()
        scratch = borrowed(owned)
        for b in range(n // IN):
            x = rows[r, b * IN:] if TAIL else rows[r, b * IN:(b + 1) * IN]
            qw = weights[b * IN:(b + 1) * IN] if use_w else weights
            code = BLOCK(x, qw, out[r, b * OUT:(b + 1) * OUT], scratch, *tables)
            if code != 0:
                status[r, 0] = code
                status[r, 1] = b
                break
        keep_alive(owned)


def each_block_paths(rows, weights, out):
    """ggml's two quantize paths: per block REF(x, y, *scratch) without an importance vector (zero-length
    ``weights``: the _ref path), IMPL(x, qw, y, *scratch) with one; scratch = SCRATCH() once per row, a tuple
    of arrays handed over one by one (unpacked here, not per block in the block function: that measured
    2-10% slower on the k-quants' fast blocks). Rows holding NaN or Inf as each_block_weighted: returns the
    first, or -1."""
    nrows, n = rows.shape
    use_w = weights.shape[0] > 0
    nonfinite = np.zeros(nrows, dtype=np.bool_)
    rows, weights, out = borrowed(rows), borrowed(weights), borrowed(out)
    for r in numba.prange(nrows):
        nonfinite[r] = holds_nonfinite(rows[r])
        if not nonfinite[r]:
            owned = SCRATCH()
            scratch = borrowed(owned)
            for b in range(n // IN):
                x = rows[r, b * IN:(b + 1) * IN]
                y = out[r, b * OUT:(b + 1) * OUT]
                if use_w:
                    IMPL(x, weights[b * IN:(b + 1) * IN], y, *scratch)
                else:
                    REF(x, y, *scratch)
            keep_alive(owned)
    return first_true(nonfinite)


def each_block_pair_paths(rows, weights, out):
    """each_block_paths two blocks at a time: REF(x, y, *scratch) or IMPL(x, qw, y, *scratch) with x, qw, y
    spanning blocks b and b+1 (the last block alone where a row has an odd count), for block functions
    that search both blocks side by side. Rows holding NaN or Inf as each_block_weighted: returns the first,
    or -1."""
    nrows, n = rows.shape
    use_w = weights.shape[0] > 0
    nb = n // IN
    nonfinite = np.zeros(nrows, dtype=np.bool_)
    rows, weights, out = borrowed(rows), borrowed(weights), borrowed(out)
    for r in numba.prange(nrows):
        nonfinite[r] = holds_nonfinite(rows[r])
        if not nonfinite[r]:
            owned = SCRATCH()
            scratch = borrowed(owned)
            for b in range(0, nb, 2):
                e = min(b + 2, nb)
                x = rows[r, b * IN:e * IN]
                y = out[r, b * OUT:e * OUT]
                if use_w:
                    IMPL(x, weights[b * IN:e * IN], y, *scratch)
                else:
                    REF(x, y, *scratch)
            keep_alive(owned)
    return first_true(nonfinite)


def each_row(src, dst, *tables):
    """ROW(src[r], dst[r], *tables) for every row r: for block functions too fast for a call per block (the
    IQ dequantizers: 5-9% slower through each_block, whose call LLVM does not inline), ROW loops over the
    row's blocks itself."""
    src, dst, tables = borrowed(src), borrowed(dst), borrowed(tables)
    for r in numba.prange(src.shape[0]):
        ROW(src[r], dst[r], *tables)


def each_row_tested(src, dst, *tables):
    """each_row for a quantizer, rows holding NaN or Inf found first as each_block_tested; returns the first
    such row, or -1."""
    nonfinite = np.zeros(src.shape[0], dtype=np.bool_)
    src, dst, tables = borrowed(src), borrowed(dst), borrowed(tables)
    for r in numba.prange(src.shape[0]):
        nonfinite[r] = holds_nonfinite(src[r])
        if not nonfinite[r]:
            ROW(src[r], dst[r], *tables)
    return first_true(nonfinite)


def each_row_finite(src, dst):
    """ROW(src[r], dst[r]) for every row r, ROW returning whether its row holds NaN or Inf (which the block
    scans see at no extra cost); returns the first such row, or -1. Its callers need no check of their own: a
    second pass over the floats."""
    nonfinite = np.zeros(src.shape[0], dtype=np.bool_)
    src, dst = borrowed(src), borrowed(dst)
    for r in numba.prange(src.shape[0]):
        nonfinite[r] = ROW(src[r], dst[r])
    return first_true(nonfinite)


def each_element(src, dst):
    """dst[r, j] = ELEMENT(src[r, j]) over 2-D arrays of one shape."""
    nrows, n = src.shape
    for r in numba.prange(nrows):
        for j in range(n):
            dst[r, j] = ELEMENT(src[r, j])
