"""`qtool eval`: how far a quantized model's next-token distributions are from the original's.

Both models run in llama.cpp (:mod:`qtool.analysis.llama_runner`) over the same tokens. The conventions are
llama-perplexity's (``--kl-divergence``):

* the text is tokenized once, with the reference's vocabulary, BOS added as that vocabulary says; it is cut
  into non-overlapping windows of ``ctx`` tokens (a tail shorter than a window is left out);
* each window runs from an empty cache, its first token replaced by BOS where the vocabulary adds one;
* positions ``ctx//2 .. ctx-2`` of each window are scored (the logits at position j against token j+1), so
  every scored token has at least half a window of context: ``ctx - 1 - ctx//2`` positions per window.

At each scored position, in float64 from the float32 logits of both models: log-softmax ``lp`` (reference)
and ``lq`` (quantized); KL divergence ``sum(exp(lp) * (lp - lq))`` in nats; the negative log-likelihood of
the true next token under each (perplexity = exp of its mean); and whether the top token (argmax of the
logits, first index on ties) is the same. A *flip* is a position where it is not. Per window and over the
whole text: mean, median, 99th percentile (numpy's linear interpolation) and maximum of the KL divergence.

Saved reference logits (``--save-logits``) are a file of qtool's own format (:class:`LogitsWriter`), written as
the windows go. By default it holds the reference's raw float32 logits of every scored position (the
log-probabilities up to each row's logsumexp, which is recomputed in float64 when read), so figures computed
from it are the figures of a live run, bit for bit; that is ``4 * n_vocab`` bytes per scored position
(llama-perplexity stores 2 bytes per entry, quantized). With ``top_k`` it holds, per position, the k most
likely tokens and their float64 log-probabilities, the log of the probability left outside them and the true
token's log-probability: ``12 k + 16`` bytes. The KL divergence is then that of the two distributions over
k + 1 outcomes (the k tokens and "any other"), a lower bound of the full figure (the log-sum inequality) that
is close when k covers nearly all of the reference's mass; perplexities and flips are exact.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from qtool.analysis import gates
from qtool.errors import FormatError, UsageError

#: the figures of a window and of the whole text, as --json names them and --fail-if reads them
FIELDS = ("n_positions", "ppl_reference", "ppl_quant", "ppl_ratio", "kld_mean", "kld_median", "kld_p99",
          "kld_max", "top1_agreement", "flips")

MAGIC = b"QTLOGITS"
VERSION = 1
#: rows of logits turned into float64 at once (bounds the scratch memory to a few MB per array)
_ROWS = 32


# ----------------------------------------------------------------------------------------------
# the figures
# ----------------------------------------------------------------------------------------------

def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax of each row."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@dataclass
class Scores:
    """Per scored position: KL divergence, both negative log-likelihoods, top token agreement."""
    kld: np.ndarray
    nll_reference: np.ndarray
    nll_quant: np.ndarray
    same_top: np.ndarray  # bool

    @staticmethod
    def concat(parts: list["Scores"]) -> "Scores":
        return Scores(*(np.concatenate([getattr(p, f) for p in parts]) if parts else np.zeros(0)
                        for f in ("kld", "nll_reference", "nll_quant", "same_top")))


def figures(s: Scores) -> dict[str, float | int | None]:
    """The figures of FIELDS over the positions of ``s`` (None where undefined: no positions)."""
    n = int(s.kld.size)
    if n == 0:
        return {k: (0 if k in ("n_positions", "flips") else None) for k in FIELDS}
    ppl_r = math.exp(float(np.mean(s.nll_reference)))
    ppl_q = math.exp(float(np.mean(s.nll_quant)))
    same = int(np.count_nonzero(s.same_top))
    return {
        "n_positions": n,
        "ppl_reference": ppl_r,
        "ppl_quant": ppl_q,
        "ppl_ratio": ppl_q / ppl_r,
        "kld_mean": float(np.mean(s.kld)),
        "kld_median": float(np.median(s.kld)),
        "kld_p99": float(np.percentile(s.kld, 99)),
        "kld_max": float(np.max(s.kld)),
        "top1_agreement": same / n,
        "flips": n - same,
    }


def score_full(ref_logits: np.ndarray, quant_logits: np.ndarray, targets: np.ndarray) -> Scores:
    """Scores from both models' float32 logits ``[n, n_vocab]`` and the true next tokens ``[n]``."""
    parts = []
    for a in range(0, len(targets), _ROWS):
        r, q, t = ref_logits[a:a + _ROWS], quant_logits[a:a + _ROWS], targets[a:a + _ROWS]
        lp, lq = log_softmax(r), log_softmax(q)
        rows = np.arange(len(t))
        kld = np.sum(np.exp(lp) * (lp - lq), axis=1)
        parts.append(Scores(kld, -lp[rows, t], -lq[rows, t], np.argmax(r, axis=1) == np.argmax(q, axis=1)))
    return Scores.concat(parts)


@dataclass
class TopK:
    """A reference window kept as its k most likely tokens per position (see the module docstring)."""
    ids: np.ndarray       # int32 [n, k], most likely first
    logp: np.ndarray      # float64 [n, k]
    log_tail: np.ndarray  # float64 [n]: log of the probability of all other tokens (-inf when none is left)
    nll: np.ndarray       # float64 [n]: -log p(true next token)

    @staticmethod
    def of(ref_logits: np.ndarray, targets: np.ndarray, k: int) -> "TopK":
        parts = []
        for a in range(0, len(targets), _ROWS):
            r, t = ref_logits[a:a + _ROWS], targets[a:a + _ROWS]
            lp = log_softmax(r)
            rows = np.arange(len(t))
            # the k largest logits, largest first, lowest index first among equals (as argmax)
            ids = np.argsort(-r, axis=1, kind="stable")[:, :k].astype(np.int32)
            mask = np.ones(lp.shape, dtype=bool)
            mask[rows[:, None], ids] = False
            with np.errstate(divide="ignore"):
                tail = np.log(np.where(mask, np.exp(lp), 0.0).sum(axis=1))
            parts.append((ids, lp[rows[:, None], ids], tail, -lp[rows, t]))
        return TopK(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def score_topk(ref: TopK, quant_logits: np.ndarray, targets: np.ndarray) -> Scores:
    """Scores of the quantized model's float32 logits against a top-k reference."""
    parts = []
    for a in range(0, len(targets), _ROWS):
        sl = slice(a, a + _ROWS)
        q, t, ids = quant_logits[sl], targets[sl], ref.ids[sl]
        lq = log_softmax(q)
        rows = np.arange(len(t))
        lp = ref.logp[sl]
        lq_k = lq[rows[:, None], ids]
        mask = np.ones(lq.shape, dtype=bool)
        mask[rows[:, None], ids] = False
        q_tail = np.where(mask, np.exp(lq), 0.0).sum(axis=1)
        p_tail_log = ref.log_tail[sl]
        p_tail = np.exp(p_tail_log)
        with np.errstate(divide="ignore", invalid="ignore"):
            tail_term = np.where(p_tail > 0, p_tail * (p_tail_log - np.log(q_tail)), 0.0)
        kld = np.sum(np.exp(lp) * (lp - lq_k), axis=1) + tail_term
        parts.append(Scores(kld, ref.nll[sl], -lq[rows, t], ids[:, 0] == np.argmax(q, axis=1)))
    return Scores.concat(parts)


# ----------------------------------------------------------------------------------------------
# the saved-logits file
# ----------------------------------------------------------------------------------------------
#
#   MAGIC (8 bytes) | u32 version | u32 header length | header (JSON, UTF-8)
#   int32 tokens [n_windows * ctx]              the windows' tokens as tokenized (before BOS substitution)
#   per window, in order:
#     top_k == 0:  float32 logits [n_scored, n_vocab]
#     top_k  > 0:  int32 ids [n_scored, k] | float64 logp [n_scored, k] | float64 log_tail [n_scored]
#                  | float64 nll [n_scored]
#   all little-endian.


@dataclass
class LogitsHeader:
    model: str
    n_vocab: int
    vocab: str          # the reference vocabulary's fingerprint (llama_runner.LlamaModel.vocab_fingerprint)
    add_bos: bool
    bos: int
    ctx: int
    first: int
    n_windows: int
    top_k: int
    text_tokens: int    # the whole text's token count (the windows may leave a tail out)

    @property
    def n_scored(self) -> int:
        return self.ctx - 1 - self.first

    def window_bytes(self) -> int:
        if self.top_k == 0:
            return 4 * self.n_scored * self.n_vocab
        return self.n_scored * (12 * self.top_k + 16)


class LogitsWriter:
    """Writes a saved-logits file window by window, to a temporary file renamed into place by :meth:`commit`
    (an error or Ctrl-C leaves no partial file)."""

    def __init__(self, path: Path, header: LogitsHeader, tokens: np.ndarray):
        self.path = Path(path)
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise UsageError(f"--save-logits {self.path}: no folder {folder}")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
        self._tmp = Path(tmp)
        self._f = os.fdopen(fd, "wb")
        self.header = header
        head = json.dumps({"format": "qtool-logits", **header.__dict__}).encode()
        self._f.write(MAGIC + struct.pack("<II", VERSION, len(head)) + head)
        self._f.write(np.ascontiguousarray(tokens, dtype="<i4").tobytes())

    def write_full(self, logits: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(logits, dtype="<f4").tobytes())

    def write_topk(self, t: TopK) -> None:
        for a, dt in ((t.ids, "<i4"), (t.logp, "<f8"), (t.log_tail, "<f8"), (t.nll, "<f8")):
            self._f.write(np.ascontiguousarray(a, dtype=dt).tobytes())

    def commit(self) -> None:
        self._f.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp made it private; a saved file is an ordinary one
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        if not self._f.closed:
            self._f.close()
        self._tmp.unlink(missing_ok=True)


class LogitsReader:
    """A saved-logits file, read one window at a time (so that memory stays near one window)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._f = open(self.path, "rb")
            size = os.fstat(self._f.fileno()).st_size
            lead = self._f.read(16)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read it as saved logits ({e.strerror or e})") from None
        if len(lead) < 16 or lead[:8] != MAGIC:
            raise FormatError(f"{self.path}: not a qtool saved-logits file (written by qtool eval --save-logits)")
        version, n_head = struct.unpack("<II", lead[8:16])
        if version != VERSION:
            raise FormatError(f"{self.path}: saved-logits version {version}; this qtool reads version {VERSION}")
        try:
            if 16 + n_head > size:
                raise ValueError("header runs past the end of the file")
            doc = json.loads(self._f.read(n_head).decode())
            doc.pop("format")
            self.header = h = LogitsHeader(**doc)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
            raise FormatError(f"{self.path}: damaged saved-logits header ({e})") from None
        if h.ctx < 4 or not 0 < h.first < h.ctx - 1 or h.n_windows < 1 or h.n_vocab < 1 or h.top_k < 0:
            raise FormatError(f"{self.path}: damaged saved-logits header (ctx {h.ctx}, first {h.first}, "
                              f"{h.n_windows} windows, n_vocab {h.n_vocab}, top_k {h.top_k})")
        self._tokens_at = 16 + n_head
        self._data_at = self._tokens_at + 4 * h.n_windows * h.ctx
        expected = self._data_at + h.n_windows * h.window_bytes()
        if size != expected:
            raise FormatError(f"{self.path}: {size} bytes where its header says {expected} "
                              f"({h.n_windows} windows): truncated or damaged")

    def close(self) -> None:
        self._f.close()

    def _read(self, at: int, dtype: str, count: int) -> np.ndarray:
        self._f.seek(at)
        a = np.fromfile(self._f, dtype=dtype, count=count)
        if a.size != count:
            raise FormatError(f"{self.path}: truncated while reading")
        return a

    def tokens(self) -> np.ndarray:
        h = self.header
        t = self._read(self._tokens_at, "<i4", h.n_windows * h.ctx)
        if t.size and (t.min() < 0 or t.max() >= h.n_vocab):
            raise FormatError(f"{self.path}: a token id out of the vocabulary's range")
        return t

    def window(self, i: int) -> np.ndarray | TopK:
        h = self.header
        at, n = self._data_at + i * h.window_bytes(), h.n_scored
        if h.top_k == 0:
            return self._read(at, "<f4", n * h.n_vocab).reshape(n, h.n_vocab)
        k = h.top_k
        ids = self._read(at, "<i4", n * k).reshape(n, k)
        logp = self._read(at + 4 * n * k, "<f8", n * k).reshape(n, k)
        tail = self._read(at + 12 * n * k, "<f8", n)
        nll = self._read(at + 12 * n * k + 8 * n, "<f8", n)
        if ids.size and (ids.min() < 0 or ids.max() >= h.n_vocab):
            raise FormatError(f"{self.path}: window {i}: token id out of the vocabulary's range")
        return TopK(ids, logp, tail, nll)


def is_saved_logits(path: Path) -> bool:
    """True when ``path`` starts like a saved-logits file (whatever its name)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == MAGIC
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# the evaluation
# ----------------------------------------------------------------------------------------------

@dataclass
class EvalResult:
    quant: str
    reference: str
    reference_logits: str | None   # the saved-logits file read instead of running the reference
    text: str | None
    ctx: int
    first: int
    n_vocab: int
    text_tokens: int
    windows: list[dict] = field(default_factory=list)  # {"index", "start", **figures}
    summary: dict = field(default_factory=dict)
    saved_logits: str | None = None
    top_k: int = 0                 # of the saved logits used or written (0: full logits)
    notes: list[str] = field(default_factory=list)  # for people (stderr), not in the JSON document

    def document(self) -> dict:
        return {"quant": self.quant, "reference": self.reference, "reference_logits": self.reference_logits,
                "text": self.text, "ctx": self.ctx, "scored_from": self.first, "n_vocab": self.n_vocab,
                "text_tokens": self.text_tokens, "n_windows": len(self.windows), "top_k": self.top_k,
                "saved_logits": self.saved_logits, "windows": self.windows, "summary": self.summary}


def plan_windows(n_tokens: int, ctx: int, limit: int | None) -> int:
    n = n_tokens // ctx
    if n == 0:
        raise UsageError(f"the text is {n_tokens} tokens long: --ctx {ctx} needs at least {ctx} (one window); "
                         "give a longer text or a smaller --ctx")
    return n if limit is None else min(n, limit)


def window_tokens(tokens: np.ndarray, i: int, ctx: int, add_bos: bool, bos: int) -> np.ndarray:
    """The tokens the model runs for window ``i``: its slice, the first replaced by BOS where one is added."""
    w = np.array(tokens[i * ctx:(i + 1) * ctx], dtype=np.int32)
    if add_bos:
        w[0] = bos
    return w


def _text_bytes(text: Path) -> bytes:
    try:
        return Path(text).read_bytes()
    except OSError as e:
        raise UsageError(f"--text {text}: {e.strerror or e}") from None


def evaluate(quant: Path, reference: Path, text: Path | None, *, ctx: int | None, threads: int,
             max_windows: int | None = None, save_logits: Path | None = None, top_k: int = 0,
             on_start: Callable[[int], None] = lambda n: None,
             on_window: Callable[[int], None] = lambda i: None) -> EvalResult:
    """Run QUANT (and REFERENCE, unless it is a saved-logits file) window by window; see the module doc."""
    from qtool.analysis.llama_runner import load_llama

    load_llama()  # the one-line install hint before anything else is read
    for p, what in ((quant, "QUANT"), (reference, "--reference")):
        if not Path(p).is_file():
            raise UsageError(f"{what} {p}: no such file")
    saved = LogitsReader(reference) if is_saved_logits(reference) else None
    if saved is None and text is None:
        raise UsageError("--text FILE is needed (the reference runs on it); only a saved-logits --reference "
                         "carries its own tokens")
    if saved is not None and save_logits is not None:
        raise UsageError("--save-logits: the reference is already a saved-logits file")
    if top_k < 0:
        raise UsageError(f"--top-k {top_k}: expected a positive count")
    if top_k and save_logits is None:
        raise UsageError("--top-k sets what --save-logits stores; it needs --save-logits")
    if saved is not None:
        h = saved.header
        if ctx is not None and ctx != h.ctx:
            raise UsageError(f"--ctx {ctx}: {reference} was saved with windows of {h.ctx} tokens")
        ctx = h.ctx
    ctx = 512 if ctx is None else ctx
    if ctx < 4:
        raise UsageError(f"--ctx {ctx}: a window needs at least 4 tokens")
    if max_windows is not None and max_windows < 1:
        raise UsageError(f"--windows {max_windows}: expected at least 1")
    first = ctx // 2
    if save_logits is not None:
        for p in (quant, reference, text):
            if p is not None and Path(save_logits).exists() and Path(save_logits).samefile(p):
                raise UsageError(f"--save-logits {save_logits} is an input of this run; qtool never writes "
                                 "over its input")
    try:
        result = _evaluate(quant, reference, text, saved, ctx, first, threads, max_windows, save_logits, top_k,
                           on_start, on_window)
    finally:
        if saved is not None:
            saved.close()
    result.quant, result.reference = str(quant), str(reference)
    result.reference_logits = str(reference) if saved is not None else None
    result.text = None if text is None else str(text)
    result.saved_logits = None if save_logits is None else str(save_logits)
    return result


def _evaluate(quant, reference, text, saved, ctx, first, threads, max_windows, save_logits, top_k, on_start,
              on_window) -> EvalResult:
    from qtool.analysis.llama_runner import LlamaModel

    with LlamaModel(quant, n_ctx=ctx, threads=threads) as qm:
        if saved is None:
            with LlamaModel(reference, n_ctx=ctx, threads=threads) as rm:
                if top_k >= rm.n_vocab:
                    raise UsageError(f"--top-k {top_k}: the vocabulary has {rm.n_vocab} tokens; save full logits "
                                     "(no --top-k) instead")
                fingerprint = rm.vocab_fingerprint()
                _same_vocab(rm, qm, fingerprint, reference, quant)
                tokens = rm.tokenize(_text_bytes(text))
                n_win = plan_windows(len(tokens), ctx, max_windows)
                header = LogitsHeader(model=Path(reference).name, n_vocab=rm.n_vocab, vocab=fingerprint,
                                      add_bos=rm.add_bos, bos=rm.bos, ctx=ctx, first=first, n_windows=n_win,
                                      top_k=int(top_k), text_tokens=len(tokens))
                writer = LogitsWriter(save_logits, header, tokens[:n_win * ctx]) if save_logits else None
                try:
                    result = _run(qm, lambda i, w: rm.window_logits(w, first, ctx - 1), tokens, header, writer,
                                  on_start, on_window)
                    if writer is not None:
                        writer.commit()
                except BaseException:
                    if writer is not None:
                        writer.discard()
                    raise
        else:
            h = saved.header
            _same_vocab_saved(qm, h, reference, quant)
            tokens = saved.tokens()
            if text is not None:
                mine = qm.tokenize(_text_bytes(text))
                if len(mine) != h.text_tokens or not np.array_equal(mine[:len(tokens)], tokens):
                    raise UsageError(f"--text {text} is not the text {reference} was saved from "
                                     "(its tokens differ); leave --text out to use the saved tokens")
            n_win = h.n_windows if max_windows is None else min(h.n_windows, max_windows)
            header = LogitsHeader(**{**h.__dict__, "n_windows": n_win})
            result = _run(qm, lambda i, w: saved.window(i), tokens, header, None, on_start, on_window)
        if 0 < qm.n_ctx_train < ctx:
            result.notes.append(f"note: --ctx {ctx} is longer than the context {quant} was trained for "
                                f"({qm.n_ctx_train} tokens)")
    return result


def _run(qm, reference_window, tokens, h: LogitsHeader, writer: LogitsWriter | None, on_start,
         on_window) -> EvalResult:
    ctx, first = h.ctx, h.first
    on_start(h.n_windows)
    result = EvalResult(quant="", reference="", reference_logits=None, text=None, ctx=ctx, first=first,
                        n_vocab=h.n_vocab, text_tokens=h.text_tokens, top_k=h.top_k)
    parts = []
    for i in range(h.n_windows):
        w = window_tokens(tokens, i, ctx, h.add_bos, h.bos)
        targets = np.asarray(tokens[i * ctx + first + 1:(i + 1) * ctx], dtype=np.int64)
        ref = reference_window(i, w)
        q = qm.window_logits(w, first, ctx - 1)
        # a live run scores the full logits (exact) whatever it saves; a top-k file is scored as top-k
        s = score_topk(ref, q, targets) if isinstance(ref, TopK) else score_full(ref, q, targets)
        if writer is not None:
            if h.top_k:
                writer.write_topk(TopK.of(ref, targets, h.top_k))
            else:
                writer.write_full(ref)
        parts.append(s)
        result.windows.append({"index": i, "start": i * ctx, **figures(s)})
        on_window(i)
    result.summary = figures(Scores.concat(parts))
    return result


def _same_vocab(rm, qm, fingerprint: str, reference: Path, quant: Path) -> None:
    if rm.n_vocab != qm.n_vocab:
        raise UsageError(f"{quant} has {qm.n_vocab} tokens in its vocabulary, {reference} {rm.n_vocab}: "
                         "the models must share one vocabulary to be compared")
    if qm.vocab_fingerprint() != fingerprint:
        raise UsageError(f"{quant} and {reference} have different vocabularies (same size, other tokens): "
                         "the models must share one vocabulary to be compared")


def _same_vocab_saved(qm, h: LogitsHeader, reference: Path, quant: Path) -> None:
    if qm.n_vocab != h.n_vocab:
        raise UsageError(f"{quant} has {qm.n_vocab} tokens in its vocabulary, {reference} was saved from one "
                         f"of {h.n_vocab}: the models must share one vocabulary to be compared")
    if qm.vocab_fingerprint() != h.vocab:
        raise UsageError(f"{quant}'s vocabulary is not the one {reference} was saved from: the models must "
                         "share one vocabulary to be compared")


# ----------------------------------------------------------------------------------------------
# --fail-if
# ----------------------------------------------------------------------------------------------

def parse_gate(text: str) -> gates.Gate:
    """``FIELD OP NUMBER`` as for inspect; FIELD (or ``summary.FIELD``) is the whole text's figure,
    ``window.FIELD`` trips when any window's does."""
    per_window = re.match(r"\s*windows?\.", text) is not None
    g = gates.parse(text, FIELDS, resolve=_resolve)
    if g.field not in FIELDS:  # a name inspect's summary has (summary.n_tensors)
        raise UsageError(f"--fail-if {text!r}: unknown field {g.field!r}; valid fields: {', '.join(FIELDS)}")
    return replace(g, summary=not per_window)


def _resolve(name: str, fields: tuple[str, ...]) -> str:
    group, dot, bare = name.partition(".")
    if not dot:
        group, bare = "", group
    if group not in ("", "window", "windows") or bare not in fields:
        raise UsageError(f"unknown field {name!r}; valid fields: {', '.join(fields)} (the whole text; "
                         "window.FIELD: any window)")
    return bare


def check_gates(checks: list[gates.Gate], result: EvalResult) -> list[gates.Failure]:
    """The checks that tripped, with the offending windows (worst first) or the whole text's value."""
    failures = []
    for g in checks:
        if g.summary:
            v = result.summary.get(g.field)
            if g.trips(None if v is None else float(v)):
                failures.append(gates.Failure(g, [("summary", float(v))]))
            continue
        offenders = [(f"window {w['index']}", float(w[g.field])) for w in result.windows
                     if w[g.field] is not None and g.trips(float(w[g.field]))]
        if offenders:
            offenders.sort(key=lambda p: -p[1] if g.op in (">", ">=", "!=", "==") else p[1])
            failures.append(gates.Failure(g, offenders))
    return failures
