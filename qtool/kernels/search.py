"""Scale searches shared by the k-quants, the legacy imatrix paths and others.

Each function reproduces one of ggml's static helpers in ggml-quants.c, float operation for float
operation, so the chosen quants and scales match ggml's bit for bit. Every argument array is a 1-D
view of at least ``n`` elements; a zero-length weight array stands for C's NULL pointer.

Type discipline (numba follows numpy promotion): an int64 or int32 mixed with a float32 yields a
float64, so every integer that meets a float here is first converted with ``F32(...)``, exactly where
C converts it implicitly.
"""

from __future__ import annotations

import numba
import numpy as np

from qtool.kernels.common import F32, nearest_int

#: IEEE float semantics: x/0 gives inf or NaN as in C (numba's default raises ZeroDivisionError).
jit = numba.njit(cache=True, nogil=True, error_model="numpy")

#: ggml's GROUP_MAX_EPS: below this the block counts as all zero.
GROUP_MAX_EPS = F32(1e-15)


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


@jit
def make_qx_quants(n, nmax, x, L, rmse_type, qw):
    """ggml make_qx_quants: symmetric quants L[i] in [0, 2*nmax) (int8), returns the scale.

    rmse_type 0: plain round-to-nearest; negative: one weighted refit then return early;
    positive: refit over 18 trial scales. Weights are ``qw`` (if non-empty) or chosen by rmse_type.
    """
    vmax = F32(0.0)
    amax = F32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            vmax = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    iscale = F32(-nmax) / vmax
    if rmse_type == 0:
        for i in range(n):
            l = nearest_int(iscale * x[i])
            L[i] = nmax + max(-nmax, min(nmax - 1, l))
        return F32(1.0) / iscale
    return_early = False
    if rmse_type < 0:
        rmse_type = -rmse_type
        return_early = True
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
        w = _qx_weight(x, qw, i, rmse_type)
        fl = F32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != F32(0.0) else F32(0.0)
    if return_early:
        if suml2 > F32(0.0):
            return F32(0.5) * (scale + F32(1.0) / iscale)
        return F32(1.0) / iscale
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(step)) / vmax
        sumlx = F32(0.0)
        suml2 = F32(0.0)
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            w = _qx_weight(x, qw, i, rmse_type)
            fl = F32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        if suml2 > F32(0.0) and sumlx * sumlx > best * suml2:
            for i in range(n):
                l = nearest_int(iscale * x[i])
                L[i] = nmax + max(-nmax, min(nmax - 1, l))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@jit
def make_q3_quants(n, nmax, x, L, do_rmse):
    """ggml make_q3_quants: symmetric quants L[i] in [0, 2*nmax) (int8) with an optional
    coordinate-descent refit weighted by x^2; returns the scale."""
    vmax = F32(0.0)
    amax = F32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            vmax = x[i]
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
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
    return F32(1.0) / iscale


@jit
def make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """ggml make_qkx2_quants: asymmetric quants L[i] in [0, nmax] (uint8) for x ~ scale*L - the_min,
    searching nstep+1 trial scales; returns (scale, the_min). ``weights`` must hold n values."""
    vmin = x[0]
    vmax = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        xi = x[i]
        if xi < vmin:
            vmin = xi
        if xi > vmax:
            vmax = xi
        w = weights[i]
        sum_w += w
        sum_x += w * xi
    if vmin > F32(0.0):
        vmin = F32(0.0)
    if vmax == vmin:
        for i in range(n):
            L[i] = 0
        return F32(0.0), -vmin
    fnmax = F32(nmax)
    iscale = fnmax / (vmax - vmin)
    scale = F32(1.0) / iscale
    best_error = F32(0.0)
    for i in range(n):
        l = nearest_int(iscale * (x[i] - vmin))
        li = max(0, min(nmax, l))
        L[i] = li
        diff = scale * F32(li) + vmin - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -vmin
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * F32(step) + fnmax) / (vmax - vmin)
        sum_l = F32(0.0)
        sum_l2 = F32(0.0)
        sum_xl = F32(0.0)
        for i in range(n):
            l = nearest_int(iscale * (x[i] - vmin))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = weights[i]
            fl = F32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > F32(0.0):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > F32(0.0):
                this_min = F32(0.0)
                this_scale = sum_xl / sum_l2
            cur_error = F32(0.0)
            for i in range(n):
                diff = this_scale * F32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                vmin = this_min
    return scale, -vmin


@jit
def _qkx3_weight(x, weights, i):
    if weights.shape[0] > 0:
        return weights[i]
    return x[i] * x[i]


@jit
def make_qkx3_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """ggml make_qkx3_quants: as make_qkx2_quants, but weights may be NULL (empty: x^2 is used)
    and a block with max <= min counts as constant; returns (scale, the_min)."""
    vmin = x[0]
    vmax = x[0]
    sum_w = _qkx3_weight(x, weights, 0)
    sum_x = sum_w * x[0]
    for i in range(1, n):
        xi = x[i]
        if xi < vmin:
            vmin = xi
        if xi > vmax:
            vmax = xi
        w = _qkx3_weight(x, weights, i)
        sum_w += w
        sum_x += w * xi
    if vmin > F32(0.0):
        vmin = F32(0.0)
    if vmax <= vmin:
        for i in range(n):
            L[i] = 0
        return F32(0.0), -vmin
    fnmax = F32(nmax)
    iscale = fnmax / (vmax - vmin)
    scale = F32(1.0) / iscale
    best_mad = F32(0.0)
    for i in range(n):
        l = nearest_int(iscale * (x[i] - vmin))
        li = max(0, min(nmax, l))
        L[i] = li
        diff = scale * F32(li) + vmin - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_mad += _qkx3_weight(x, weights, i) * diff
    if nstep < 1:
        return scale, -vmin
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * F32(step) + fnmax) / (vmax - vmin)
        sum_l = F32(0.0)
        sum_l2 = F32(0.0)
        sum_xl = F32(0.0)
        for i in range(n):
            l = nearest_int(iscale * (x[i] - vmin))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = _qkx3_weight(x, weights, i)
            fl = F32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > F32(0.0):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > F32(0.0):
                this_min = F32(0.0)
                this_scale = sum_xl / sum_l2
            mad = F32(0.0)
            for i in range(n):
                diff = this_scale * F32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                mad += _qkx3_weight(x, weights, i) * diff
            if mad < best_mad:
                for i in range(n):
                    L[i] = Laux[i]
                best_mad = mad
                scale = this_scale
                vmin = this_min
    return scale, -vmin


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
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (F32(0.1) * F32(step) + fnmax) / vmax
        scale_is = F32(1.0) / iscale_is
        mse = F32(0.0)
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * F32(l)
            mse += quant_weights[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
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
