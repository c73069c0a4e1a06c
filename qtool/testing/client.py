"""The real client: run a GGUF in llama.cpp (llama-cpp-python 0.3.36) and bring back what it computed.

Every call runs llama.cpp in a child process. llama.cpp's CPU backend can crash the whole interpreter
(0.3.36 segfaults on some Intel Xeons running quantized weights through its extra buffer types), and a
crash there must be one failed test with its name, not a test run that stops. The child loads the model
with ``use_extra_bufts = False`` (no AMX/repacked weight buffers), the setting every check here uses.

    run(path, tokenize=[...], logits=[...], embed=[...])    # several requests, one model load
    logits(path, tokens) / tokenize(path, text) / embedding(path, tokens)

Tests and benchmarks use this module; qtool itself never does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


#: the child's command line (REQUEST.json and RESULT.npz are appended)
CHILD = [sys.executable, "-m", "qtool.testing._client_child"]


class ClientFailed(AssertionError):
    """llama.cpp crashed, refused the model or returned an error (an AssertionError: a test failure)."""


@dataclass
class ClientResult:
    tokens: list[list[int]] = field(default_factory=list)     # per tokenize request
    pieces: list[bytes] = field(default_factory=list)         # per detokenize request
    logits: list[np.ndarray] = field(default_factory=list)    # per logits request: float64 [n_tokens, n_vocab]
    embeddings: list[np.ndarray] = field(default_factory=list)  # per embed request: float64 [n_embd] (pooled)
    n_vocab: int = 0


def available() -> bool:
    """True where llama-cpp-python can be imported (checked without importing it here)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def run(path: str | Path, *, tokenize: list[tuple[bytes, bool, bool]] = (), detokenize: list[list[int]] = (),
        logits: list[list[int]] = (), embed: list[list[int]] = (), n_ctx: int = 0, threads: int = 2,
        f32_cache: bool = False, vocab_only: bool = False, timeout: float = 600) -> ClientResult:
    """Load ``path`` once in a child llama.cpp process and answer every request.

    ``tokenize``: (text, add_special, parse_special) triples; ``detokenize``: token lists; ``logits``: token
    lists evaluated from an empty context, logits at every position; ``embed``: token lists whose pooled
    embedding (the model's pooling type) is wanted. ``f32_cache`` keeps the KV cache in F32; ``vocab_only``
    loads only the vocabulary (enough for tokenize/detokenize, much faster).
    """
    request = {
        "path": str(path),
        "tokenize": [[t.hex() if isinstance(t, bytes) else t.encode().hex(), bool(a), bool(p)]
                     for t, a, p in tokenize],
        "detokenize": [list(map(int, t)) for t in detokenize],
        "logits": [list(map(int, t)) for t in logits],
        "embed": [list(map(int, t)) for t in embed],
        "n_ctx": int(n_ctx), "threads": int(threads), "f32_cache": bool(f32_cache), "vocab_only": bool(vocab_only),
    }
    with tempfile.TemporaryDirectory(prefix="qtool-client-") as tmp:
        req_path, out_path = Path(tmp) / "request.json", Path(tmp) / "result.npz"
        req_path.write_text(json.dumps(request))
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            proc = subprocess.run([*CHILD, str(req_path), str(out_path)], capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise ClientFailed(f"llama.cpp on {Path(path).name}: no answer within {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise ClientFailed(f"llama.cpp on {Path(path).name}: {_how(proc.returncode)}"
                               f"{_tail(proc.stderr)}")
        with np.load(out_path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return ClientResult(
                tokens=meta["tokens"],
                pieces=[bytes.fromhex(p) for p in meta["pieces"]],
                logits=[z[f"logits{i}"] for i in range(len(logits))],
                embeddings=[z[f"embed{i}"] for i in range(len(embed))],
                n_vocab=meta["n_vocab"],
            )


def logits(path: str | Path, tokens: list[int], **kw) -> np.ndarray:
    """llama.cpp's logits for ``tokens`` at every position, float64 [n_tokens, n_vocab]."""
    return run(path, logits=[tokens], **kw).logits[0]


def tokenize(path: str | Path, text: bytes | str, *, add_special: bool = True, parse_special: bool = True,
             **kw) -> list[int]:
    """llama.cpp's tokenization of ``text`` with the model's own vocabulary."""
    return run(path, tokenize=[(text if isinstance(text, bytes) else text.encode(), add_special,
                                parse_special)], **kw).tokens[0]


def embedding(path: str | Path, tokens: list[int], **kw) -> np.ndarray:
    """The model's pooled embedding of ``tokens``, float64 [n_embd]."""
    return run(path, embed=[tokens], **kw).embeddings[0]


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"the process died of {signal.Signals(-code).name}"
        except ValueError:
            return f"the process died of signal {-code}"
    return f"exit status {code}"


def _tail(stderr: str, n: int = 6) -> str:
    lines = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()]
    return ("\n  " + "\n  ".join(lines[-n:])) if lines else ""
