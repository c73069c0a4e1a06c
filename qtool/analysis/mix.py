"""Size-targeted mixes: a type per tensor that minimises the predicted error under a byte budget.

The measure. Each tensor ``t`` that the mix decides is quantized in memory to each candidate type (after
llama.cpp's fallback for rows that do not fit, with the importance vector the real conversion would use),
dequantized, and compared with the original ``x``::

    rel_mse(t, type) = sum_ij w_j (q_ij - x_ij)^2 / sum_ij w_j x_ij^2

with ``w`` the imatrix entry of the tensor (per column, per expert) where ``--imatrix`` gives one, else 1
(then ``rel_mse`` is what-if's ``rel_rmse`` squared). The predicted error of a plan is the element-weighted
mean ``sum_t n_t rel_mse(t) / sum_t n_t`` over the tensors measured: every weight counts the same, and a
tensor's scale does not. One tensor is in memory at a time (plus one candidate's bytes).

The search is a multiple-choice knapsack: one option per tensor, costs in bytes, a total budget. Two
solutions are made and the better kept (ties: the first):

1. Greedy on each tensor's lower convex hull of (bytes, error): start every tensor at its cheapest option
   and repeatedly take the upgrade with the largest error decrease per byte that still fits (the
   Lagrangian relaxation's solution path; ties by tensor name, so the result is deterministic).
2. Dynamic programming on a grid: each option's extra bytes over the tensor's cheapest are rounded up to a
   unit of slack/R bytes, R = 32768 cells (fewer beyond 2048 tensors), so the answer always fits, and the
   grid problem is solved exactly. Where the slack is under R bytes the unit is one byte: the exact optimum.

After each, a local exchange: while any move lowers the total error and fits, apply the best one, where a
move is one tensor changing to any of its options or two tensors changing at once (one may get smaller to
pay for the other); this spends what the hull steps or the rounding left.

Costs count what the budget counts: for ``--target-size``, the whole file (the header and metadata, and
every tensor's bytes padded to the file's alignment, as the writer lays them out); for ``--target-bpw``,
tensor bytes over all elements, as `qtool convert` reports bits per weight.
"""

from __future__ import annotations

import bisect
import heapq
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from gguf import GGMLQuantizationType as T

from qtool.errors import QtoolError, UsageError

#: decimal and binary size units for --target-size (case-insensitive)
SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}

#: the default candidate pool: the K and IQ types, and Q8_0 as the step above Q6_K
POOL = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS,
        T.IQ3_S, T.IQ4_XS, T.IQ4_NL, T.Q8_0)

#: the file must land at most this fraction under the budget
TOLERANCE = 0.005


@dataclass(frozen=True)
class Target:
    kind: str      # "size" (whole file, bytes) or "bpw" (tensor bits per weight)
    value: float   # bytes, or bits per weight
    text: str      # as the user wrote it
    #: how the error is weighed beyond the proxy: a Calibration (--calibrate-text), or None
    calibration: Any = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return f"target-{self.kind}: {self.text}"


def parse_size(text: str) -> int:
    """``3.5GB`` (decimal), ``3.5GiB`` (binary), ``900MB``, ``1048576B`` -> bytes. A unit is required."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]+)\s*", text)
    unit = m.group(2).upper() if m else None
    if m is None or unit not in SIZE_UNITS:
        raise UsageError(f"--target-size {text!r}: expected a number and a unit (B, KB, MB, GB, TB decimal; "
                         f"KiB, MiB, GiB, TiB binary), e.g. 3.5GB")
    n = float(m.group(1)) * SIZE_UNITS[unit]
    if not math.isfinite(n) or n < 1:
        raise UsageError(f"--target-size {text!r} is not a positive size")
    return int(n)


def parse_target(bpw: float | None, size: str | None) -> Target | None:
    if bpw is not None and size is not None:
        raise UsageError("--target-bpw and --target-size exclude each other; give one")
    if size is not None:
        return Target("size", float(parse_size(size)), size.strip())
    if bpw is not None:
        if not (math.isfinite(bpw) and bpw > 0):
            raise UsageError(f"--target-bpw {bpw} is not a positive number of bits per weight")
        return Target("bpw", float(bpw), f"{bpw:g}")
    return None


def parse_candidates(spec: str) -> list:
    """``Q3_K,Q4_K,...`` -> ggml types qtool can quantize to (UsageError naming the others)."""
    from qtool.formats.ggml_types import ggml_type_named
    from qtool.quantizers import registered
    from qtool.quantizers.presets import is_quantized

    reg = registered()
    out = []
    for raw in spec.split(","):
        name = raw.strip().upper()
        if not name:
            continue
        try:
            t = ggml_type_named(name)
        except KeyError:
            raise UsageError(f"--candidates: unknown ggml type {raw.strip()!r}") from None
        if t not in reg or t == T.Q8_K:
            raise UsageError(f"--candidates: qtool cannot quantize to {t.name} "
                             f"(`qtool types` lists what it can)")
        if not is_quantized(t) and t not in (T.F16, T.BF16, T.F32):
            raise UsageError(f"--candidates: {t.name} is not a storage type")
        if t not in out:
            out.append(t)
    if not out:
        raise UsageError("--candidates needs at least one type, e.g. --candidates Q3_K,Q4_K,Q5_K,Q6_K")
    return out


def _needs_imatrix(qtype) -> bool:
    from qtool.plan import tensor_requires_imatrix
    from qtool.quantizers import registered

    return registered()[qtype].requires_imatrix or tensor_requires_imatrix("blk.0.ffn_up.weight", qtype, "Q8_0")


def default_candidates(bpw: float, has_imatrix: bool) -> list:
    """The pool's types (those needing an importance matrix only with one) between 0.6x and 1.6x the target
    bits per weight, and at least the nearest type below and above it; cheapest first."""
    from qtool.quantizers import registered

    reg = registered()
    pool = [t for t in POOL if t in reg and (has_imatrix or not _needs_imatrix(t))]
    pool.sort(key=lambda t: (reg[t].bits_per_weight, t.name))
    bits = {t: reg[t].bits_per_weight for t in pool}
    chosen = [t for t in pool if 0.6 * bpw <= bits[t] <= 1.6 * bpw]
    below = [t for t in pool if bits[t] <= bpw]
    above = [t for t in pool if bits[t] >= bpw]
    for extra in (below[-1:] or pool[:1]) + (above[:1] or pool[-1:]):
        if extra not in chosen:
            chosen.append(extra)
    return sorted(chosen, key=lambda t: (bits[t], t.name))


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def rel_mse(q: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None) -> float:
    """sum w (q - x)^2 / sum w x^2 over the tensor, in float64, a row chunk at a time in a fixed order (the
    same figure for any thread count); ``weights`` per column (``n_per_row``, or ``n_expert * n_per_row``
    for a 3-D tensor) or None for 1 (then it is what-if's rel_rmse squared)."""
    n = x.shape[-1]
    xr = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, n)
    qr = np.ascontiguousarray(q, dtype=np.float32).reshape(-1, n)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1, n)
    rows_per = xr.shape[0] // w.shape[0] if w is not None else 0
    num = den = 0.0
    step = max(1, (1 << 20) // n)  # a fixed order of summation, whatever the thread count
    for start in range(0, xr.shape[0], step):
        stop = min(start + step, xr.shape[0])
        xs = xr[start:stop].astype(np.float64)
        d = qr[start:stop].astype(np.float64) - xs
        if w is None:
            num += float(np.sum(d * d))
            den += float(np.sum(xs * xs))
        elif w.shape[0] == 1:
            ws = w[0]
            num += float(np.dot(d * d, ws).sum())
            den += float(np.dot(xs * xs, ws).sum())
        else:
            for r0 in range(start, stop):  # experts: rows_per rows each share one vector
                ws = w[r0 // rows_per]
                num += float(np.dot(d[r0 - start] ** 2, ws))
                den += float(np.dot(xs[r0 - start] ** 2, ws))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


@dataclass
class Option:
    qtype: Any          # the candidate as asked
    effective: Any      # what is written: the candidate, or llama.cpp's fallback for it
    nbytes: int         # tensor bytes
    cost: int           # bytes as the budget counts them
    rel_mse: float
    error: float        # n_elements * rel_mse: this tensor's share of the objective


@dataclass
class MixTensor:
    name: str
    shape: tuple[int, ...]
    n_elements: int
    options: list[Option]
    choice: int = 0
    #: candidates left out for this tensor, and why
    excluded: dict[str, str] = field(default_factory=dict)
    #: types measured for scoring other plans (Mix.error_of), not offered to the search
    extra: list[Option] = field(default_factory=list)

    @property
    def chosen(self) -> Option:
        return self.options[self.choice]


def measure_tensor(x: np.ndarray, name: str, types: Sequence, weights: np.ndarray | None,
                   threads: int | None = None) -> dict:
    """rel_mse of ``x`` quantized to each of ``types`` (qtool's kernels, with ``weights`` as the importance
    vector where the type reads one) -> {type: rel_mse}."""
    from qtool.quantizers import get

    out = {}
    for t in types:
        q = get(t)
        if t == T.F32:
            out[t] = 0.0
            continue
        data = q.quantize(x, weights if q.uses_imatrix else None, name=name, threads=threads)
        back = q.dequantize(data, name=name, threads=threads)
        out[t] = rel_mse(back, x, weights)
        del data, back
    return out


# --------------------------------------------------------------------------------------------------
# KL calibration of the per-class error weights
# --------------------------------------------------------------------------------------------------


def tensor_class(name: str) -> str:
    """The tensor class a calibration weighs: ``attn_q`` for ``blk.3.attn_q.weight``, ``token_embd`` for
    ``token_embd.weight``."""
    n = re.sub(r"^blk\.\d+\.", "", name)
    return n[: -len(".weight")] if n.endswith(".weight") else n


@dataclass
class ClassKL:
    name: str            # the class (attn_q, ffn_down, token_embd ...)
    tensors: int
    elements: int
    kld_mean: float      # measured, nats: this class alone at the calibration type, the rest unquantized
    proxy_error: float   # sum over its tensors of n_elements * rel_mse at the calibration type
    weight: float        # the factor on this class's errors in the mix's objective


@dataclass
class Calibration:
    """``--calibrate-text``: a weight per tensor class from measured KL divergence.

    For each class of the tensors the mix decides (in plan order of first appearance), a model is written
    with that class's tensors at the calibration type (``qtype``; default: the cheapest candidate that needs
    no importance matrix) and every other quantizable tensor unquantized (F32), and its mean KL divergence
    against the unquantized model on ``text`` is measured (``measure``: supplied by the caller, which writes
    and runs the models). With ``E_c`` the class's proxy error at that type (``sum n_t * rel_mse_t``) and
    ``K_c`` its KL divergence, the class's weight is ``K_c / E_c``, scaled by ``sum E / sum K`` over the
    classes so that the weights keep the proxy's scale (at the calibration type, the weighted and the plain
    proxy errors add up to the same). Every option's error of the class is multiplied by it: the objective
    becomes the classes' predicted KL divergences, added up. A class whose KL divergence measures 0 gets a
    weight of 1e-9 of the largest (positive, so the search still orders its options).
    """
    text: str
    measure: Callable[[str, dict[str, Any]], float]  # (class, {tensor: type}) -> mean KL divergence, nats
    qtype: Any = None
    ctx: int = 512
    chosen_type: Any = None
    classes: list[ClassKL] = field(default_factory=list)

    def pick_type(self, cands: Sequence) -> Any:
        from qtool.quantizers import registered

        if self.qtype is not None:
            return self.qtype
        reg = registered()
        plain = [t for t in cands if not _needs_imatrix(t)] or list(cands)
        return min(plain, key=lambda t: (reg[t].bits_per_weight, t.name))

    def apply(self, tensors: list[MixTensor], low_of: Callable[[MixTensor], Any]) -> None:
        """Measure each class, set the weights and multiply every option's error by its class's weight.
        ``low_of(tensor)`` is the type written for the calibration type there (llama.cpp's fallback)."""
        groups: dict[str, list[MixTensor]] = {}
        for t in tensors:
            groups.setdefault(tensor_class(t.name), []).append(t)
        raw: list[tuple[str, list[MixTensor], float, float]] = []
        for cls, members in groups.items():
            types, proxy = {}, 0.0
            for t in members:
                eff = low_of(t)
                opt = next((o for o in t.options + t.extra if o.effective == eff), None)
                if opt is None:  # the type cannot go there (needs an imatrix entry): its cheapest option
                    opt = min(t.options, key=lambda o: (o.cost, o.error, o.effective.name))
                types[t.name] = opt.effective
                proxy += opt.error
            kld = float(self.measure(cls, types))
            if not math.isfinite(kld) or kld < 0:
                raise QtoolError(f"--calibrate-text: {cls} measured a KL divergence of {kld}")
            raw.append((cls, members, kld, proxy))
        total_e = sum(e for _, _, k, e in raw if e > 0)
        total_k = sum(k for _, _, k, e in raw if e > 0)
        scale = total_e / total_k if total_k > 0 else 1.0
        ratios = {cls: (k / e if e > 0 else None) for cls, _, k, e in raw}
        top = max([r for r in ratios.values() if r], default=1.0)
        self.classes = []
        for cls, members, kld, proxy in raw:
            r = ratios[cls]
            w = 1.0 if r is None else max(r, 1e-9 * top) * scale
            for t in members:
                for o in t.options + t.extra:
                    o.error *= w
            self.classes.append(ClassKL(cls, len(members), sum(t.n_elements for t in members), kld, proxy, w))

    def document(self) -> dict:
        return {"type": self.chosen_type.name if self.chosen_type is not None else None, "text": str(self.text),
                "ctx": self.ctx,
                "classes": [{"class": c.name, "tensors": c.tensors, "n_elements": c.elements,
                             "kld_mean": c.kld_mean, "proxy_error": c.proxy_error, "weight": c.weight}
                            for c in self.classes]}


# --------------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------------


def _hull(opts: list[Option]) -> list[int]:
    """Indices (into ``opts``, sorted by cost) of the lower convex hull of (cost, error), cheapest first,
    each strictly better than the one before."""
    front: list[int] = []
    for i, o in enumerate(opts):
        if front and o.error >= opts[front[-1]].error:
            continue
        if front and o.cost == opts[front[-1]].cost:
            front.pop()
        front.append(i)
    hull: list[int] = []
    for i in front:
        while len(hull) >= 2:
            a, b = opts[hull[-2]], opts[hull[-1]]
            c = opts[i]
            # b lies on or above the segment a-c: drop it
            if (a.error - b.error) * (c.cost - a.cost) <= (a.error - c.error) * (b.cost - a.cost):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def search(tensors: list[MixTensor], budget: int) -> int:
    """Choose one option per tensor (sets ``choice``) with total cost <= ``budget``, minimising the total
    error; returns the total cost. ``budget`` below the cheapest choice raises ValueError."""
    for t in tensors:
        t.options.sort(key=lambda o: (o.cost, o.error, o.effective.name))
        t.choice = 0
    total = sum(t.options[0].cost for t in tensors)
    if total > budget:
        raise ValueError(total)
    slack = budget - total

    _greedy(tensors, slack)
    _exchange(tensors, budget - sum(t.chosen.cost for t in tensors))
    by_greedy = ([t.choice for t in tensors], sum(t.chosen.error for t in tensors))
    _dp(tensors, slack)
    _exchange(tensors, budget - sum(t.chosen.cost for t in tensors))
    if by_greedy[1] <= sum(t.chosen.error for t in tensors):
        for t, j in zip(tensors, by_greedy[0]):
            t.choice = j
    return sum(t.chosen.cost for t in tensors)


def _greedy(tensors: list[MixTensor], slack: int) -> None:
    """From the cheapest options, the steepest convex-hull upgrades that fit ``slack``, one at a time."""
    hulls = [_hull(t.options) for t in tensors]
    pos = [0] * len(tensors)
    heap: list[tuple[float, str, int]] = []

    def push(i: int) -> None:
        h = hulls[i]
        if pos[i] + 1 < len(h):
            a, b = tensors[i].options[h[pos[i]]], tensors[i].options[h[pos[i] + 1]]
            heapq.heappush(heap, (-(a.error - b.error) / (b.cost - a.cost), tensors[i].name, i))

    for i in range(len(tensors)):
        tensors[i].choice = hulls[i][0]
        push(i)
    while heap:
        _, _, i = heapq.heappop(heap)
        h, t = hulls[i], tensors[i]
        step = t.options[h[pos[i] + 1]].cost - t.options[h[pos[i]]].cost
        if step <= slack:
            slack -= step
            pos[i] += 1
            t.choice = h[pos[i]]
            push(i)


def _exchange(tensors: list[MixTensor], slack: int) -> None:
    """While a single or paired move fits ``slack`` and lowers the total error, apply the best one."""
    for _ in range(50 * len(tensors) + 50):
        move = _best_move(tensors, slack)
        if move is None:
            break
        for i, j in move:
            slack -= tensors[i].options[j].cost - tensors[i].chosen.cost
            tensors[i].choice = j


def _dp(tensors: list[MixTensor], slack: int, cells: int = 1 << 26) -> None:
    """The knapsack solved exactly on a grid: each option's extra cost over the tensor's cheapest is
    rounded up to a unit of slack/R bytes (R up to 32768 cells, fewer for very many tensors), so the
    answer always fits; it is optimal on the grid, and the exchange that follows spends what rounding left."""
    n = len(tensors)
    cells_per = max(256, min(1 << 15, cells // max(n, 1)))
    unit = max(1, -(-slack // cells_per))
    size = slack // unit
    best = np.zeros(size + 1)  # best[s]: least extra error with at most s units spent
    choices = np.zeros((n, size + 1), dtype=np.int16)
    steps = []
    for i, t in enumerate(tensors):
        base = t.options[0]
        dc = [-(-(o.cost - base.cost) // unit) for o in t.options]
        steps.append(dc)
        new = best.copy()
        for j in range(1, len(t.options)):
            c = dc[j]
            if c > size:
                continue
            cand = np.full(size + 1, np.inf)
            cand[c:] = best[: size + 1 - c] + (t.options[j].error - base.error)
            better = cand < new
            new[better] = cand[better]
            choices[i, better] = j
        best = new
    s = size
    for i in range(n - 1, -1, -1):
        j = int(choices[i, s])
        tensors[i].choice = j
        s -= steps[i][j]


def _best_move(tensors: list[MixTensor], slack: int) -> list[tuple[int, int]] | None:
    """The move that lowers the total error most and fits ``slack``: one tensor to another option, or two
    tensors at once. Ties go to the smaller (tensor name, type name) keys."""
    moves = []  # (dcost, derror, tensor name, type name, tensor index, option index)
    for i, t in enumerate(tensors):
        cur = t.chosen
        for j, o in enumerate(t.options):
            if j != t.choice:
                moves.append((o.cost - cur.cost, o.error - cur.error, t.name, o.effective.name, i, j))
    best: tuple | None = None  # (derror, keys, [(i, j), ...])
    for dc, de, name, tn, i, j in moves:
        if dc <= slack and de < 0 and (best is None or (de, ((name, tn),)) < best[:2]):
            best = (de, ((name, tn),), [(i, j)])
    # pairs: for each first move, the lowest-error second move on another tensor whose cost still fits
    moves.sort(key=lambda m: (m[0], m[1], m[2], m[3]))
    costs = [m[0] for m in moves]

    def better(a: int, b: int) -> bool:
        return b < 0 or (moves[a][1], moves[a][2], moves[a][3]) < (moves[b][1], moves[b][2], moves[b][3])

    # over each prefix moves[:k+1]: the best move (b1) and the best one on another tensor than b1's (b2)
    first, second = [], []
    b1 = b2 = -1
    for k, m in enumerate(moves):
        if better(k, b1):
            if b1 >= 0 and moves[b1][4] != m[4]:
                b2 = b1
            b1 = k
        elif m[4] != moves[b1][4] and better(k, b2):
            b2 = k
        first.append(b1)
        second.append(b2)
    for dc, de, name, tn, i, j in moves:
        k = bisect.bisect_right(costs, slack - dc) - 1
        if k < 0:
            continue
        other = first[k] if moves[first[k]][4] != i else second[k]
        if other < 0:
            continue
        m2 = moves[other]
        total = de + m2[1]
        if total < 0:
            keys = tuple(sorted([(name, tn), (m2[2], m2[3])]))
            if best is None or (total, keys) < best[:2]:
                best = (total, keys, [(i, j), (m2[4], m2[5])])
    return None if best is None else best[2]


# --------------------------------------------------------------------------------------------------
# The mix for a model
# --------------------------------------------------------------------------------------------------


@dataclass
class Mix:
    target: Target
    budget: int           # bytes, as the target counts them
    total: int            # bytes of the chosen mix, counted the same way
    fixed: int            # of which: what the mix does not decide (header, kept and pinned tensors)
    candidates: list
    weighted: bool        # imatrix-weighted measure
    tensors: list[MixTensor]
    #: the element-weighted rel_mse of the tensors the mix decides and of those pinned by explicit options
    pinned_error: float = 0.0
    pinned_elements: int = 0
    #: the per-class KL calibration applied to the errors (Calibration, with its results), or None
    calibration: Any = None

    @property
    def types(self) -> dict[str, tuple[Any, str]]:
        """The exact per-tensor map for PlanOptions.exact_types."""
        return {t.name: (t.chosen.qtype, f"{self.target.label} (rel_mse {t.chosen.rel_mse:.3g})")
                for t in self.tensors}

    @property
    def predicted_error(self) -> float:
        n = sum(t.n_elements for t in self.tensors) + self.pinned_elements
        return (sum(t.chosen.error for t in self.tensors) + self.pinned_error) / n if n else 0.0

    @property
    def measure(self) -> str:
        base = "imatrix-weighted rel_mse" if self.weighted else "rel_mse"
        return f"KL-calibrated {base}" if self.calibration is not None else base

    def error_of(self, types: Mapping[str, Any]) -> float | None:
        """The predicted error of another choice of types for the same tensors (a preset's plan, say),
        by the same measure; None where a type was not measured."""
        err = self.pinned_error
        for t in self.tensors:
            o = next((o for o in t.options + t.extra if o.effective == types.get(t.name)), None)
            if o is None:
                return None
            err += o.error
        n = sum(t.n_elements for t in self.tensors) + self.pinned_elements
        return err / n if n else 0.0

    def frontier(self, budgets: Sequence[int]) -> list[tuple[int, int, float] | None]:
        """(budget, bytes, predicted error) of the best mix at each of ``budgets`` (counted as this mix's
        budget is), from the same measurements: no tensor is quantized again. None where a budget is
        below the smallest mix."""
        saved = [t.choice for t in self.tensors]
        out: list[tuple[int, int, float] | None] = []
        try:
            for b in budgets:
                try:
                    total = self.fixed + search(self.tensors, int(b) - self.fixed)
                except ValueError:
                    out.append(None)
                    continue
                out.append((int(b), total, self.predicted_error))
        finally:
            for t, j in zip(self.tensors, saved):
                t.choice = j
        return out

    def document(self) -> dict:
        return {"target": self.target.kind, "value": self.target.value, "budget": self.budget,
                "bytes": self.total, "fixed_bytes": self.fixed,
                "under_budget_frac": (self.budget - self.total) / self.budget if self.budget else None,
                "predicted_error": self.predicted_error,
                "measure": self.measure,
                "candidates": [t.name for t in self.candidates],
                "calibration": self.calibration.document() if self.calibration is not None else None,
                "tensors": [{"name": t.name, "type": t.chosen.effective.name, "rel_mse": t.chosen.rel_mse,
                             "options": {o.effective.name: o.rel_mse for o in t.options}} for t in self.tensors]}


def make_mix(source, metadata: Mapping[str, Any], tensors: Sequence, options, target: Target, *,
             candidates: Sequence | None, imat, preset, header_bytes: int, alignment: int,
             threads: int | None = None, on_start: Callable[[int], None] | None = None,
             on_tensor: Callable[[str, int], None] | None = None, extra_types: Sequence = ()) -> Mix:
    """Measure and choose a mix for ``tensors`` (the planner's view of ``source``'s tensors).

    ``options`` are the plan options (explicit types pin tensors), ``preset`` the quantized preset whose
    rules place the others, ``header_bytes`` the file's data offset, ``alignment`` its tensor alignment.
    ``extra_types`` are measured too (not chosen), so that other plans can be scored by :meth:`Mix.error_of`.
    """
    from qtool import plan as planner
    from qtool.analysis.weights import load_floats
    from qtool.quantizers import registered

    reg = registered()
    free = planner.mixable(metadata, tensors, options)
    free_names = {t.name for t in free}
    base = planner.plan_model(preset, metadata, tensors, options)
    n_all = sum(int(np.prod(p.shape, dtype=np.int64)) for p in base)

    def pad(n: int) -> int:
        return -(-n // alignment) * alignment

    def cost(nbytes: int) -> int:
        return pad(nbytes) if target.kind == "size" else nbytes

    def nbytes(shape, qtype) -> int:
        from qtool.formats.ggml_types import QUANT_SIZES

        block, size = QUANT_SIZES[qtype]
        return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * size

    fixed_plans = [p for p in base if p.name not in free_names]
    fixed = (header_bytes if target.kind == "size" else 0) + sum(cost(nbytes(p.shape, p.qtype)) for p in fixed_plans)
    budget = int(target.value) if target.kind == "size" else int(math.floor(target.value * n_all / 8))
    n_free = sum(int(t.n_elements) for t in free)
    if not free:
        raise UsageError(f"{target.label}: no tensor is left for the mix to choose (all kept or named by options)")
    bpw_free = 8.0 * max(budget - fixed, 0) / n_free
    cands = list(candidates) if candidates else default_candidates(bpw_free, imat is not None)
    weighted = imat is not None
    calib = target.calibration
    if calib is not None:
        calib.chosen_type = calib.pick_type(cands)
        if calib.chosen_type not in cands and calib.chosen_type not in extra_types:
            extra_types = list(extra_types) + [calib.chosen_type]

    pinned = [p for p in fixed_plans if p.quantize]
    if on_start is not None:
        on_start(n_free * (len(cands) + len(extra_types)) + sum(int(np.prod(p.shape)) for p in pinned))
    result: list[MixTensor] = []
    for info in free:
        shape = tuple(int(d) for d in info.shape)
        weights = imat.for_tensor(info.name, shape) if imat is not None else None
        eff: dict = {}
        excluded: dict[str, str] = {}
        for c in list(cands) + [t for t in extra_types if t not in cands]:
            fb, why = planner._fallback(info.name, shape[-1], c)
            fb = planner.ggml_type(int(fb))
            needs = reg.get(fb) is not None and (reg[fb].requires_imatrix or
                                                  planner.tensor_requires_imatrix(info.name, fb, preset))
            if fb not in reg:
                excluded[c.name] = f"qtool cannot quantize {fb.name}"
            elif needs and weights is None:
                excluded[c.name] = "needs an importance matrix entry"
            else:
                eff.setdefault(fb, c)
        x = load_floats(source, info.name, threads=threads)
        try:
            errs = measure_tensor(x, info.name, list(eff), weights, threads)
        except QtoolError as e:
            raise type(e)(f"{target.label}: measuring {info.name}: {e}") from None
        n = int(info.n_elements)
        opts = []
        for fb, c in eff.items():
            if c not in cands:
                continue
            nb = nbytes(shape, fb)
            opts.append(Option(c, fb, nb, cost(nb), errs[fb], n * errs[fb]))
        extra = [Option(c, fb, nbytes(shape, fb), cost(nbytes(shape, fb)), errs[fb], n * errs[fb])
                 for fb, c in eff.items() if c not in cands]
        if not opts:
            raise UsageError(f"{target.label}: no candidate fits {info.name} "
                             f"({'; '.join(f'{k}: {v}' for k, v in excluded.items())})")
        result.append(MixTensor(info.name, shape, n, opts, 0, excluded, extra))
        del x
        source.release(info.name)
        if on_tensor is not None:
            on_tensor(info.name, n * (len(cands) + len(extra_types)))

    pinned_err = 0.0
    for p in pinned:  # tensors explicit options name: measured, not chosen
        x = load_floats(source, p.name, threads=threads)
        w = imat.for_tensor(p.name, p.shape) if imat is not None else None
        e = measure_tensor(x, p.name, [p.qtype], w, threads)[p.qtype]
        pinned_err += int(np.prod(p.shape)) * e
        del x
        source.release(p.name)
        if on_tensor is not None:
            on_tensor(p.name, int(np.prod(p.shape)))

    if calib is not None:
        low = calib.chosen_type

        def low_of(t: MixTensor):
            return planner.ggml_type(int(planner._fallback(t.name, t.shape[-1], low)[0]))

        calib.apply(result, low_of)
    try:
        total = fixed + search(result, budget - fixed)
    except ValueError:
        smallest = fixed + sum(min(o.cost for o in t.options) for t in result)
        raise UsageError(f"{target.label}: the budget ({_describe(budget, target)}) is below the smallest file "
                         f"these candidates make ({_describe(smallest, target)}: each tensor at its cheapest of "
                         f"{','.join(t.name for t in cands)}); raise the target or add cheaper --candidates") from None
    largest = fixed + sum(max(o.cost for o in t.options) for t in result)
    if total < budget * (1 - TOLERANCE) and largest < budget * (1 - TOLERANCE):
        raise UsageError(f"{target.label}: even the largest of the candidates ({','.join(t.name for t in cands)}) "
                         f"make only {_describe(largest, target)}, more than "
                         f"{100 * TOLERANCE:g}% under the budget ({_describe(budget, target)}); lower the "
                         f"target or add larger --candidates")
    return Mix(target, budget, total, fixed, cands, weighted, result, pinned_err,
               sum(int(np.prod(p.shape)) for p in pinned), calib)


def _describe(n: int, target: Target) -> str:
    if target.kind == "bpw":
        return f"{n} tensor bytes"
    return f"{n} bytes"


def preset_for(mix: Mix):
    """The preset whose general.file_type a mix file records when --type is not given: the one llama.cpp's
    loader would name a file made mostly (by elements) of the mix's most common type."""
    from qtool.quantizers.presets import _FTYPE_OF_TYPE, get_preset

    count: dict = {}
    for t in mix.tensors:
        count[t.chosen.effective] = count.get(t.chosen.effective, 0) + t.n_elements
    for qtype, _ in sorted(count.items(), key=lambda kv: (-kv[1], kv[0].name)):
        if int(qtype) in _FTYPE_OF_TYPE:
            return get_preset(str(int(_FTYPE_OF_TYPE[int(qtype)])))
    return get_preset("Q4_K_M")
