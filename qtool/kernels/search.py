"""Scale searches shared by the k-quants, the legacy imatrix paths and others.

Each function reproduces one of ggml's static helpers in ggml-quants.c, float operation for float
operation, so the chosen quants and scales match ggml's bit for bit. Every argument array is a 1-D
view of at least ``n`` elements; a zero-length weight array stands for C's NULL pointer.

Type discipline (numba follows numpy promotion): an int64 or int32 mixed with a float32 yields a
float64, so every integer that meets a float here is first converted with ``F32(...)``, exactly where
C converts it implicitly.
"""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import (SUB_WIDTH, F32, f32_bits, jit, lane_fit_errors, lane_qp_steps, lane_quant_sums,
                                 local_f32, nearest_int)

#: ggml's GROUP_MAX_EPS: below this the block counts as all zero.
GROUP_MAX_EPS = F32(1e-15)


@jit
def signed_absmax(x, n):
    """(max |x|, the first of the n values with that magnitude): ggml's amax/max scan (strict >, from
    0: a block of zeros or NaNs gives (0, 0))."""
    amax = F32(0.0)
    vmax = F32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            vmax = x[i]
    return amax, vmax


@jit
def _round_symmetric(n, nmax, x, L, iscale):
    """L[i] = nmax + clamp(nearest_int(iscale*x[i]), -nmax, nmax - 1) for the n values."""
    for i in range(n):
        l = nearest_int(iscale * x[i])
        L[i] = nmax + max(-nmax, min(nmax - 1, l))


@jit
def _qx_weight(x, qw, i, rmse_type):
    """The per-element weight of make_qx_quants: qw[i], else one picked by rmse_type."""
    if qw.shape[0] > 0:
        return qw[i]
    xi = x[i]
    if rmse_type == 1:
        return xi * xi
    if rmse_type == 2:
        return F32(1.0)
    if rmse_type == 3:
        return abs(xi)
    return np.sqrt(abs(xi))


# ---------------------------------------------------------------------------------------------------
# make_qx_quants
#
# After its first fit ggml tries 18 more scales, iscale = -(nmax + 0.1*is)/max for is = -9..-1, 1..9,
# each with its own sums: nothing carries from one trial to the next but the running best. qtool
# accumulates all 18 trials in SIMD lanes (each lane in ggml's element order), then applies ggml's
# comparisons in trial order and re-derives the quants of the last winner.
#
# scratch: float32 [QX_SCRATCH_ROWS, max(n, QX_LANES)], see qx_scratch().
# ---------------------------------------------------------------------------------------------------

QX_LANES = 24  # the 18 trials, padded to whole 8-float vectors
QX_SCRATCH_ROWS = 4
_QX_ISC, _QX_SLX, _QX_SL2, _QX_W = range(QX_SCRATCH_ROWS)


@jit
def qx_scratch(n):
    """Scratch for make_qx_quants_s on blocks of n values."""
    return np.empty((QX_SCRATCH_ROWS, max(n, QX_LANES)), np.float32)


@jit
def _nearest_int32(v):
    """common.nearest_int kept in int32 (Numba widens int32 arithmetic to int64), so that lane loops vectorize
    twice as wide."""
    t = v + F32(12582912.0)
    return np.int32(np.int32(f32_bits(t) & np.uint32(0x007FFFFF)) - np.int32(0x00400000))


@jit
def _qx_lane_quant(v, nm):
    """float32(MAX(-nmax, MIN(nmax-1, nearest_int(v)))) in int32 arithmetic (vectorizes)."""
    return F32(max(-nm, min(nm - np.int32(1), _nearest_int32(v))))


@jit
def _qx_lane_add(s, xi, wi, wx, nm, a, b):
    """One element into ggml's sumlx (+= w*x*l) and suml2 (+= w*l*l) for trial scale s."""
    fl = _qx_lane_quant(s * xi, nm)
    return a + wx * fl, b + wi * fl * fl


@jit
def _qx_lane_sums(n, nmax, x, w, nl, isc, slx, sl2):
    """Per lane k < nl: ggml's sumlx and suml2 for the trial scale isc[k] (four elements per pass
    over the lanes, as in _qkx_lane_sums)."""
    nm = np.int32(nmax)
    for k in range(nl):
        slx[k] = F32(0.0)
        sl2[k] = F32(0.0)
    n4 = n - n % 4
    for i in range(0, n4, 4):
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        w0, w1, w2, w3 = w[i], w[i + 1], w[i + 2], w[i + 3]
        y0, y1, y2, y3 = w0 * x0, w1 * x1, w2 * x2, w3 * x3
        for k in range(nl):
            s = isc[k]
            a, b = _qx_lane_add(s, x0, w0, y0, nm, slx[k], sl2[k])
            a, b = _qx_lane_add(s, x1, w1, y1, nm, a, b)
            a, b = _qx_lane_add(s, x2, w2, y2, nm, a, b)
            a, b = _qx_lane_add(s, x3, w3, y3, nm, a, b)
            slx[k] = a
            sl2[k] = b
    for i in range(n4, n):
        xi = x[i]
        wi = w[i]
        wx = wi * xi
        for k in range(nl):
            slx[k], sl2[k] = _qx_lane_add(isc[k], xi, wi, wx, nm, slx[k], sl2[k])


@jit
def make_qx_quants_s(n, nmax, x, L, rmse_type, qw, scratch):
    """make_qx_quants with caller-owned scratch (qx_scratch(n))."""
    amax, vmax = signed_absmax(x, n)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    iscale = F32(-nmax) / vmax
    if rmse_type == 0:
        _round_symmetric(n, nmax, x, L, iscale)
        return F32(1.0) / iscale
    return_early = False
    if rmse_type < 0:
        rmse_type = -rmse_type
        return_early = True
    w = scratch[_QX_W]
    for i in range(n):
        w[i] = _qx_weight(x, qw, i, rmse_type)
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
        fl = F32(l)
        sumlx += w[i] * x[i] * fl
        suml2 += w[i] * fl * fl
    scale = sumlx / suml2 if suml2 != F32(0.0) else F32(0.0)
    if return_early:
        if suml2 > F32(0.0):
            return F32(0.5) * (scale + F32(1.0) / iscale)
        return F32(1.0) / iscale
    best = scale * sumlx
    isc = scratch[_QX_ISC]
    slx = scratch[_QX_SLX]
    sl2 = scratch[_QX_SL2]
    # QX_LANES, spelled so that LLVM cannot see a constant trip count (it would unroll, not vectorize)
    nl = min(scratch.shape[1], QX_LANES)
    for k in range(nl):
        step = k - 9 if k < 9 else k - 8  # lanes 0..17: is = -9..-1, 1..9; the rest pad
        isc[k] = -(F32(nmax) + F32(0.1) * F32(step)) / vmax
    _qx_lane_sums(n, nmax, x, w, nl, isc, slx, sl2)
    win = -1
    for k in range(18):
        if sl2[k] > F32(0.0) and slx[k] * slx[k] > best * sl2[k]:
            scale = slx[k] / sl2[k]
            best = scale * slx[k]
            win = k
    if win >= 0:
        _round_symmetric(n, nmax, x, L, isc[win])
    return scale


@jit
def make_qx_quants(n, nmax, x, L, rmse_type, qw):
    """ggml make_qx_quants: symmetric quants L[i] in [0, 2*nmax) (int8), returns the scale.

    rmse_type 0: plain round-to-nearest; negative: one weighted refit then return early;
    positive: refit over 18 trial scales. Weights are ``qw`` (if non-empty) or chosen by rmse_type.
    """
    return make_qx_quants_s(n, nmax, x, L, rmse_type, qw, qx_scratch(n))


@jit
def make_q3_quants(n, nmax, x, L, do_rmse):
    """ggml make_q3_quants: symmetric quants L[i] in [0, 2*nmax) (int8) with an optional
    coordinate-descent refit weighted by x^2; returns the scale."""
    amax, vmax = signed_absmax(x, n)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    iscale = F32(-nmax) / vmax
    if do_rmse:
        sumlx = F32(0.0)
        suml2 = F32(0.0)
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            L[i] = l
            w = x[i] * x[i]
            fl = F32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        for _ in range(5):
            n_changed = 0
            for i in range(n):
                w = x[i] * x[i]
                li = F32(L[i])
                slx = sumlx - w * x[i] * li
                if slx > F32(0.0):
                    sl2 = suml2 - w * li * li
                    new_l = nearest_int(x[i] * sl2 / slx)
                    new_l = max(-nmax, min(nmax - 1, new_l))
                    if new_l != L[i]:
                        fnew = F32(new_l)
                        slx += w * x[i] * fnew
                        sl2 += w * fnew * fnew
                        if sl2 > F32(0.0) and slx * slx * suml2 > sumlx * sumlx * sl2:
                            L[i] = new_l
                            sumlx = slx
                            suml2 = sl2
                            n_changed += 1
            if n_changed == 0:
                break
        for i in range(n):
            L[i] += nmax
        return sumlx / suml2 if suml2 > F32(0.0) else F32(0.0)
    _round_symmetric(n, nmax, x, L, iscale)
    return F32(1.0) / iscale


# ---------------------------------------------------------------------------------------------------
# make_qkx2_quants / make_qkx3_quants
#
# ggml tries nstep+1 scales one after another. A trial's sums do not depend on the trials before it,
# except through `min`, which the C code replaces by the fitted min whenever a trial wins. qtool
# evaluates LANES consecutive trials at once, one SIMD lane per trial (each lane accumulates in
# ggml's element order, so its float32 sums are ggml's), then walks the lanes in trial order applying
# ggml's comparisons. When a winning trial moves `min`, the trials after it are evaluated again with
# the new min. Same bytes, about half the time. (No kernel calls these any more: the k-quants and
# Q4_1/Q5_1 with an importance vector search 16 blocks side by side, make_qkx_quants_lanes below; the
# tests pin that search to these one-block ports.)
#
# scratch: float32 [QKX_SCRATCH_ROWS, max(n, LANES)], see qkx_scratch().
# ---------------------------------------------------------------------------------------------------

#: trials per pass: one AVX-512 vector (two AVX2 ones). More lanes waste more when `min` moves, fewer
#: need more passes (Q4_K's 21 trials took ~4.4 passes of 8, ~3.3 of 16, when Q4_K searched this way; on
#: 2026-12-02 16 lanes ran it 1.3-1.55x faster than 8)
LANES = 16
QKX_SCRATCH_ROWS = 9
_ISC, _SL, _SL2, _SXL, _TS, _TM, _ERR, _D, _W = range(QKX_SCRATCH_ROWS)


@jit
def qkx_scratch(n):
    """Scratch for make_qkx2_quants_s / make_qkx3_quants_s on blocks of n values."""
    return np.empty((QKX_SCRATCH_ROWS, max(n, LANES)), np.float32)


@jit
def _lane_quant(v, nm):
    """float32(MAX(0, MIN(nmax, nearest_int(v)))) in int32 arithmetic, so that lane loops vectorize."""
    return F32(max(np.int32(0), min(nm, _nearest_int32(v))))


@jit
def _qkx_lane_sums(n, nmax, x, w, vmin, nl, isc, sl, sl2, sxl):
    """Per lane k < nl: ggml's sum_l, sum_l2, sum_xl for the trial scale isc[k].

    Four elements per pass over the lanes keep each lane's running sums in registers for four
    additions (still in element order) instead of one.
    """
    nm = np.int32(nmax)
    for k in range(nl):
        sl[k] = F32(0.0)
        sl2[k] = F32(0.0)
        sxl[k] = F32(0.0)
    n4 = n - n % 4
    for i in range(0, n4, 4):
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        m0, m1, m2, m3 = x0 - vmin, x1 - vmin, x2 - vmin, x3 - vmin
        w0, w1, w2, w3 = w[i], w[i + 1], w[i + 2], w[i + 3]
        for k in range(nl):
            s = isc[k]
            a = sl[k]
            b = sl2[k]
            c = sxl[k]
            fl = _lane_quant(s * m0, nm)
            wl = w0 * fl
            a += wl
            b += wl * fl
            c += wl * x0
            fl = _lane_quant(s * m1, nm)
            wl = w1 * fl
            a += wl
            b += wl * fl
            c += wl * x1
            fl = _lane_quant(s * m2, nm)
            wl = w2 * fl
            a += wl
            b += wl * fl
            c += wl * x2
            fl = _lane_quant(s * m3, nm)
            wl = w3 * fl
            a += wl
            b += wl * fl
            c += wl * x3
            sl[k] = a
            sl2[k] = b
            sxl[k] = c
    for i in range(n4, n):
        xi = x[i]
        xm = xi - vmin
        wi = w[i]
        for k in range(nl):
            fl = _lane_quant(isc[k] * xm, nm)
            wl = wi * fl
            sl[k] += wl
            sl2[k] += wl * fl
            sxl[k] += wl * xi


@jit
def _lane_err(s, t, u, xm, xi, wi, nm, use_mad):
    """One element's term of ggml's fit error for trial scale s and fit (t, u): w*|d| or w*d^2."""
    diff = t * _lane_quant(s * xm, nm) + u - xi
    return wi * (abs(diff) if use_mad else diff * diff)


@jit
def _qkx_lane_errors(n, nmax, x, w, vmin, nl, isc, ts, tm, err, use_mad):
    """Per lane k < nl: ggml's weighted error of the fit ts[k]*l + tm[k] for the trial scale isc[k]."""
    nm = np.int32(nmax)
    for k in range(nl):
        err[k] = F32(0.0)
    n4 = n - n % 4
    for i in range(0, n4, 4):
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        m0, m1, m2, m3 = x0 - vmin, x1 - vmin, x2 - vmin, x3 - vmin
        w0, w1, w2, w3 = w[i], w[i + 1], w[i + 2], w[i + 3]
        for k in range(nl):
            s = isc[k]
            t = ts[k]
            u = tm[k]
            e = err[k]
            e += _lane_err(s, t, u, m0, x0, w0, nm, use_mad)
            e += _lane_err(s, t, u, m1, x1, w1, nm, use_mad)
            e += _lane_err(s, t, u, m2, x2, w2, nm, use_mad)
            e += _lane_err(s, t, u, m3, x3, w3, nm, use_mad)
            err[k] = e
    for i in range(n4, n):
        xi = x[i]
        xm = xi - vmin
        wi = w[i]
        for k in range(nl):
            err[k] += _lane_err(isc[k], ts[k], tm[k], xm, xi, wi, nm, use_mad)


@jit
def _qkx_search(n, nmax, x, w, L, vmin, vmax, sum_w, sum_x, rmin, rdelta, nstep, use_mad, scratch):
    """The part of make_qkx2_quants/make_qkx3_quants after the min/max and weight sums."""
    fnmax = F32(nmax)
    iscale = fnmax / (vmax - vmin)
    scale = F32(1.0) / iscale
    best_error = F32(0.0)
    for i in range(n):
        li = max(0, min(nmax, nearest_int(iscale * (x[i] - vmin))))
        L[i] = li
        diff = scale * F32(li) + vmin - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += w[i] * diff
    if nstep < 1:
        return scale, -vmin
    isc = scratch[_ISC]
    sl = scratch[_SL]
    sl2 = scratch[_SL2]
    sxl = scratch[_SXL]
    ts = scratch[_TS]
    tm = scratch[_TM]
    err = scratch[_ERR]
    dd = scratch[_D]
    best_iscale = F32(0.0)
    best_vmin = vmin  # the min the winning trial quantized against
    improved = False
    first = 0
    while first <= nstep:
        nl = min(nstep + 1 - first, LANES)
        # All LANES lanes, also those past nstep: whole vectors, no scalar remainder. (Spelled so that
        # LLVM cannot see a constant trip count: it would unroll the lane loops instead of vectorizing.)
        nlv = (nl + LANES - 1) // LANES * LANES
        den = vmax - vmin
        for k in range(nlv):
            isc[k] = (rmin + rdelta * F32(first + k) + fnmax) / den
        _qkx_lane_sums(n, nmax, x, w, vmin, nlv, isc, sl, sl2, sxl)
        for k in range(nlv):
            D = sum_w * sl2[k] - sl[k] * sl[k]
            dd[k] = D
            this_scale = (sum_w * sxl[k] - sum_x * sl[k]) / D
            this_min = (sl2[k] * sum_x - sl[k] * sxl[k]) / D
            if this_min > F32(0.0):
                this_min = F32(0.0)
                this_scale = sxl[k] / sl2[k]
            ts[k] = this_scale
            tm[k] = this_min
        _qkx_lane_errors(n, nmax, x, w, vmin, nlv, isc, ts, tm, err, use_mad)
        restart = False
        for k in range(nl):
            if dd[k] > F32(0.0) and err[k] < best_error:
                best_error = err[k]
                scale = ts[k]
                best_iscale = isc[k]
                best_vmin = vmin
                improved = True
                moved = not (tm[k] == vmin)  # a NaN min also starts over (harmless)
                vmin = tm[k]  # even when equal: -0.0 vs 0.0 shows in the returned the_min
                if moved:
                    first += k + 1
                    restart = True
                    break
        if not restart:
            first += nl
    if improved:
        for i in range(n):
            L[i] = max(0, min(nmax, nearest_int(best_iscale * (x[i] - best_vmin))))
    return scale, -vmin


@jit
def _min_max_sums(n, x, w):
    """The start of make_qkx2_quants/make_qkx3_quants: (min(x) capped at 0, max(x), sum w, sum w*x)."""
    vmin = x[0]
    vmax = x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        xi = x[i]
        if xi < vmin:
            vmin = xi
        if xi > vmax:
            vmax = xi
        wi = w[i]
        sum_w += wi
        sum_x += wi * xi
    if vmin > F32(0.0):
        vmin = F32(0.0)
    return vmin, vmax, sum_w, sum_x


@jit
def make_qkx2_quants_s(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, scratch):
    """make_qkx2_quants with caller-owned scratch (qkx_scratch(n)); Laux is not needed."""
    vmin, vmax, sum_w, sum_x = _min_max_sums(n, x, weights)
    if vmax == vmin:
        for i in range(n):
            L[i] = 0
        return F32(0.0), -vmin
    return _qkx_search(n, nmax, x, weights, L, vmin, vmax, sum_w, sum_x, rmin, rdelta, nstep, use_mad, scratch)


@jit
def make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """ggml make_qkx2_quants: asymmetric quants L[i] in [0, nmax] (uint8) for x ~ scale*L - the_min,
    searching nstep+1 trial scales; returns (scale, the_min). ``weights`` must hold n values."""
    return make_qkx2_quants_s(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, qkx_scratch(n))


@jit
def make_qkx3_quants_s(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, scratch):
    """make_qkx3_quants with caller-owned scratch (qkx_scratch(n)); Laux is not needed."""
    w = weights
    if weights.shape[0] == 0:  # C's NULL: weight x^2
        w = scratch[_W]
        for i in range(n):
            w[i] = x[i] * x[i]
    vmin, vmax, sum_w, sum_x = _min_max_sums(n, x, w)
    if vmax <= vmin:
        for i in range(n):
            L[i] = 0
        return F32(0.0), -vmin
    return _qkx_search(n, nmax, x, w, L, vmin, vmax, sum_w, sum_x, rmin, rdelta, nstep, use_mad, scratch)


@jit
def make_qkx3_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """ggml make_qkx3_quants: as make_qkx2_quants, but weights may be NULL (empty: x^2 is used)
    and a block with max <= min counts as constant; returns (scale, the_min)."""
    return make_qkx3_quants_s(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, qkx_scratch(n))


# ---------------------------------------------------------------------------------------------------
# make_qkx2_quants / make_qkx3_quants, many blocks side by side
#
# The k-quants search each sub-block of a super-block on its own, one trial after another. Here
# SUB_LANES sub-blocks (two super-blocks of Q4_K/Q5_K) are searched at once, one per SIMD lane, each
# lane running ggml's whole sequence of trials in order with its own running min, best error and
# scale: no trial is evaluated twice (the trial lanes above start over when a winner moves the min,
# ~3.3 passes of 16 for Q4_K's 21 trials) and no lane waits on another. Every lane does ggml's float32
# operations in ggml's order; a comparison that C makes with an `if` is a per-lane select.
#
# Inputs transposed, element-major: xt, wt float32 [n, SUB_LANES] (lane b's block is xt[:, b]).
# scratch: qkx_lanes_scratch(n).
# ---------------------------------------------------------------------------------------------------

SUB_LANES = SUB_WIDTH
_LV_ROWS = 17  # the per-lane values below
(_LV_MIN, _LV_MAX, _LV_SW, _LV_SX, _LV_BEST, _LV_SCALE, _LV_BISC, _LV_BMIN, _LV_ISC, _LV_SL, _LV_SL2, _LV_SXL,
 _LV_TS, _LV_TM, _LV_ERR, _LV_OK, _LV_D) = range(_LV_ROWS)


@jit
def qkx_lanes_scratch(n):
    """Scratch for make_qkx_quants_lanes on blocks of n values: per-lane values float32[_LV_ROWS, SUB_LANES]
    and every trial's quants float32[n, SUB_LANES]."""
    return np.empty((_LV_ROWS, SUB_LANES), np.float32), np.empty((n, SUB_LANES), np.float32)


@jit
def make_qkx_quants_lanes(n, nmax, xt, wt, rmin, rdelta, nstep, use_mad, qkx3, L, scales, the_mins, scratch):
    """make_qkx2_quants (qkx3 False) or make_qkx3_quants (True, with weights given) of the SUB_LANES blocks
    in the columns of xt, wt (float32[n, SUB_LANES]): lane b's quants go to L[n*b:n*b + n] (uint8; the blocks'
    quants one after another, as they lie in a super-block), its scale and -min to scales[b], the_mins[b].
    The lane loops run to xt.shape[1], a run-time count (over the constant SUB_LANES LLVM unrolls instead of
    vectorizing). nstep >= 1 (C returns before the trials for less)."""
    v, lt = scratch
    vmin = v[_LV_MIN]
    vmax = v[_LV_MAX]
    sum_w = v[_LV_SW]
    sum_x = v[_LV_SX]
    best = v[_LV_BEST]
    scale = v[_LV_SCALE]
    bisc = v[_LV_BISC]
    bmin = v[_LV_BMIN]
    isc = v[_LV_ISC]
    sl = v[_LV_SL]
    sl2 = v[_LV_SL2]
    sxl = v[_LV_SXL]
    ts = v[_LV_TS]
    tm = v[_LV_TM]
    err = v[_LV_ERR]
    ok = v[_LV_OK]
    dd = v[_LV_D]
    lanes = xt.shape[1]
    nm = np.int32(nmax)
    fnmax = F32(nmax)
    for b in range(lanes):
        x0 = xt[0, b]
        vmin[b] = x0
        vmax[b] = x0
        sum_w[b] = wt[0, b]
        sum_x[b] = wt[0, b] * x0
    for i in range(1, n):
        for b in range(lanes):
            xi = xt[i, b]
            vmin[b] = xi if xi < vmin[b] else vmin[b]
            vmax[b] = xi if xi > vmax[b] else vmax[b]
            sum_w[b] += wt[i, b]
            sum_x[b] += wt[i, b] * xi
    for b in range(lanes):
        vmin[b] = F32(0.0) if vmin[b] > F32(0.0) else vmin[b]
        const = vmax[b] <= vmin[b] if qkx3 else vmax[b] == vmin[b]
        ok[b] = F32(0.0) if const else F32(1.0)
        iscale = fnmax / (vmax[b] - vmin[b])
        isc[b] = iscale
        scale[b] = F32(1.0) / iscale
        bisc[b] = iscale
        bmin[b] = vmin[b]
        best[b] = F32(0.0)
    for i in range(n):
        for b in range(lanes):
            xi = xt[i, b]
            diff = scale[b] * _lane_quant(isc[b] * (xi - vmin[b]), nm) + vmin[b] - xi
            best[b] += wt[i, b] * (abs(diff) if use_mad else diff * diff)
    for step in range(nstep + 1):
        for b in range(lanes):
            isc[b] = (rmin + rdelta * F32(step) + fnmax) / (vmax[b] - vmin[b])
        lane_quant_sums(xt, wt, lt, n, isc, vmin, nmax, sl, sl2, sxl)
        for b in range(lanes):
            D = sum_w[b] * sl2[b] - sl[b] * sl[b]
            this_scale = (sum_w[b] * sxl[b] - sum_x[b] * sl[b]) / D
            this_min = (sl2[b] * sum_x[b] - sl[b] * sxl[b]) / D
            positive = this_min > F32(0.0)
            ts[b] = sxl[b] / sl2[b] if positive else this_scale
            tm[b] = F32(0.0) if positive else this_min
            dd[b] = D
        lane_fit_errors(xt, wt, lt, n, ts, tm, use_mad, err)
        for b in range(lanes):
            win = (dd[b] > F32(0.0)) & (err[b] < best[b]) & (ok[b] > F32(0.0))
            best[b] = err[b] if win else best[b]
            scale[b] = ts[b] if win else scale[b]
            bisc[b] = isc[b] if win else bisc[b]
            bmin[b] = vmin[b] if win else bmin[b]
            vmin[b] = tm[b] if win else vmin[b]
    for b in range(lanes):
        scales[b] = scale[b] if ok[b] > F32(0.0) else F32(0.0)
        the_mins[b] = -vmin[b]
    for i in range(n):
        for b in range(lanes):
            l = _lane_quant(bisc[b] * (xt[i, b] - bmin[b]), nm)
            L[n * b + i] = np.uint8(l) if ok[b] > F32(0.0) else np.uint8(0)


@jit
def make_qp_quants(n, nmax, x, L, quant_weights):
    """ggml make_qp_quants: non-negative quants L[i] in [0, nmax] (uint8) of non-negative x (the
    sub-block scales or mins), weighted by quant_weights (n values); returns the scale."""
    vmax = F32(0.0)
    for i in range(n):
        vmax = vmax if vmax > x[i] else x[i]
    if vmax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    fnmax = F32(nmax)
    iscale = fnmax / vmax
    for i in range(n):
        L[i] = nearest_int(iscale * x[i])
    scale = F32(1.0) / iscale
    best_mse = F32(0.0)
    for i in range(n):
        diff = x[i] - scale * F32(L[i])
        best_mse += quant_weights[i] * diff * diff
    # the steps -4..-1, 1..4 side by side (lane t), each its own sum in C's order, then taken in C's order
    step_iscale = local_f32(8)
    step_scale = local_f32(8)
    step_mse = local_f32(8)
    for t in range(8):
        step_iscale[t] = (F32(0.1) * F32(t - 4 if t < 4 else t - 3) + fnmax) / vmax
        step_scale[t] = F32(1.0) / step_iscale[t]
    lane_qp_steps(x, quant_weights, n, nmax, step_iscale, step_scale, step_mse)
    for t in range(8):
        if step_mse[t] < best_mse:
            best_mse = step_mse[t]
            iscale = step_iscale[t]
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l  # C stores int into uint8_t (wraps); the sums below use the int
        w = quant_weights[i]
        fl = F32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = quant_weights[i]
            li = F32(L[i])
            slx = sumlx - w * x[i] * li
            sl2 = suml2 - w * li * li
            if slx > F32(0.0) and sl2 > F32(0.0):
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != np.int64(L[i]):
                    fnew = F32(new_l)
                    slx += w * x[i] * fnew
                    sl2 += w * fnew * fnew
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > F32(0.0) else F32(0.0)


@jit
def qx_lane_quants(nmax, xt, lane, inverse, amax, L, at):
    """The quants make_qx_quants(n, nmax, ...) stored for the block in column ``lane`` of xt (float32[n, lanes]),
    from its winning inverse scale inverse[lane] (common.lane_qx_search), into L[at:at + n] (0..2*nmax-1); all
    0 where the block's largest |x| amax[lane] is below GROUP_MAX_EPS (C returns at once, scale 0). Returns
    whether the block was searched."""
    n = xt.shape[0]
    if amax[lane] < GROUP_MAX_EPS:
        for i in range(n):
            L[at + i] = 0
        return False
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    for i in range(n):
        l = nearest_int(inverse[lane] * xt[i, lane])
        L[at + i] = nmax + (lo if l < lo else (hi if l > hi else l))
    return True
