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
from pathlib import Path

import numpy as np

from qtool.errors import FormatError, QtoolError

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
                 f32_cache: bool = False, vocab_only: bool = False):
        """``embeddings``: the context pools embeddings instead of computing logits; ``f32_cache``: the KV cache
        in F32; ``vocab_only``: load the vocabulary alone (tokenize/detokenize only, no context)."""
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

    def window_logits(self, tokens: np.ndarray, first: int, last: int) -> np.ndarray:
        """Run ``tokens`` (one window, at most n_ctx) from an empty cache; the logits at positions
        ``first`` .. ``last - 1`` as float32 ``[last - first, n_vocab]`` (a copy)."""
        self._run(tokens, first, last)
        lc = self._lc
        ptr = lc.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(last - first, self.n_vocab)).copy()
