"""Run a GGUF in llama.cpp through llama-cpp-python's low-level API: tokenize, and logits per window.

llama-cpp-python is an optional dependency (``pip install 'qtool[eval]'``); importing this module does not
import it, :func:`load_llama` does, and says how to install it when it is missing.

Every model is loaded with ``use_extra_bufts = False`` (llama.cpp's extra CPU buffer types, the repacked
weight layouts, crash on some Intel Xeons) and its contexts run without flash attention (``auto`` may compute
attention in F16), on the CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from qtool.errors import FormatError, QtoolError, UsageError

INSTALL_HINT = "pip install 'qtool[eval]'"


def load_llama():
    """The ``llama_cpp.llama_cpp`` bindings, or a one-line error naming the extra to install."""
    try:
        import llama_cpp.llama_cpp as lc
    except ImportError as e:  # not installed, or its shared library does not load here
        detail = "" if getattr(e, "name", None) in ("llama_cpp", "llama_cpp.llama_cpp") else f" ({e})"
        raise QtoolError(f"this command runs the models in llama.cpp and needs llama-cpp-python: "
                         f"{INSTALL_HINT}{detail}") from None
    if not _state["init"]:
        _quiet_logs(lc)
        lc.llama_backend_init()
        _state["init"] = True
    return lc


_state = {"init": False, "log": None, "errors": []}


def _quiet_logs(lc) -> None:
    """llama.cpp logs every load step on stderr; keep only its errors."""
    last = [0]

    @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    def _log(level, text, user_data):
        if level != 5:  # GGML_LOG_LEVEL_CONT continues the previous line (the loader's progress dots)
            last[0] = level
        if last[0] == 4 and text:  # GGML_LOG_LEVEL_ERROR: kept for the one-line message of a failure
            line = text.decode("utf-8", "replace")
            _state["errors"].append(line)
            if os.environ.get("QTOOL_DEBUG"):
                sys.stderr.write(line)

    lc.llama_log_set(_log, None)
    _state["log"] = _log  # the callback must outlive this function


def _why() -> str:
    """What llama.cpp logged as its error, as the tail of a one-line message ("" when it said nothing)."""
    lines = [re.sub(r"^(\w+: )+", "", ln.strip()) for ln in _state["errors"] if ln.strip()]
    lines = [ln for ln in lines if ln and not ln.startswith(("error loading model: llama_model_loader: failed "
                                                             "to load model from", "failed to load model"))]
    return ": " + lines[0].replace("error loading model: ", "") if lines else ""


class LlamaModel:
    """One GGUF loaded in llama.cpp, with one context of ``n_ctx`` tokens that evaluates a window at a time.

    Use as a context manager (or call :meth:`close`): the model and context live in C memory.
    """

    def __init__(self, path: str | Path, *, n_ctx: int = 0, threads: int = 2, embeddings: bool = False,
                 f32_cache: bool = False, vocab_only: bool = False, cb_eval: Callable | None = None):
        """``embeddings``: the context pools embeddings instead of computing logits; ``f32_cache``: the KV cache
        in F32; ``vocab_only``: load the vocabulary alone (tokenize/detokenize only, no context);
        ``cb_eval``: the scheduler's eval callback ``(tensor address, ask, user data) -> bool`` (see
        :class:`ActivationStats`), called for every node of every graph the context computes."""
        self.path = Path(path)
        lc = self._lc = load_llama()
        if not self.path.is_file():
            raise FormatError(f"{self.path}: no such file")
        mparams = lc.llama_model_default_params()
        mparams.use_extra_bufts = False
        mparams.n_gpu_layers = 0
        mparams.vocab_only = bool(vocab_only)
        _state["errors"].clear()
        self._model = lc.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise FormatError(f"{self.path}: llama.cpp could not load it{_why()}")
        self._ctx = None
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self._vocab))
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab))
        self.bos = int(lc.llama_vocab_bos(self._vocab))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(self._model))
        self.n_ctx = int(n_ctx)
        if vocab_only:
            return
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = self.n_ctx
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = int(threads)
        cparams.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.embeddings = bool(embeddings)
        if f32_cache:
            cparams.type_k = cparams.type_v = 0  # GGML_TYPE_F32
        if cb_eval is not None:
            self._cb_eval = lc.ggml_backend_sched_eval_callback(cb_eval)  # must outlive the context
            cparams.cb_eval = self._cb_eval
            cparams.cb_eval_user_data = None
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise FormatError(f"{self.path}: llama.cpp could not make a context of {self.n_ctx} tokens{_why()}")

    def __enter__(self) -> "LlamaModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        lc = self._lc
        if getattr(self, "_ctx", None):
            lc.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None

    # -- vocabulary -------------------------------------------------------------------------------

    def vocab_fingerprint(self) -> str:
        """SHA-256 over every token's text, score and attributes, and the BOS setting: two models whose
        fingerprints agree read token ids the same way."""
        lc, v = self._lc, self._vocab
        h = hashlib.sha256()
        h.update(f"{self.n_vocab}:{self.bos}:{int(self.add_bos)}\n".encode())
        for i in range(self.n_vocab):
            h.update(lc.llama_vocab_get_text(v, i) or b"")
            h.update(f"\x00{float(lc.llama_vocab_get_score(v, i))!r}:{int(lc.llama_vocab_get_attr(v, i))}\n".encode())
        return h.hexdigest()

    def tokenize(self, text: bytes, *, add_special: bool = True, parse_special: bool = False) -> np.ndarray:
        """The text's tokens (int32), as llama-perplexity tokenizes its input (BOS added as the vocabulary
        says, special-token text not parsed)."""
        lc = self._lc
        n_max = len(text) + 16
        while True:
            buf = (lc.llama_token * n_max)()
            n = lc.llama_tokenize(self._vocab, text, len(text), buf, n_max, add_special, parse_special)
            if n >= 0:
                return np.ctypeslib.as_array(buf)[:n].astype(np.int32)
            n_max = -n

    def detokenize(self, tokens) -> bytes:
        """The text of ``tokens`` (special tokens rendered, no space stripping)."""
        lc = self._lc
        arr = (lc.llama_token * max(1, len(tokens)))(*map(int, tokens))
        n_max = 16 * len(tokens) + 16
        while True:
            buf = ctypes.create_string_buffer(n_max)
            n = lc.llama_detokenize(self._vocab, arr, len(tokens), buf, n_max, False, False)
            if n >= 0:
                return buf.raw[:n]
            n_max = -n

    # -- evaluation -------------------------------------------------------------------------------

    def _run(self, tokens, first: int, last: int) -> None:
        """Run ``tokens`` as one sequence from an empty cache, outputs at positions ``first`` .. ``last - 1``
        (an encoder-only model, BERT, is encoded)."""
        lc, n = self._lc, len(tokens)
        if n > self.n_ctx or not 0 <= first < last <= n:
            raise ValueError(f"window of {n} tokens, outputs {first}..{last} (n_ctx {self.n_ctx})")
        mem = lc.llama_get_memory(self._ctx)
        if mem:
            lc.llama_memory_clear(mem, True)
        batch = lc.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for i in range(n):
                batch.token[i] = int(tokens[i])
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if first <= i < last else 0
            _state["errors"].clear()
            decode = lc.llama_model_has_decoder(self._model)
            rc = lc.llama_decode(self._ctx, batch) if decode else lc.llama_encode(self._ctx, batch)
            if rc != 0:
                raise QtoolError(f"{self.path}: llama_{'decode' if decode else 'encode'} returned {rc}{_why()}")
        finally:
            lc.llama_batch_free(batch)

    def embedding(self, tokens) -> np.ndarray:
        """The model's pooled embedding of ``tokens`` (its own pooling type), float32 ``[n_embd]`` (a copy);
        the model must have been loaded with ``embeddings=True``."""
        lc = self._lc
        self._run(tokens, 0, len(tokens))
        ptr = lc.llama_get_embeddings_seq(self._ctx, 0)
        if not ptr:
            raise QtoolError(f"{self.path}: no pooled embedding (the model's pooling type is none?)")
        return np.ctypeslib.as_array(ptr, shape=(int(lc.llama_model_n_embd(self._model)),)).copy()

    def run_all(self, tokens) -> None:
        """Run ``tokens`` (one window) from an empty cache with an output at every position, as
        llama-imatrix does (so that the last layer computes every row); nothing is returned."""
        self._run(tokens, 0, len(tokens))

    def window_logits(self, tokens: np.ndarray, first: int, last: int) -> np.ndarray:
        """Run ``tokens`` (one window, at most n_ctx) from an empty cache; the logits at positions
        ``first`` .. ``last - 1`` as float32 ``[last - first, n_vocab]`` (a copy)."""
        self._run(tokens, first, last)
        lc = self._lc
        ptr = lc.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(last - first, self.n_vocab)).copy()


# ----------------------------------------------------------------------------------------------------
# Activations: what llama-imatrix collects (tools/imatrix/imatrix.cpp of the pinned build)
# ----------------------------------------------------------------------------------------------------

#: ggml/include/ggml.h of the pinned build (ggml 0.25.3 in llama-cpp-python 0.3.36)
GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_NAME, GGML_MAX_OP_PARAMS = 4, 10, 64, 64
#: enum ggml_op: NONE = 0, DUP, ADD, ... L2_NORM, MUL_MAT (29), MUL_MAT_ID (30)
GGML_OP_MUL_MAT, GGML_OP_MUL_MAT_ID = 29, 30
GGML_TYPE_F32, GGML_TYPE_I32 = 0, 26


class GGMLTensor(ctypes.Structure):
    """``struct ggml_tensor`` as ggml.h lays it out (336 bytes on a 64-bit build; ggml_tensor_overhead()
    adds the 32-byte ggml_object)."""


GGMLTensor._fields_ = [
    ("type", ctypes.c_int),                                    # enum ggml_type
    ("buffer", ctypes.c_void_p),                               # struct ggml_backend_buffer *
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),                    # elements per dimension
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),                   # strides in bytes
    ("op", ctypes.c_int),                                      # enum ggml_op
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GGMLTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GGMLTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


def check_tensor_layout(lc) -> None:
    """Check GGMLTensor and the op numbers against the loaded ggml (its exported functions); QtoolError
    when they disagree (a llama-cpp-python whose ggml is laid out otherwise)."""
    lib = lc._lib
    overhead, op_name = lib.ggml_tensor_overhead, lib.ggml_op_name
    overhead.restype, overhead.argtypes = ctypes.c_size_t, []
    op_name.restype, op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    problems = []
    if overhead() != ctypes.sizeof(GGMLTensor) + 32:
        problems.append(f"ggml_tensor_overhead() is {overhead()}, not {ctypes.sizeof(GGMLTensor)} + 32")
    for value, name in ((GGML_OP_MUL_MAT, b"MUL_MAT"), (GGML_OP_MUL_MAT_ID, b"MUL_MAT_ID")):
        if op_name(value) != name:
            problems.append(f"op {value} is {op_name(value)!r}, not {name.decode()}")
    if problems:
        raise QtoolError("this llama-cpp-python's ggml is not the one qtool reads activations from "
                         f"(llama-cpp-python 0.3.36): {'; '.join(problems)}")


def _tensor_name(t: GGMLTensor) -> str:
    """The weight's name as llama-imatrix keys it: a scheduler copy ``CPU#blk.0.attn_q.weight#0`` is cut to the
    part between the '#'s."""
    name = t.name.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


def _view(t: GGMLTensor, dtype) -> np.ndarray:
    """A read-only numpy view of ``t``'s data, numpy order ``[ne3, ne2, ne1, ne0]`` with its strides."""
    ne, nb = [int(t.ne[i]) for i in range(4)], [int(t.nb[i]) for i in range(4)]
    span = sum((n - 1) * s for n, s in zip(ne, nb)) + nb[0] if all(ne) else 0
    buf = (ctypes.c_char * span).from_address(t.data) if span else b""
    flat = np.frombuffer(buf, dtype=np.uint8)
    return np.lib.stride_tricks.as_strided(flat.view(dtype) if span else np.zeros(0, dtype),
                                           shape=ne[::-1], strides=nb[::-1], writeable=False)


class ActivationStats:
    """The eval callback of llama-imatrix: for each matrix multiplication by a model weight, the sum of squared
    activations of every input column and the number of rows that went in, keyed by the weight's name.

    Asked about a node, it wants MUL_MAT_ID (every one: the experts) and MUL_MAT whose ``src1`` is F32 with at
    least 16 rows and whose ``src0`` is a ``blk.*`` weight (``output.weight`` too with ``process_output``).
    Given one, per matrix ``m`` of the weight (``src0``'s third and fourth axes; broadcast over ``src1``'s)::

        sums[m, j] += x[j] * x[j]        for every row x of src1 going into m, in row order, float32
        count      += rows of src1 / number of matrices       (a dense weight has one count for all)

    and for MUL_MAT_ID, per routed (slot, token) pair in slot-major order, the token's row into its expert's
    sums, and that expert's count + 1. Like llama-imatrix, a non-finite sum is an error.
    """

    def __init__(self, *, process_output: bool = False):
        self.process_output = process_output
        self.sums: dict[str, np.ndarray] = {}     # name -> float32 [n_mat, ne0]
        self.counts: dict[str, np.ndarray] = {}   # name -> int64 [n_mat]
        self.error: BaseException | None = None
        self.calls = 0

    def __call__(self, address, ask, user_data) -> bool:
        try:
            t = GGMLTensor.from_address(address)
            if ask:
                return self._wanted(t)
            self._collect(t)
            self.calls += 1
            return True
        except BaseException as e:  # an exception must not cross the C frames: kept, and the graph stopped
            if self.error is None:
                self.error = e
            return False

    def _wanted(self, t: GGMLTensor) -> bool:
        if t.op == GGML_OP_MUL_MAT_ID:
            return True
        if t.op != GGML_OP_MUL_MAT:
            return False
        src1 = t.src[1].contents
        if src1.ne[1] < 16 or src1.type != GGML_TYPE_F32:
            return False
        name = _tensor_name(t.src[0].contents)
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def _entry(self, name: str, n_mat: int, ne0: int, n_counts: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.sums:
            self.sums[name] = np.zeros((n_mat, ne0), dtype=np.float32)
            self.counts[name] = np.zeros(n_counts, dtype=np.int64)
        sums, counts = self.sums[name], self.counts[name]
        if sums.shape != (n_mat, ne0) or counts.size != n_counts:
            raise QtoolError(f"{name}: activations of {n_mat} x {ne0} columns after {sums.shape[0]} x "
                             f"{sums.shape[1]} (inconsistent sizes)")
        return sums, counts

    def _collect(self, t: GGMLTensor) -> None:
        src0, src1 = t.src[0].contents, t.src[1].contents
        name = _tensor_name(src0)
        if src1.type != GGML_TYPE_F32 or src1.nb[0] != 4:
            raise QtoolError(f"{name}: activations of ggml type {src1.type} (stride {src1.nb[0]}), not F32")
        x = _view(src1, np.float32)  # [ne3, ne2, ne1, ne0]
        ne0 = x.shape[3]
        if t.op == GGML_OP_MUL_MAT_ID:
            ids_t = t.src[2].contents
            ids = _view(ids_t, np.int32)[0, 0]  # [n_tokens, n_ids]
            n_as = int(src0.ne[2])
            if x.shape[0] != 1 or ids.shape[0] != x.shape[1]:
                raise QtoolError(f"{name}: expert activations of shape {list(x.shape)} for {list(ids.shape)} ids")
            sums, counts = self._entry(name, n_as, ne0, n_as)
            rows = x[0]  # [n_tokens, ne1, ne0]
            for idx in range(ids.shape[1]):
                for row in range(ids.shape[0]):
                    ex = int(ids[row, idx])
                    if not 0 <= ex < n_as:
                        raise QtoolError(f"{name}: expert id {ex} out of 0..{n_as - 1}")
                    v = rows[row, idx % rows.shape[1]]
                    sums[ex] += v * v
                    counts[ex] += 1
            touched = np.unique(ids)
            bad = [int(e) for e in touched if not np.isfinite(sums[e]).all()]
        else:
            n2, n3 = int(src0.ne[2]), int(src0.ne[3])
            n_mat = n2 * n3
            sums, counts = self._entry(name, n_mat, ne0, 1)  # one count, as llama-imatrix keeps
            for i3 in range(x.shape[0]):
                for i2 in range(x.shape[1]):
                    m = (i3 % n3) * n2 + (i2 % n2)
                    rows = x[i3, i2]
                    # float32, one row after another onto the running sums (numpy reduces a leading axis in order)
                    sums[m] = np.add.reduce(np.concatenate([sums[m][None], rows * rows]), axis=0)
            counts += (x.shape[0] * x.shape[1] * x.shape[2]) // n_mat
            bad = [] if np.isfinite(sums).all() else [0]
        if bad:
            raise QtoolError(f"{name}: non-finite activations (the model overflows on this text)")

    def chunk_count(self, chunk_size: int) -> int:
        """llama-imatrix's chunk count: the most whole chunks any entry's count holds."""
        return max((int(c.max()) // chunk_size for c in self.counts.values() if c.size), default=0)


@dataclass
class ImatrixRun:
    stats: ActivationStats
    n_tokens: int       # of the whole text
    chunks: int         # evaluated
    chunk_size: int     # tokens per chunk (--ctx)
    chunk_count: int    # as llama-imatrix records it


def compute_imatrix(model_path: str | Path, text: bytes, *, ctx: int, chunks: int | None = None, threads: int = 2,
                    process_output: bool = False, on_start: Callable[[int], None] | None = None,
                    on_chunk: Callable[[int], None] | None = None) -> ImatrixRun:
    """Run ``text`` through the model as llama-imatrix does and collect the activation statistics.

    The text is tokenized with BOS as the vocabulary says (special-token text not parsed) and cut into chunks
    of ``ctx`` tokens (a shorter tail is left out; at least two chunks' worth of tokens are required, as
    llama-imatrix requires); each chunk runs from an empty cache with its first token replaced by BOS where
    the vocabulary adds one, and an output at every position. One chunk per batch (llama-imatrix packs
    ``n_batch / ctx`` chunks into one batch as separate sequences: the same rows in the same order).
    """
    if ctx < 16:
        raise UsageError(f"--ctx {ctx}: llama-imatrix collects nothing from batches under 16 tokens")
    if chunks is not None and chunks < 1:
        raise UsageError(f"--chunks {chunks}: at least 1")
    stats = ActivationStats(process_output=process_output)
    lc = load_llama()
    check_tensor_layout(lc)
    with LlamaModel(model_path, n_ctx=ctx, threads=threads, cb_eval=stats) as m:
        tokens = m.tokenize(text, add_special=True, parse_special=False)
        if len(tokens) < 2 * ctx:
            raise UsageError(f"the text tokenizes to {len(tokens)} tokens; llama-imatrix needs at least "
                             f"{2 * ctx} (two chunks of --ctx {ctx})")
        n_chunks = len(tokens) // ctx if chunks is None else min(chunks, len(tokens) // ctx)
        if on_start is not None:
            on_start(n_chunks)
        for i in range(n_chunks):
            window = tokens[i * ctx:(i + 1) * ctx].copy()
            if m.add_bos:
                window[0] = m.bos
            m.run_all(window)
            if stats.error is not None:
                err = stats.error
                raise err if isinstance(err, QtoolError) else QtoolError(
                    f"{model_path}: reading activations failed: {type(err).__name__}: {err}")
            if on_chunk is not None:
                on_chunk(i)
        if not stats.sums:
            raise QtoolError(f"{model_path}: no matrix multiplication by a blk.* weight was seen; nothing to write")
    return ImatrixRun(stats, len(tokens), n_chunks, ctx, stats.chunk_count(ctx))


def make_imatrix(model_path: str | Path, text_path: str | Path, output: str | Path, *, ctx: int = 512,
                 chunks: int | None = None, threads: int = 2, process_output: bool = False,
                 on_start: Callable[[int], None] | None = None,
                 on_chunk: Callable[[int], None] | None = None) -> dict:
    """`qtool imatrix`: read the text, collect the activations (:func:`compute_imatrix`) and write them in
    llama-imatrix's GGUF format to ``output`` (the dataset recorded as ``text_path`` is given). Returns the
    summary that ``--json`` prints."""
    import time

    from qtool.formats.gguf_out import check_output_path
    from qtool.formats.imatrix import write_imatrix_gguf

    t0 = time.perf_counter()
    model_path, output = Path(model_path), Path(output)
    try:
        text = Path(text_path).read_bytes()
    except OSError as e:
        raise FormatError(f"{text_path}: cannot read the text: {e.strerror or e}") from None
    if not model_path.is_file():
        raise FormatError(f"{model_path}: no such file")
    check_output_path(output, [model_path, Path(text_path)])
    run = compute_imatrix(model_path, text, ctx=ctx, chunks=chunks, threads=threads,
                          process_output=process_output, on_start=on_start, on_chunk=on_chunk)
    st = run.stats
    write_imatrix_gguf(output, st.sums, st.counts, datasets=[str(text_path)], chunk_count=run.chunk_count,
                       chunk_size=run.chunk_size)
    return {"model": str(model_path), "text": str(text_path), "output": str(output), "ctx": run.chunk_size,
            "text_tokens": run.n_tokens, "chunks": run.chunks, "chunk_count": run.chunk_count,
            "entries": len(st.sums), "tokens_evaluated": run.chunks * run.chunk_size,
            "seconds": time.perf_counter() - t0}
