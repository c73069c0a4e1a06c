"""`qtool convert --imatrix` against llama.cpp's llama_model_quantize given the same importance values.

llama.cpp's library takes the values directly (llama_model_imatrix_data); qtool reads them from a GGUF
imatrix file whose counts are 1, so both sides see the very same floats. The presets that refuse to run
without an importance matrix (IQ1_*, IQ2_*, IQ3_XXS/XS, Q2_K_S) and the ones whose kernels read it (Q4_K_M,
Q4_0, IQ4_XS) must give identical tensors; the metadata differs only by the quantize.imatrix.* keys that
llama-quantize (the tool, not the library) adds and qtool writes.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from conftest import need_oracle
from gguf import GGUFReader

from qtool.convert import convert
from qtool.quantizers import presets as P
from qtool.quantizers import registered
from qtool.testing.models import ModelSpec, write_imatrix_gguf, write_model

need_oracle()
import llama_cpp as lc  # noqa: E402
pytestmark = pytest.mark.oracle

SPEC = ModelSpec(n_layer=4, n_embd=256, n_ff=512, n_head=8, n_head_kv=2, n_vocab=64)
PRESETS = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S", "Q4_K_M", "Q4_0",
           "IQ4_XS"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("imatrix_vs_llama")
    path = write_model(d / "m.gguf", SPEC, seed=5)
    rng = np.random.default_rng(11)
    values = {}
    for t in GGUFReader(path).tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # numpy order
        if len(shape) < 2 or t.name.endswith("_norm.weight"):
            continue
        v = (rng.gamma(0.8, 1.0, shape[-1]) ** 2).astype(np.float32)
        v[rng.choice(v.size, 3, replace=False)] = 0  # dead columns, as real imatrices have
        values[t.name] = v
    imatrix = write_imatrix_gguf(d / "imatrix.gguf",
                                 {n: (v.reshape(1, -1), np.ones(1, np.float32)) for n, v in values.items()})
    return d, path, values, imatrix


def _llama_quantize(src: Path, dst: Path, preset: str, values: dict[str, np.ndarray]) -> None:
    params = lc.llama_model_quantize_default_params()
    params.ftype = int(P.get_preset(preset).ftype)
    params.nthread = 2
    keep, entries = [], []
    for name, v in values.items():
        raw = name.encode()
        keep += [raw, v]
        entries.append(lc.llama_model_imatrix_data(raw, v.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), v.size))
    entries.append(lc.llama_model_imatrix_data(None, None, 0))
    arr = (lc.llama_model_imatrix_data * len(entries))(*entries)
    params.imatrix = arr
    assert lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0


def _kv(reader: GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()
            if not k.startswith("GGUF.") and not k.startswith("quantize.imatrix.")}


@pytest.mark.parametrize("preset", PRESETS)
def test_imatrix_conversion_equals_llama(preset, model):
    d, src, values, imatrix = model
    theirs = d / f"llama-{preset}.gguf"
    _llama_quantize(src, theirs, preset, values)
    b = GGUFReader(theirs)
    missing = sorted({t.tensor_type.name for t in b.tensors} - {t.name for t in registered()})
    if missing:
        pytest.fail(f"{preset} uses {missing}, which qtool cannot quantize; take it off this list until it can")
    ours = convert(src, preset, d / f"qtool-{preset}.gguf", imatrix=imatrix, threads=2).output
    a = GGUFReader(ours)
    assert [(t.name, t.tensor_type) for t in a.tensors] == [(t.name, t.tensor_type) for t in b.tensors]
    bad = [t.name for t, u in zip(a.tensors, b.tensors) if not np.array_equal(t.data, u.data)]
    assert not bad, f"{preset}: {len(bad)} tensors differ from llama.cpp's, first {bad[:3]}"
    assert _kv(a) == _kv(b)
    assert a.fields["quantize.imatrix.entries_count"].contents() == len(values)
