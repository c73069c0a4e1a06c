"""qtool against ggml: kernel throughput per type, and whole-process convert against llama-quantize.

    python benchmarks/bench.py kernels [--rows 512] [--cols 4096] [--threads 1] [--types Q4_0,Q4_K]
    python benchmarks/bench.py convert [--params 100] [--threads 2] [--presets Q8_0,Q4_K_M]

`kernels` quantizes the same seeded weight-like data with qtool's registry, ggml's ggml_quantize_chunk
(llama-cpp-python's libggml-base, through ctypes) and gguf-py's numpy quantizers, with and without an
importance vector, and prints MB of float32 input per second (best of a few runs, after a warm-up that
pays Numba's compile or cache load) and whether the bytes agree.

`convert` writes a llama-architecture F32 GGUF of about N million parameters, then times, as whole
processes with start-up included, `qtool convert --threads T` against llama.cpp's `llama_model_quantize`
(nthread=T) through llama-cpp-python, and checks that every tensor's type and bytes agree.
Needs llama-cpp-python (pip install 'qtool[oracle]').
"""

from __future__ import annotations

import argparse
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


def make_llama_gguf(path: Path, params_m: float, seed: int = 0) -> int:
    """A llama-architecture F32 GGUF with about params_m million weights (hparams only, no tokenizer:
    llama_model_quantize reads no vocabulary). Returns the parameter count."""
    import gguf

    hidden = 1024
    ffn = 2816
    vocab = 8192
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


_LLAMA_QUANTIZE = """
import ctypes, sys, llama_cpp
from gguf import LlamaFileType
p = llama_cpp.llama_model_quantize_default_params()
p.nthread = int(sys.argv[3])
p.ftype = int(LlamaFileType['MOSTLY_' + sys.argv[4]] if sys.argv[4] not in ('F32',) else LlamaFileType.ALL_F32)
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p))
sys.exit(rc)
"""


def _peak_rss_run(cmd: list[str]) -> tuple[float, float, int]:
    """Run a command; return (wall seconds, peak RSS of the child in MiB, exit code)."""
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, rusage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        if rc != 0:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-2000:])
    return seconds, rusage.ru_maxrss / 1024, rc


def bench_convert(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        src = tmp / "model-f32.gguf"
        # generated in a child process: Linux carries a process's peak RSS across fork+exec, so a parent
        # that had held the model would make every measured child look as big as the model
        made = subprocess.run([sys.executable, __file__, "make-model", str(src), str(args.params)],
                              check=True, capture_output=True, text=True)
        n = int(made.stdout.strip())
        print(f"input: llama-architecture F32 GGUF, {n / 1e6:.1f}M parameters, "
              f"{src.stat().st_size / 2**20:.0f} MiB; threads={args.threads}")
        print(f"{'preset':8} {'qtool s':>8} {'llama s':>8} {'ratio':>6} {'qtool MiB':>10} {'llama MiB':>10} "
              f"{'types':>6} {'bytes':>6}")
        for preset in args.presets.split(","):
            ours, theirs = tmp / f"q-{preset}.gguf", tmp / f"l-{preset}.gguf"
            tq, mq, rq = _peak_rss_run([sys.executable, "-m", "qtool", "convert", str(src), "--type", preset,
                                        "-o", str(ours), "--threads", str(args.threads), "--quiet"])
            tl, ml, rl = _peak_rss_run([sys.executable, "-c", _LLAMA_QUANTIZE, str(src), str(theirs),
                                        str(args.threads), preset])
            if not ours.exists() or not theirs.exists():
                print(f"{preset:8} failed (qtool: {ours.exists()}, llama.cpp: {theirs.exists()})")
                continue
            # compared in a child process, for the reason the model is generated in one
            cmp = subprocess.run([sys.executable, __file__, "compare", str(ours), str(theirs)],
                                 check=True, capture_output=True, text=True).stdout.split()
            same_types, same_bytes = cmp[0] == "True", cmp[1] == "True"
            print(f"{preset:8} {tq:8.2f} {tl:8.2f} {tl / tq:6.2f} {mq:10.0f} {ml:10.0f} "
                  f"{'same' if same_types else 'DIFF':>6} {'same' if same_bytes else 'DIFF':>6}")
            ours.unlink()
            theirs.unlink()


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
    args = ap.parse_args()
    if args.what == "kernels":
        bench_kernels(args)
    elif args.what == "convert":
        bench_convert(args)
    elif args.what == "compare":
        print(*compare_files(args.a, args.b))
    else:
        print(make_llama_gguf(args.path, args.params))


if __name__ == "__main__":
    main()
