"""IQ3_XXS and IQ3_S kernels: 4-weight groups snapped to a 3-bit-per-coordinate lattice.

Both types split a 256-weight super-block into 32-weight blocks and each block into eight groups of
four magnitudes. A group stores one index into a grid of 4-vectors whose coordinates are odd levels
``2l + 1`` (l = 0..7); signs travel separately. IQ3_XXS uses 256 grid points (index: one byte) and
8 of every 8 signs with even parity (7 stored, the 8th implied); IQ3_S uses 512 points (a 9th index
bit in ``qh``) and all 8 signs. Each block has a 4-bit scale against the super-block's half ``d``.

The quantizer (ggml's quantize_row_iq3_xxs_impl / quantize_row_iq3_s_impl) searches a range of
trial scales; a group that rounds to a point off the grid is replaced by the best of its precomputed
neighbours (``iq3xs_init_impl``): the grid points at the two (IQ3_XXS) or three (IQ3_S) smallest
distinct squared distances, ordered by (distance, grid index).

Each quantize entry point takes ``weights`` as a float32 importance vector of n_per_row values, or a
zero-length array for none (C's NULL). Inputs where ggml's search asserts and aborts the process
(weights or distances that overflow to inf/NaN, e.g. |x| ~ 1e30) raise ``QuantError`` instead.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from qtool.errors import QuantError
from qtool.kernels.common import F32, jit, jit_rows, load_fp16, nearest_int, store_fp16

QK_K = 256
IQ3_XXS_BYTES = 98  # d (f16) + qs[64] + scales_and_signs[32]
IQ3_S_BYTES = 110  # d (f16) + qs[64] + qh[8] + signs[32] + scales[4]

#: ggml's kgrid_256 (iq3xs_init_impl): the IQ3_XXS lattice, three bits per coordinate (coordinate i in
#: bits 3i..3i+2).
KGRID_256 = np.array([
    0, 2, 4, 9, 11, 15, 16, 18, 25, 34, 59, 61, 65, 67, 72, 74,
    81, 85, 88, 90, 97, 108, 120, 128, 130, 132, 137, 144, 146, 153, 155, 159,
    169, 175, 189, 193, 199, 200, 202, 213, 248, 267, 287, 292, 303, 315, 317, 321,
    327, 346, 362, 413, 436, 456, 460, 462, 483, 497, 513, 515, 520, 522, 529, 531,
    536, 538, 540, 551, 552, 576, 578, 585, 592, 594, 641, 643, 648, 650, 657, 664,
    698, 704, 706, 720, 729, 742, 758, 769, 773, 808, 848, 852, 870, 889, 901, 978,
    992, 1024, 1026, 1033, 1035, 1040, 1042, 1046, 1049, 1058, 1089, 1091, 1093, 1096, 1098, 1105,
    1112, 1139, 1143, 1144, 1152, 1154, 1161, 1167, 1168, 1170, 1183, 1184, 1197, 1217, 1224, 1228,
    1272, 1276, 1309, 1323, 1347, 1367, 1377, 1404, 1473, 1475, 1486, 1509, 1537, 1544, 1546, 1553,
    1555, 1576, 1589, 1594, 1600, 1602, 1616, 1625, 1636, 1638, 1665, 1667, 1672, 1685, 1706, 1722,
    1737, 1755, 1816, 1831, 1850, 1856, 1862, 1874, 1901, 1932, 1950, 1971, 2011, 2032, 2052, 2063,
    2077, 2079, 2091, 2095, 2172, 2192, 2207, 2208, 2224, 2230, 2247, 2277, 2308, 2345, 2356, 2389,
    2403, 2424, 2501, 2504, 2506, 2520, 2570, 2593, 2616, 2624, 2630, 2646, 2669, 2700, 2714, 2746,
    2754, 2795, 2824, 2835, 2839, 2874, 2882, 2905, 2984, 3028, 3042, 3092, 3108, 3110, 3124, 3153,
    3185, 3215, 3252, 3288, 3294, 3364, 3397, 3434, 3483, 3523, 3537, 3587, 3589, 3591, 3592, 3610,
    3626, 3670, 3680, 3722, 3749, 3754, 3776, 3789, 3803, 3824, 3857, 3873, 3904, 3906, 3924, 3992,
], dtype=np.uint16)
#: ggml's kgrid_512: the IQ3_S lattice, same encoding.
KGRID_512 = np.array([
    0, 1, 2, 5, 7, 8, 9, 10, 12, 14, 16, 17, 21, 27, 32, 34,
    37, 39, 41, 43, 48, 50, 57, 60, 63, 64, 65, 66, 68, 72, 73, 77,
    80, 83, 87, 89, 93, 100, 113, 117, 122, 128, 129, 133, 135, 136, 139, 142,
    145, 149, 152, 156, 162, 165, 167, 169, 171, 184, 187, 195, 201, 205, 208, 210,
    217, 219, 222, 228, 232, 234, 247, 249, 253, 256, 267, 271, 273, 276, 282, 288,
    291, 297, 312, 322, 324, 336, 338, 342, 347, 353, 357, 359, 374, 379, 390, 393,
    395, 409, 426, 441, 448, 450, 452, 464, 466, 470, 475, 488, 492, 512, 513, 514,
    516, 520, 521, 523, 525, 527, 528, 530, 537, 540, 542, 556, 558, 561, 570, 576,
    577, 579, 582, 584, 588, 593, 600, 603, 609, 616, 618, 632, 638, 640, 650, 653,
    655, 656, 660, 666, 672, 675, 685, 688, 698, 705, 708, 711, 712, 715, 721, 727,
    728, 732, 737, 754, 760, 771, 773, 778, 780, 793, 795, 802, 806, 808, 812, 833,
    840, 843, 849, 856, 858, 873, 912, 916, 919, 932, 934, 961, 963, 968, 970, 977,
    989, 993, 1010, 1016, 1024, 1025, 1027, 1029, 1031, 1032, 1034, 1036, 1038, 1041, 1043, 1047,
    1048, 1050, 1057, 1059, 1061, 1064, 1066, 1079, 1080, 1083, 1085, 1088, 1090, 1096, 1099, 1103,
    1106, 1109, 1113, 1116, 1122, 1129, 1153, 1156, 1159, 1169, 1171, 1176, 1183, 1185, 1195, 1199,
    1209, 1212, 1216, 1218, 1221, 1225, 1234, 1236, 1241, 1243, 1250, 1256, 1270, 1281, 1287, 1296,
    1299, 1306, 1309, 1313, 1338, 1341, 1348, 1353, 1362, 1375, 1376, 1387, 1400, 1408, 1410, 1415,
    1425, 1453, 1457, 1477, 1481, 1494, 1496, 1507, 1512, 1538, 1545, 1547, 1549, 1551, 1554, 1561,
    1563, 1565, 1570, 1572, 1575, 1577, 1587, 1593, 1601, 1603, 1605, 1612, 1617, 1619, 1632, 1648,
    1658, 1662, 1664, 1674, 1680, 1690, 1692, 1704, 1729, 1736, 1740, 1745, 1747, 1751, 1752, 1761,
    1763, 1767, 1773, 1787, 1795, 1801, 1806, 1810, 1817, 1834, 1840, 1844, 1857, 1864, 1866, 1877,
    1882, 1892, 1902, 1915, 1934, 1953, 1985, 1987, 2000, 2002, 2013, 2048, 2052, 2058, 2064, 2068,
    2071, 2074, 2081, 2088, 2104, 2114, 2119, 2121, 2123, 2130, 2136, 2141, 2147, 2153, 2157, 2177,
    2179, 2184, 2189, 2193, 2203, 2208, 2223, 2226, 2232, 2244, 2249, 2251, 2256, 2258, 2265, 2269,
    2304, 2306, 2324, 2335, 2336, 2361, 2373, 2375, 2385, 2418, 2443, 2460, 2480, 2504, 2509, 2520,
    2531, 2537, 2562, 2568, 2572, 2578, 2592, 2596, 2599, 2602, 2614, 2620, 2625, 2627, 2629, 2634,
    2641, 2650, 2682, 2688, 2697, 2707, 2712, 2718, 2731, 2754, 2759, 2760, 2775, 2788, 2793, 2805,
    2811, 2817, 2820, 2832, 2842, 2854, 2890, 2902, 2921, 2923, 2978, 3010, 3012, 3026, 3081, 3083,
    3085, 3097, 3099, 3120, 3136, 3152, 3159, 3188, 3210, 3228, 3234, 3245, 3250, 3256, 3264, 3276,
    3281, 3296, 3349, 3363, 3378, 3392, 3395, 3420, 3440, 3461, 3488, 3529, 3531, 3584, 3588, 3591,
    3600, 3602, 3614, 3616, 3628, 3634, 3650, 3657, 3668, 3683, 3685, 3713, 3716, 3720, 3726, 3729,
    3736, 3753, 3778, 3802, 3805, 3819, 3841, 3845, 3851, 3856, 3880, 3922, 3938, 3970, 3993, 4032,
], dtype=np.uint16)

_FLT_MAX = F32(3.4028234663852886e38)
#: ggml's GROUP_MAX_EPS_IQ3_XXS: an IQ3_XXS block whose largest |x| is below this gets scale 0
_EPS_XXS = F32(1e-8)
#: ggml's fudge factors on the stored super-block scale
_FUDGE_XXS = F32(1.0125)
_FUDGE_S = F32(1.033)
_KMAX = 8

#: kernel status codes per row (ggml aborts on both)
_OK, _NO_NEIGHBOUR, _BAD_SCALE = 0, 1, 2


def _levels(kgrid: np.ndarray) -> np.ndarray:
    """uint8 [G, 4]: the 3-bit levels l of each grid point."""
    return np.stack([(kgrid.astype(np.int32) >> (3 * i)) & 7 for i in range(4)], axis=1).astype(np.uint8)


def _neighbours(levels: np.ndarray, nwant: int) -> tuple[np.ndarray, np.ndarray]:
    """iq3xs_init_impl's map and neighbour lists.

    Returns kmap int32[4096] (the grid index of an on-grid code u, else -(offset + 1)) and
    neighbours uint16[...], where at each offset a count n is followed by n grid indices: those at
    the nwant smallest distinct squared distances to u's point, sorted by (distance, index).
    """
    g = levels.astype(np.int32)
    codes = (g[:, 0] | (g[:, 1] << 3) | (g[:, 2] << 6) | (g[:, 3] << 9))
    kmap = np.full(4096, -1, np.int32)
    kmap[codes] = np.arange(len(codes), dtype=np.int32)
    u = np.arange(4096)
    pos = np.stack([(u >> (3 * i)) & 7 for i in range(4)], axis=1)
    idx = np.arange(len(codes))
    out = []
    counter = 0
    for i in range(4096):
        if kmap[i] >= 0:
            continue
        d2 = (((2 * g + 1) - (2 * pos[i] + 1)) ** 2).sum(axis=1)
        order = np.lexsort((idx, d2))
        d2s = d2[order]
        distinct = np.unique(d2s)[:nwant]
        n = int(np.count_nonzero(d2s <= distinct[-1]))
        kmap[i] = -(counter + 1)
        out.append(np.concatenate([[n], order[:n]]))
        counter += 1 + n
    return kmap, np.concatenate(out).astype(np.uint16)


#: levels of each grid point, uint8 [256, 4] and [512, 4]
LEVELS_256 = _levels(KGRID_256)
LEVELS_512 = _levels(KGRID_512)
#: the grids' coordinates 2l + 1 as float32, the form the searches take
GRID_256_F32 = (2 * LEVELS_256.astype(np.float32) + 1).astype(np.float32)
GRID_512_F32 = (2 * LEVELS_512.astype(np.float32) + 1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def neighbour_tables(grid_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(kmap, neighbours) of the 256- or 512-point grid, built on first use rather than at import (every
    qtool command imports every family; building both costs about 0.3 s)."""
    return _neighbours(LEVELS_256, 2) if grid_size == 256 else _neighbours(LEVELS_512, 3)

#: ggml's iq3xxs_grid as coordinates: levels 0..7 stored as 4, 12, ..., 52 and 62 (not 60)
DQ_GRID_XXS = np.where(LEVELS_256 == 7, 62, 8 * LEVELS_256.astype(np.int32) + 4).astype(np.float32)
#: ggml's iq3s_grid as coordinates: 2l + 1
DQ_GRID_S = GRID_512_F32
#: ggml's ksigns_iq2xs: 7 sign bits plus an 8th that makes the parity even
KSIGNS = np.array([i | ((bin(i).count("1") & 1) << 7) for i in range(128)], dtype=np.uint8)


@jit
def _best_neighbour(neigh, start, grid, xval, waux, off, scale, L):
    """ggml iq3_find_best_neighbour: the listed grid point nearest to xval[off:off+4] under weights
    waux, its levels written to L[off:off+4]; -1 where no distance is below FLT_MAX (ggml aborts)."""
    best_d2 = _FLT_MAX
    gi = -1
    for j in range(1, np.int32(neigh[start]) + 1):
        p = np.int32(neigh[start + j])
        d2 = F32(0.0)
        for i in range(4):
            diff = scale * grid[p, i] - xval[off + i]
            d2 += waux[off + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            gi = p
    if gi >= 0:
        for i in range(4):
            L[off + i] = np.int8((np.int32(grid[gi, i]) - 1) // 2)
    return gi


@jit
def _code(L, off):
    """The 12-bit map key of the 4 levels at L[off:off+4]."""
    u = 0
    for i in range(4):
        u |= np.int32(L[off + i]) << (3 * i)
    return u


@jit
def _round_group(xval, off, inv, L):
    """Levels of xval[off:off+4] at inverse scale inv: clamp(nearest_int(0.5*(inv*x - 1)), 0, 7)."""
    for i in range(4):
        l = nearest_int(F32(0.5) * (inv * xval[off + i] - F32(1.0)))
        L[off + i] = np.int8(max(0, min(_KMAX - 1, l)))


@jit
def _sums(xval, weight, L):
    """sum(w*x*q) and sum(w*q*q) over a 32-weight block at levels L (q = 2l + 1), in ggml's order."""
    sumqx = F32(0.0)
    sumq2 = F32(0.0)
    for i in range(32):
        w = weight[i]
        q = F32(2 * np.int32(L[i]) + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@jit
def _block_search(xval, weight, waux, vmax, nstep, refit_all, on_grid_init, grid, kmap, neigh,
                  L, Laux, on_grid, on_grid_aux):
    """The per-32-weight scale search shared by quantize_row_iq3_xxs_impl (nstep 15, refit only the
    off-grid groups, groups start on-grid) and quantize_row_iq3_s_impl (nstep 9, refit all, start
    off-grid). L int8[32] gets the levels; returns (scale, status)."""
    for i in range(32):
        L[i] = 0
    best = F32(0.0)
    scale = vmax / F32(2 * _KMAX - 1)
    for k in range(8):
        on_grid[k] = on_grid_init
    for s in range(-nstep, nstep + 1):
        inv = (F32(2 * _KMAX - 1) + F32(s) * F32(0.2)) / vmax
        this_scale = F32(1.0) / inv
        for k in range(8):
            _round_group(xval, 4 * k, inv, Laux)
            m = kmap[_code(Laux, 4 * k)]
            on_grid_aux[k] = m >= 0
            if m < 0:
                if _best_neighbour(neigh, -m - 1, grid, xval, waux, 4 * k, this_scale, Laux) < 0:
                    return scale, _NO_NEIGHBOUR
        sumqx, sumq2 = _sums(xval, weight, Laux)
        if sumq2 > F32(0.0) and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(32):
                L[i] = Laux[i]
            for k in range(8):
                on_grid[k] = on_grid_aux[k]
    n_off = 0
    for k in range(8):
        if not on_grid[k]:
            n_off += 1
    if n_off > 0 and scale > F32(0.0):
        inv = F32(1.0) / scale
        for k in range(8):
            if on_grid[k] and not refit_all:
                continue
            _round_group(xval, 4 * k, inv, Laux)  # Laux is free here: only its 4 levels are used
            m = kmap[_code(Laux, 4 * k)]
            if m < 0:
                gi = _best_neighbour(neigh, -m - 1, grid, xval, waux, 4 * k, scale, L)
                if gi < 0:
                    return scale, _NO_NEIGHBOUR
            else:
                gi = m
            for i in range(4):
                L[4 * k + i] = np.int8((np.int32(grid[gi, i]) - 1) // 2)
        sumqx, sumq2 = _sums(xval, weight, L)
        if sumq2 > F32(0.0):
            scale = sumqx / sumq2
    return scale, _OK


@jit
def _weights(xb, qw, sigma2, weight, waux):
    """Per-weight importance of a 32-weight block (qw*sqrt(sigma2 + x^2), or x^2 without qw) into
    weight, and its square root (the neighbour search's weight) into waux."""
    if qw.shape[0] > 0:
        for i in range(32):
            weight[i] = qw[i] * np.sqrt(sigma2 + xb[i] * xb[i])
    else:
        for i in range(32):
            weight[i] = xb[i] * xb[i]
    for i in range(32):
        waux[i] = np.sqrt(weight[i])


@jit
def _sigma2(x):
    """2 * sum(x^2) / 256 in float32, in ggml's order."""
    s = F32(0.0)
    for i in range(QK_K):
        s += x[i] * x[i]
    return F32(2.0) * s / F32(QK_K)


# ---------------------------------------------------------------------------------------------------
# IQ3_XXS block, 98 bytes; per 32-weight block b (b = 0..7), groups k = 0..7 of 4 weights:
#
#   0       2                           66                                 98
#   | d f16 | qs[64]: grid index of     | scales_and_signs: u32 per block  |
#   |       | group k of block b at 8b+k| bits 7j..7j+6: signs of weights  |
#   |       |                           |   8j..8j+7 (8th by even parity)  |
#   |       |                           | bits 28..31: ls                  |
#
#   x = d * (0.5 + ls) * 0.5 * grid_xxs[q][i] * sign
# ---------------------------------------------------------------------------------------------------


@jit
def quantize_block_iq3_xxs(x, qw, y, grid, kmap, neigh, s):
    """ggml quantize_row_iq3_xxs_impl for one super-block: x, qw float32[256] -> y uint8[98].
    s: the row's scratch tuple. Returns a status code."""
    weight, waux, xval, L, Laux, on_grid, on_grid_aux, signs, scales = s
    for j in range(IQ3_XXS_BYTES):
        y[j] = 0
    max_scale = F32(0.0)
    sigma2 = _sigma2(x)
    for ib in range(8):
        xb = x[32 * ib:32 * ib + 32]
        _weights(xb, qw[32 * ib:32 * ib + 32] if qw.shape[0] > 0 else qw, sigma2, weight, waux)
        for k in range(4):
            nflip = 0
            sg = 0
            for i in range(8):
                v = xb[8 * k + i]
                if v >= F32(0.0):
                    xval[8 * k + i] = v
                else:
                    xval[8 * k + i] = -v
                    nflip += 1
                    sg |= 1 << i
            if nflip % 2:
                imin = 0
                vmin = weight[8 * k] * xb[8 * k] * xb[8 * k]
                for i in range(1, 8):
                    ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                    if ax < vmin:
                        vmin = ax
                        imin = i
                xval[8 * k + imin] = -xval[8 * k + imin]
                sg ^= 1 << imin
            signs[k] = sg & 127
        vmax = xval[0]
        for i in range(1, 32):
            vmax = vmax if vmax > xval[i] else xval[i]
        if vmax < _EPS_XXS:
            scales[ib] = F32(0.0)
            continue
        scale, status = _block_search(xval, weight, waux, vmax, 15, False, True, grid, kmap, neigh,
                                      L, Laux, on_grid, on_grid_aux)
        if status != _OK:
            return status
        if scale < F32(0.0):
            scale = -scale
            for k in range(4):
                signs[k] = (~signs[k]) & 127
        for k in range(8):
            y[2 + 8 * ib + k] = np.uint8(kmap[_code(L, 4 * k)])
        word = np.uint32(signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21))
        for j in range(4):
            y[66 + 4 * ib + j] = np.uint8((word >> np.uint32(8 * j)) & np.uint32(0xFF))
        if not (scale >= F32(0.0)):
            return _BAD_SCALE
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F32(0.0):
        for j in range(2, IQ3_XXS_BYTES):
            y[j] = 0
        return _OK
    d = max_scale / F32(31.0)
    store_fp16(y, 0, d * _FUDGE_XXS)
    inv = F32(1.0) / d
    for ib in range(8):
        l = max(0, min(15, nearest_int(F32(0.5) * (inv * scales[ib] - F32(1.0)))))
        y[66 + 4 * ib + 3] |= np.uint8(l << 4)
    return _OK


# ---------------------------------------------------------------------------------------------------
# IQ3_S block, 110 bytes:
#
#   0       2         66       74          106        110
#   | d f16 | qs[64]  | qh[8]  | signs[32] | scales[4] |
#
#   grid index of group g (g = 0..63) = qs[g] | (qh[g/8] bit g%8) << 8
#   signs: one bit per weight, 8 weights per byte;  scales[b/2] nibble b%2 = ls of block b
#   x = d * (1 + 2*ls) * grid_s[q][i] * sign
#
#   ggml advances qs and signs only past blocks it quantizes: after an all-zero block the next
#   block's indices and signs land where the zero block's would have gone (qh is indexed by block).
# ---------------------------------------------------------------------------------------------------


@jit
def quantize_block_iq3_s(x, qw, y, grid, kmap, neigh, s):
    """ggml quantize_row_iq3_s_impl (block size 32) for one super-block: x, qw float32[256] -> y uint8[110].
    s: the row's scratch tuple. Returns a status code."""
    weight, waux, xval, L, Laux, on_grid, on_grid_aux, signs, scales = s
    for j in range(IQ3_S_BYTES):
        y[j] = 0
    qs = 2
    sp = 74
    max_scale = F32(0.0)
    sigma2 = _sigma2(x)
    for ib in range(8):
        xb = x[32 * ib:32 * ib + 32]
        _weights(xb, qw[32 * ib:32 * ib + 32] if qw.shape[0] > 0 else qw, sigma2, weight, waux)
        for k in range(4):
            sg = 0
            for i in range(8):
                v = xb[8 * k + i]
                if v >= F32(0.0):
                    xval[8 * k + i] = v
                else:
                    xval[8 * k + i] = -v
                    sg |= 1 << i
            signs[k] = sg
        vmax = xval[0]
        for i in range(1, 32):
            vmax = vmax if vmax > xval[i] else xval[i]
        if vmax == F32(0.0):
            scales[ib] = F32(0.0)
            continue
        scale, status = _block_search(xval, weight, waux, vmax, 9, True, False, grid, kmap, neigh,
                                      L, Laux, on_grid, on_grid_aux)
        if status != _OK:
            return status
        if scale < F32(0.0):
            scale = -scale
            for k in range(4):
                signs[k] = (~signs[k]) & 255
        for k in range(8):
            gi = kmap[_code(L, 4 * k)]
            y[qs + k] = np.uint8(gi & 255)
            y[66 + ib] |= np.uint8((gi >> 8) << k)
        qs += 8
        for k in range(4):
            y[sp + k] = np.uint8(signs[k])
        sp += 4
        if not (scale >= F32(0.0)):
            return _BAD_SCALE
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F32(0.0):
        return _OK
    d = max_scale / F32(31.0)
    store_fp16(y, 0, d * _FUDGE_S)
    inv = F32(1.0) / d
    for ib in range(0, 8, 2):
        l1 = max(0, min(15, nearest_int(F32(0.5) * (inv * scales[ib] - F32(1.0)))))
        l2 = max(0, min(15, nearest_int(F32(0.5) * (inv * scales[ib + 1] - F32(1.0)))))
        y[106 + ib // 2] = np.uint8(l1 | (l2 << 4))
    return _OK


@jit
def _scratch():
    return (np.empty(32, np.float32), np.empty(32, np.float32), np.empty(32, np.float32),
            np.empty(32, np.int8), np.empty(32, np.int8), np.empty(8, np.bool_), np.empty(8, np.bool_),
            np.empty(4, np.int32), np.empty(8, np.float32))


@jit_rows
def _quantize_iq3_xxs(rows, weights, out, grid, kmap, neigh, status):
    """ggml quantize_iq3_xxs: rows float32[nrows, n], weights float32[n] or [0] -> out uint8[nrows, n/256*98];
    status int32[nrows] gets a non-zero code where ggml would abort."""
    nrows, n = rows.shape
    nb = n // QK_K
    for r in numba.prange(nrows):
        s = _scratch()
        for i in range(nb):
            qw = weights[QK_K * i:QK_K * (i + 1)] if weights.shape[0] > 0 else weights
            st = quantize_block_iq3_xxs(rows[r, QK_K * i:QK_K * (i + 1)], qw,
                                        out[r, IQ3_XXS_BYTES * i:IQ3_XXS_BYTES * (i + 1)], grid, kmap, neigh, s)
            if st != _OK:
                status[r] = st
                break


@jit_rows
def _quantize_iq3_s(rows, weights, out, grid, kmap, neigh, status):
    """ggml quantize_iq3_s: rows float32[nrows, n], weights float32[n] or [0] -> out uint8[nrows, n/256*110];
    status int32[nrows] gets a non-zero code where ggml would abort."""
    nrows, n = rows.shape
    nb = n // QK_K
    for r in numba.prange(nrows):
        s = _scratch()
        for i in range(nb):
            qw = weights[QK_K * i:QK_K * (i + 1)] if weights.shape[0] > 0 else weights
            st = quantize_block_iq3_s(rows[r, QK_K * i:QK_K * (i + 1)], qw,
                                      out[r, IQ3_S_BYTES * i:IQ3_S_BYTES * (i + 1)], grid, kmap, neigh, s)
            if st != _OK:
                status[r] = st
                break


@jit
def _signed(v, neg):
    """v * (neg ? -1 : 1) as ggml writes it (a multiply, not a negation)."""
    return v * (F32(-1.0) if neg else F32(1.0))


@jit_rows
def _dequantize_iq3_xxs(data, out, grid, ksigns):
    """ggml dequantize_row_iq3_xxs: data uint8[nrows, nb*98] -> out float32[nrows, nb*256]."""
    nrows = data.shape[0]
    nb = data.shape[1] // IQ3_XXS_BYTES
    for r in numba.prange(nrows):
        for i in range(nb):
            y = data[r, IQ3_XXS_BYTES * i:IQ3_XXS_BYTES * (i + 1)]
            o = out[r, QK_K * i:QK_K * (i + 1)]
            d = load_fp16(y, 0)
            for ib in range(8):
                p = 66 + 4 * ib
                aux = (np.uint32(y[p]) | (np.uint32(y[p + 1]) << np.uint32(8)) | (np.uint32(y[p + 2]) << np.uint32(16))
                       | (np.uint32(y[p + 3]) << np.uint32(24)))
                db = d * (F32(0.5) + F32(aux >> np.uint32(28))) * F32(0.5)
                for l in range(4):
                    sg = ksigns[(aux >> np.uint32(7 * l)) & np.uint32(127)]
                    g1 = y[2 + 8 * ib + 2 * l]
                    g2 = y[2 + 8 * ib + 2 * l + 1]
                    base = 32 * ib + 8 * l
                    for j in range(4):
                        o[base + j] = _signed(db * grid[g1, j], (sg >> j) & 1)
                        o[base + 4 + j] = _signed(db * grid[g2, j], (sg >> (j + 4)) & 1)


@jit_rows
def _dequantize_iq3_s(data, out, grid):
    """ggml dequantize_row_iq3_s: data uint8[nrows, nb*110] -> out float32[nrows, nb*256]."""
    nrows = data.shape[0]
    nb = data.shape[1] // IQ3_S_BYTES
    for r in numba.prange(nrows):
        for i in range(nb):
            y = data[r, IQ3_S_BYTES * i:IQ3_S_BYTES * (i + 1)]
            o = out[r, QK_K * i:QK_K * (i + 1)]
            d = load_fp16(y, 0)
            for ib in range(8):
                sc = np.int32(y[106 + ib // 2])
                ls = (sc >> (4 * (ib % 2))) & 0xF
                db = d * F32(1 + 2 * ls)
                qh = np.int32(y[66 + ib])
                for l in range(4):
                    g1 = np.int32(y[2 + 8 * ib + 2 * l]) | ((qh << (8 - 2 * l)) & 256)
                    g2 = np.int32(y[2 + 8 * ib + 2 * l + 1]) | ((qh << (7 - 2 * l)) & 256)
                    sg = y[74 + 4 * ib + l]
                    base = 32 * ib + 8 * l
                    for j in range(4):
                        o[base + j] = _signed(db * grid[g1, j], (sg >> j) & 1)
                        o[base + 4 + j] = _signed(db * grid[g2, j], (sg >> (j + 4)) & 1)


_WHY = {_NO_NEIGHBOUR: "no grid neighbour at a finite distance (ggml: GGML_ASSERT(grid_index >= 0))",
        _BAD_SCALE: "a NaN block scale (ggml: GGML_ASSERT(scale >= 0))"}


def _raise_on(status, name):
    bad = np.flatnonzero(status)
    if bad.size:
        r = int(bad[0])
        raise QuantError(f"{name}: row {r} cannot be quantized, {_WHY[int(status[r])]}; "
                         f"values this large overflow the search (ggml aborts the process)")


def quantize_iq3_xxs(rows, weights, out):
    """ggml quantize_iq3_xxs: rows float32[nrows, n], weights float32[n] or [0] -> out uint8[nrows, n/256*98]."""
    status = np.zeros(rows.shape[0], np.int32)
    _quantize_iq3_xxs(rows, weights, out, GRID_256_F32, *neighbour_tables(256), status)
    _raise_on(status, "IQ3_XXS")


def dequantize_iq3_xxs(data, out):
    """ggml dequantize_row_iq3_xxs: data uint8[nrows, nb*98] -> out float32[nrows, nb*256]."""
    _dequantize_iq3_xxs(data, out, DQ_GRID_XXS, KSIGNS)


def quantize_iq3_s(rows, weights, out):
    """ggml quantize_iq3_s: rows float32[nrows, n], weights float32[n] or [0] -> out uint8[nrows, n/256*110]."""
    status = np.zeros(rows.shape[0], np.int32)
    _quantize_iq3_s(rows, weights, out, GRID_512_F32, *neighbour_tables(512), status)
    _raise_on(status, "IQ3_S")


def dequantize_iq3_s(data, out):
    """ggml dequantize_row_iq3_s: data uint8[nrows, nb*110] -> out float32[nrows, nb*256]."""
    _dequantize_iq3_s(data, out, DQ_GRID_S)
