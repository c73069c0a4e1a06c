"""Streaming: converting or inspecting a model keeps the resident set near one tensor, not the model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from gguf import GGUFWriter

from qtool.formats.source import open_model

N_TENSORS, ROWS, COLS = 24, 512, 2048  # 24 tensors of 4 MiB: a 96 MiB model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "m.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(N_TENSORS)
    w.add_embedding_length(COLS)
    w.add_head_count(16)
    w.add_head_count_kv(16)
    rng = np.random.default_rng(0)
    for i in range(N_TENSORS):
        w.add_tensor(f"blk.{i}.ffn_up.weight", (rng.standard_normal((ROWS, COLS)) * 0.02).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _rss_file_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_release_drops_a_consumed_tensors_pages(model):
    tensor_kb = ROWS * COLS * 4 // 1024
    with open_model(model) as src:
        before = _rss_file_kb()
        for t in src.tensors:
            src.load(t.name).sum()  # touch every page, as a quantizer does
            src.release(t.name)
        grown = _rss_file_kb() - before
        # without release the mapped model (96 MiB) stays resident; with it, at most about one tensor
        assert grown < 2 * tensor_kb, f"resident file pages grew by {grown} KiB over {N_TENSORS} tensors"
        x = src.load(src.tensors[0].name)  # released pages come back from the file, unchanged
        assert x.shape == (ROWS, COLS) and np.isfinite(x).all()


def test_convert_peak_memory_is_not_the_model(model, tmp_path):
    out = tmp_path / "o.gguf"
    code = (
        "import resource, sys; from qtool.cli.app import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, "convert", str(model), "--type", "Q8_0", "-o", str(out), "-q"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    peak_mib = int(r.stdout.strip().splitlines()[-1]) / 1024
    baseline = subprocess.run([sys.executable, "-c", "import resource; import qtool.quantizers, qtool.cli.app; "
                               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                              capture_output=True, text=True, env=env)
    base_mib = int(baseline.stdout.strip()) / 1024
    model_mib = model.stat().st_size / 2**20
    # the run may hold a few tensors' worth (input view, output bytes, numba/LLVM working memory) but not the model
    assert peak_mib - base_mib < 0.5 * model_mib, (peak_mib, base_mib, model_mib)
