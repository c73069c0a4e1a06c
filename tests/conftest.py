"""Shared test fixtures and the oracle policy.

Tests that compare with ggml or run llama.cpp need llama-cpp-python 0.3.36 (the reference build). Where it
is missing they skip, so the suite still runs (the golden vectors in fixtures/golden keep byte identity
covered). With ``QTOOL_REQUIRE_ORACLE=1`` (set by .ci/run) such a skip is a failure instead: CI must never
go green because the oracle quietly did not load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qtool.testing import ggml

ROOT = Path(__file__).resolve().parent.parent

# the qtool commands the tests run keep what they read of tokenizers (formats.vocab_cache) in a folder of this
# session's, not in the user's cache
os.environ.setdefault("QTOOL_VOCAB_CACHE_DIR", tempfile.mkdtemp(prefix="qtool-test-vocab-"))

pytest_plugins = ["pytester"]

#: skip reasons that mean "the oracle is not there" (as opposed to a case that does not apply)
_ORACLE_MISSING = re.compile(r"oracle unavailable|could not import 'llama_cpp'|not installed|not exported here|could not be loaded")


def require_oracle() -> bool:
    return os.environ.get("QTOOL_REQUIRE_ORACLE", "") not in ("", "0")


def need_oracle() -> None:
    """Skip the calling test (or module) where the ggml oracle cannot be used; fail under QTOOL_REQUIRE_ORACLE=1."""
    problem = ggml.problem()
    if problem is not None:
        if require_oracle():
            pytest.fail(f"oracle unavailable under QTOOL_REQUIRE_ORACLE=1: {problem}", pytrace=False)
        pytest.skip(f"oracle unavailable: {problem}", allow_module_level=True)


@pytest.fixture
def oracle():
    """The ggml oracle module (qtool.testing.ggml), or a skip where it is missing."""
    need_oracle()
    return ggml


def pytest_collection_modifyitems(items):
    """A test that takes the ``oracle`` fixture carries the oracle marker (for -m oracle / -m 'not oracle')
    without a decorator of its own."""
    for item in items:
        if "oracle" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.oracle)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


#: English prose that the bundled model's byte-level BPE vocabulary tokenizes densely (eval, imatrix and
#: calibration texts repeat it)
PROSE = (
    "The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the morning light. "
    "A quantized model keeps fewer bits per weight than the original, and the question is how much of its "
    "judgement survives: which word it would put next, and how sure it is of it. "
)


def run_qtool(*args, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m qtool ARGS` from the checkout, output captured, without QTOOL_DEBUG's tracebacks."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("QTOOL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "qtool", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def edit_config(folder: Path, **changes) -> None:
    """Rewrite ``folder``/config.json with ``changes`` (a value of None removes the key)."""
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def write_gguf_py(path: Path, tensors: dict, setup=None) -> None:
    """A GGUF file written and quantized by gguf-py (not qtool): ``tensors`` maps names to (array, type);
    ``setup(writer)`` adds key/values."""
    import gguf
    from gguf import GGMLQuantizationType

    w = gguf.GGUFWriter(str(path), "llama")
    if setup is not None:
        setup(w)
    for name, (arr, qtype) in tensors.items():
        if qtype == GGMLQuantizationType.F32:
            w.add_tensor(name, arr)
        else:
            data = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def ggml_in_a_child(qtype, x, imatrix=None) -> subprocess.CompletedProcess:
    """ggml.quantize(qtype, x, imatrix) in a child process, so that where ggml aborts (GGML_ASSERT) the
    child dies, not the test run: the finished process, its stderr captured."""
    import io

    import numpy as np

    code = ("import io, sys, numpy as np; from qtool.testing import ggml; "
            "z = np.load(io.BytesIO(sys.stdin.buffer.read())); "
            "ggml.quantize(int(z['qtype']), z['x'], z['w'] if 'w' in z.files else None)")
    buf = io.BytesIO()
    np.savez(buf, qtype=np.int64(int(qtype)), x=x, **({} if imatrix is None else {"w": imatrix}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], input=buf.getvalue(), capture_output=True, env=env,
                          timeout=120)


def round_trip(qtype, shape: tuple[int, int] = (8, 512), seed: int = 31):
    """Seeded gaussian rows ``x`` and ``y``, what quantizing and dequantizing them as ``qtype`` gives back
    (checked to keep the shape, as float32)."""
    import numpy as np

    from qtool.quantizers import get

    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    q = get(qtype)
    y = q.dequantize(q.quantize(x))
    assert y.shape == x.shape and y.dtype == np.float32
    return x, y


def refuses(path, *fragments: str, name=None) -> str:
    """Opening ``path`` as a model raises one line of FormatError that names ``name`` (default: ``path``)
    and holds every fragment; returns the message."""
    from qtool.errors import FormatError
    from qtool.formats.source import open_model

    with pytest.raises(FormatError) as e:
        open_model(path)
    msg = str(e.value)
    assert str(name or path) in msg and "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    _fail_a_missing_oracle((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    _fail_a_missing_oracle((yield).get_result())


def _fail_a_missing_oracle(report) -> None:
    """Under QTOOL_REQUIRE_ORACLE=1, a skip for want of the oracle (a test's or a whole module's) fails."""
    if report.skipped and require_oracle() and _ORACLE_MISSING.search(_reason(report)):
        report.outcome = "failed"
        report.longrepr = f"oracle unavailable under QTOOL_REQUIRE_ORACLE=1: {_reason(report)}"


def _reason(report) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2])
    return str(lr)
