"""The child process of qtool.testing.client: load one GGUF in llama.cpp and answer a request file.

    python -m qtool.testing._client_child REQUEST.json RESULT.npz

The model is loaded the one way qtool loads models in llama.cpp, qtool.analysis.llama_runner.LlamaModel
(``use_extra_bufts = False``, flash attention off). Errors go to stderr with a non-zero exit; the parent
turns them, and crashes, into one failed test.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def _vocab_answers(m, req: dict) -> dict:
    return {"n_vocab": m.n_vocab,
            "tokens": [m.tokenize(bytes.fromhex(t), add_special=a, parse_special=p).tolist()
                       for t, a, p in req["tokenize"]],
            "pieces": [m.detokenize(t).hex() for t in req["detokenize"]]}


def main(req_path: str, out_path: str) -> int:
    from qtool.analysis.llama_runner import LlamaModel
    from qtool.errors import QtoolError

    req = json.loads(open(req_path).read())
    longest = max((len(t) for t in req["logits"] + req["embed"]), default=0)
    n_ctx = max(req["n_ctx"], longest, 8)
    common = dict(threads=req["threads"], f32_cache=req["f32_cache"])
    out: dict[str, np.ndarray] = {}
    try:
        if req["logits"] or not req["embed"]:
            vocab_only = req["vocab_only"] or not req["logits"]
            with LlamaModel(req["path"], n_ctx=n_ctx, vocab_only=vocab_only, **common) as m:
                meta = _vocab_answers(m, req)
                for i, tokens in enumerate(req["logits"]):
                    out[f"logits{i}"] = m.window_logits(np.array(tokens), 0, len(tokens)).astype(np.float64)
        if req["embed"]:
            with LlamaModel(req["path"], n_ctx=n_ctx, embeddings=True, **common) as m:
                if not req["logits"]:
                    meta = _vocab_answers(m, req)
                for i, tokens in enumerate(req["embed"]):
                    out[f"embed{i}"] = m.embedding(tokens).astype(np.float64)
    except QtoolError as e:
        print(e, file=sys.stderr)
        return 2
    np.savez(out_path, meta=np.array(json.dumps(meta)), **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
