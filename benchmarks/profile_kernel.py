"""Where a quantize kernel spends its time, instruction by instruction, with Linux perf.

    perf record -o perf.data python benchmarks/profile_kernel.py run IQ1_S --imatrix
    python benchmarks/profile_kernel.py report perf.data

``run`` compiles the type's kernels afresh (a throw-away Numba cache: code loaded from a cache is not
visible to perf), writes /tmp/perf-<pid>.map naming every compiled function's address range (llvmlite
registers none), keeps each function's machine code beside perf.data, then quantizes hard rows on one
thread for a while. ``report`` attributes perf's samples to those functions and prints the hottest one's
disassembly (objdump) with each instruction's share of all samples, hottest regions first.

Not a test and not timed by anything: a tool for reading what LLVM made of a kernel.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import ctypes
import gc
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = "kernel-code.pkl"


def run(args: argparse.Namespace) -> None:
    if "NUMBA_CACHE_DIR" not in os.environ:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="qtool-profile-")
    sys.path.insert(0, str(ROOT))
    import numba
    import numpy as np
    from gguf import GGMLQuantizationType
    from numba.core.registry import CPUDispatcher

    from qtool.quantizers import registered
    from qtool.testing import data

    numba.set_num_threads(1)
    quantizer = registered()[GGMLQuantizationType[args.type]]
    rows = data.hard_rows(args.rows, 4096, seed=7)
    rows[np.abs(rows) > 1e20] = 0
    weights = data.importance(4096, seed=3) if args.imatrix or quantizer.requires_imatrix else None
    quantizer.quantize(rows, weights)  # compiles

    functions = {}
    for obj in gc.get_objects():
        if not isinstance(obj, CPUDispatcher):
            continue
        for cres in obj.overloads.values():
            module = getattr(cres.library, "_final_module", None)
            if module is None:
                continue
            for f in module.functions:
                if not f.is_declaration:
                    address = cres.library.get_pointer_to_function(f.name)
                    if address:
                        functions[address] = f.name
    starts = sorted(functions)
    code = {}
    with open(f"/tmp/perf-{os.getpid()}.map", "w") as out:
        for k, start in enumerate(starts):
            size = starts[k + 1] - start if k + 1 < len(starts) else 1 << 16
            size = min(size, 1 << 20)
            out.write(f"{start:x} {size:x} {functions[start]}\n")
            code[start] = (functions[start], ctypes.string_at(start, size))
    Path(args.code).write_bytes(pickle.dumps(code))
    print(f"{len(starts)} functions mapped; quantizing for {args.seconds} s", file=sys.stderr)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        quantizer.quantize(rows, weights)


def report(args: argparse.Namespace) -> None:
    code = pickle.loads(Path(args.code).read_bytes())
    starts = sorted(code)
    ips = subprocess.run(["perf", "script", "-i", str(args.data), "-F", "ip"], capture_output=True, text=True,
                         check=True).stdout.split()
    samples = collections.Counter(int(ip, 16) for ip in ips)
    total = sum(samples.values())
    per_function = collections.Counter()
    for ip, n in samples.items():
        k = bisect.bisect_right(starts, ip) - 1
        if k >= 0 and ip < starts[k] + len(code[starts[k]][1]):
            per_function[starts[k]] += n
    for start, n in per_function.most_common(args.functions):
        print(f"{100 * n / total:5.1f}%  {code[start][0][:110]}")
    start = per_function.most_common(args.rank)[-1][0]
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(code[start][1])
        f.flush()
        listing = subprocess.run(["objdump", "-D", "-b", "binary", "-mi386:x86-64", f"--adjust-vma={start:#x}",
                                  f.name], capture_output=True, text=True, check=True).stdout
    lines = []
    for line in listing.splitlines():
        head = line.strip().split(":", 1)[0]
        try:
            address = int(head, 16)
        except ValueError:
            continue
        lines.append((address, 100 * samples.get(address, 0) / total, line))
    regions = collections.Counter()
    for address, share, _ in lines:
        regions[address // 128 * 128] += share
    print(f"\nhottest 128-byte regions of function {args.rank} (% of all samples):")
    for region, share in regions.most_common(args.regions):
        print(f"\n--- {region:#x}: {share:.2f}%")
        for address, s, line in lines:
            if region <= address < region + 128:
                print(f"{s:5.2f} {line}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="quantize under perf record, writing the function map")
    r.add_argument("type", help="ggml type name, e.g. IQ1_S")
    r.add_argument("--imatrix", action="store_true", help="with an importance vector")
    r.add_argument("--rows", type=int, default=64)
    r.add_argument("--seconds", type=float, default=5.0)
    r.add_argument("--code", default=CODE, help="where the functions' machine code is kept")
    p = sub.add_parser("report", help="the hottest functions and instructions")
    p.add_argument("data", type=Path, nargs="?", default=Path("perf.data"))
    p.add_argument("--code", default=CODE)
    p.add_argument("--functions", type=int, default=6)
    p.add_argument("--rank", type=int, default=1, help="which function to disassemble (1 = hottest)")
    p.add_argument("--regions", type=int, default=4)
    args = ap.parse_args()
    run(args) if args.what == "run" else report(args)


if __name__ == "__main__":
    main()
