"""kernels.common.borrowed/keep_alive/local_f32: views that own no reference, used by the row drivers so that block
functions called per block raise no reference counts (atomic adds) on their arrays."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from qtool.kernels.common import borrowed, keep_alive, local_f32


@intrinsic
def _owner(typingctx, a):
    """The address of an array's memory owner (NRT meminfo), 0 for none."""
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, value=args[0])
        return builder.ptrtoint(ary.meminfo, ir.IntType(64))

    return types.int64(a), codegen


@numba.njit
def _owners(a):
    b = borrowed(a)
    return _owner(a), _owner(b), _owner(b[1:3]), _owner(borrowed((a, 3))[0])


def test_borrowed_views_have_no_owner_and_slices_of_them_neither():
    owners = _owners(np.arange(6, dtype=np.float32))
    assert owners[0] != 0  # an array from Python gets an owner on the way in
    assert owners[1:] == (0, 0, 0)


@numba.njit
def _write_through(a):
    b, k = borrowed((a, 2))
    for i in range(b.shape[0]):
        b[i, 1:] = b[i, 0] * k
    return b.shape, b.strides


def test_borrowed_views_see_and_change_the_same_memory_with_any_layout():
    base = np.zeros((4, 6), np.float32)
    base[:, 0] = np.arange(4)
    a = base[::2, ::2]  # non-contiguous: strides (48, 8)
    shape, strides = _write_through(a)
    assert shape == a.shape and strides == a.strides
    assert base[2, 2] == 4.0 and base[2, 4] == 4.0 and base[2, 1] == 0.0 and base[1, 2] == 0.0


@numba.njit(parallel=True)
def _scratch_rows(x):
    """The drivers' pattern: per row an owned scratch, used through borrowed views, kept alive after."""
    out = np.empty(x.shape[0], np.float32)
    xs = borrowed(x)
    for r in numba.prange(x.shape[0]):
        owned = (np.empty(x.shape[1], np.float32), np.zeros(1, np.float32))
        work, total = borrowed(owned)
        for j in range(xs.shape[1]):
            work[j] = xs[r, j] * np.float32(2.0)
        for j in range(xs.shape[1]):
            total[0] += work[j]
        out[r] = total[0]
        keep_alive(owned)
    return out


def test_scratch_through_borrowed_views_gives_the_sums():
    x = np.random.default_rng(0).standard_normal((64, 33)).astype(np.float32)
    want = np.array([np.float32(2.0) * v for v in x.ravel()], np.float32).reshape(x.shape)
    sums = np.array([_left_sum(row) for row in want], np.float32)
    np.testing.assert_array_equal(_scratch_rows(x), sums)


def _left_sum(row: np.ndarray) -> np.float32:
    total = np.float32(0.0)
    for v in row:
        total = np.float32(total + v)
    return total


@numba.njit
def _lanes(x):
    from_stack = local_f32(4)
    for t in range(4):
        from_stack[t] = np.float32(0.0)
    for i in range(x.shape[0]):
        for t in range(4):
            from_stack[t] += x[i] * np.float32(t + 1)
    return from_stack.shape[0], _owner(from_stack), from_stack[0], from_stack[3]


def test_local_lanes_are_a_frame_array_of_the_given_length():
    x = np.arange(1, 6, dtype=np.float32)
    n, owner, first, last = _lanes(x)
    assert (n, owner) == (4, 0)
    assert first == np.float32(15.0) and last == np.float32(60.0)
