"""The child process of qtool.testing.client: load one GGUF in llama.cpp and answer a request file.

    python -m qtool.testing._client_child REQUEST.json RESULT.npz

Uses llama-cpp-python's low-level API, so that the model parameters are set here, in one place:
``use_extra_bufts = False`` (llama.cpp's extra CPU buffer types segfault on some Xeons). Errors go to
stderr with a non-zero exit; the parent turns them, and crashes, into one failed test.
"""

from __future__ import annotations

import ctypes
import json
import sys

import numpy as np


def _quiet_logs(lc) -> None:
    @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    def _log(level, text, user_data):
        if level >= 4 and text:  # GGML_LOG_LEVEL_ERROR
            sys.stderr.write(text.decode("utf-8", "replace"))

    lc.llama_log_set(_log, None)
    _quiet_logs.keep = _log  # the callback must outlive this function


def _tokenize(lc, vocab, text: bytes, add_special: bool, parse_special: bool) -> list[int]:
    n_max = len(text) + 16
    while True:
        buf = (lc.llama_token * n_max)()
        n = lc.llama_tokenize(vocab, text, len(text), buf, n_max, add_special, parse_special)
        if n >= 0:
            return [int(buf[i]) for i in range(n)]
        n_max = -n


def _detokenize(lc, vocab, tokens: list[int]) -> bytes:
    arr = (lc.llama_token * max(1, len(tokens)))(*tokens)
    n_max = 16 * len(tokens) + 16
    while True:
        buf = ctypes.create_string_buffer(n_max)
        n = lc.llama_detokenize(vocab, arr, len(tokens), buf, n_max, False, False)
        if n >= 0:
            return buf.raw[:n]
        n_max = -n


def _eval(lc, ctx, tokens: list[int], want_logits: bool) -> None:
    """Clear the context and run ``tokens`` through it as one sequence, outputs at every position."""
    mem = lc.llama_get_memory(ctx)
    if mem:
        lc.llama_memory_clear(mem, True)
    n = len(tokens)
    batch = lc.llama_batch_init(n, 0, 1)
    try:
        batch.n_tokens = n
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        rc = lc.llama_decode(ctx, batch) if want_logits else lc.llama_encode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_{'decode' if want_logits else 'encode'} returned {rc}")
    finally:
        lc.llama_batch_free(batch)


def main(req_path: str, out_path: str) -> int:
    import llama_cpp.llama_cpp as lc

    req = json.loads(open(req_path).read())
    _quiet_logs(lc)
    lc.llama_backend_init()
    mparams = lc.llama_model_default_params()
    mparams.use_extra_bufts = False
    mparams.n_gpu_layers = 0
    mparams.vocab_only = req["vocab_only"]
    model = lc.llama_model_load_from_file(req["path"].encode(), mparams)
    if not model:
        print(f"llama.cpp could not load {req['path']}", file=sys.stderr)
        return 2
    vocab = lc.llama_model_get_vocab(model)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    out: dict[str, np.ndarray] = {}
    meta = {"n_vocab": int(n_vocab), "tokens": [], "pieces": []}
    for text_hex, add_special, parse_special in req["tokenize"]:
        meta["tokens"].append(_tokenize(lc, vocab, bytes.fromhex(text_hex), add_special, parse_special))
    for tokens in req["detokenize"]:
        meta["pieces"].append(_detokenize(lc, vocab, tokens).hex())

    longest = max((len(t) for t in req["logits"] + req["embed"]), default=0)
    for kind in ("logits", "embed"):
        if not req[kind]:
            continue
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = max(req["n_ctx"], longest, 8)
        cparams.n_batch = cparams.n_ubatch = max(longest, 8)
        cparams.n_threads = cparams.n_threads_batch = req["threads"]
        cparams.embeddings = kind == "embed"
        cparams.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED: "auto" computes attention in F16
        if req["f32_cache"]:
            cparams.type_k = cparams.type_v = 0  # GGML_TYPE_F32
        ctx = lc.llama_init_from_model(model, cparams)
        if not ctx:
            print(f"llama.cpp could not make a context for {req['path']}", file=sys.stderr)
            return 2
        try:
            for i, tokens in enumerate(req[kind]):
                if kind == "logits":
                    _eval(lc, ctx, tokens, True)
                    rows = [np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, j), shape=(n_vocab,))
                            for j in range(len(tokens))]
                    out[f"logits{i}"] = np.array(rows, dtype=np.float64)
                else:
                    _eval(lc, ctx, tokens, lc.llama_model_has_decoder(model))
                    n_embd = lc.llama_model_n_embd(model)
                    ptr = lc.llama_get_embeddings_seq(ctx, 0)
                    if not ptr:
                        raise RuntimeError("no pooled embedding (the model's pooling type is none?)")
                    out[f"embed{i}"] = np.ctypeslib.as_array(ptr, shape=(n_embd,)).astype(np.float64)
        finally:
            lc.llama_free(ctx)
    lc.llama_model_free(model)
    np.savez(out_path, meta=np.array(json.dumps(meta)), **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
