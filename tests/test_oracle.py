"""The oracle itself: the pinned reference build, the QTOOL_REQUIRE_ORACLE policy, and the client's crash
isolation (a crash in llama.cpp is one failed check, never the end of the test run)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from qtool.testing import client, ggml


@pytest.mark.oracle
def test_the_oracle_is_the_pinned_reference_build(oracle):
    import llama_cpp

    assert ggml.installed_version() == ggml.PINNED_VERSION == "0.3.36"
    assert llama_cpp.__version__ == ggml.PINNED_VERSION
    assert Path(ggml.library_path()).parent == Path(llama_cpp.__file__).parent / "lib"


_POLICY_TESTS = """
import pytest
from conftest import need_oracle

def test_needs_the_oracle():
    need_oracle()

def test_skips_like_an_old_copy():
    pytest.skip("llama-cpp-python (the ggml oracle) is not installed")

def test_skips_for_another_reason():
    pytest.skip("Q8_K ignores the importance vector")
"""


def _policy_run(pytester, monkeypatch, require: str):
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_policy=_POLICY_TESTS)
    monkeypatch.setenv("QTOOL_GGML_LIB", str(pytester.path / "no-such-libggml-base.so"))
    monkeypatch.setenv("QTOOL_REQUIRE_ORACLE", require)
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")


def test_a_missing_oracle_skips_by_default(pytester, monkeypatch):
    result = _policy_run(pytester, monkeypatch, "")
    result.assert_outcomes(skipped=3)


def test_require_oracle_turns_a_missing_oracle_into_a_failure(pytester, monkeypatch):
    result = _policy_run(pytester, monkeypatch, "1")
    result.assert_outcomes(failed=2, skipped=1)  # a skip for another reason stays a skip
    result.stdout.fnmatch_lines(["*oracle unavailable under QTOOL_REQUIRE_ORACLE=1*"])


def test_a_crash_in_the_client_is_one_failure_naming_the_signal(monkeypatch, tmp_path):
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(client, "CHILD", [sys.executable, "-c", crash])
    with pytest.raises(client.ClientFailed, match=r"model\.gguf: the process died of SIGSEGV"):
        client.logits(tmp_path / "model.gguf", [1, 2, 3])


def test_a_client_error_is_one_failure_with_its_message(tmp_path):
    if not client.available():
        pytest.skip("oracle unavailable: llama-cpp-python is not installed")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(client.ClientFailed, match=r"model\.gguf: exit status 2"):
        client.logits(bad, [1, 2, 3])


@pytest.mark.oracle
def test_the_client_runs_a_model_without_extra_buffer_types(oracle, tmp_path):
    """The bundled model in F32 and Q8_0 runs in the child; its logits are finite and agree roughly."""
    from qtool.convert import convert

    f32, q8 = tmp_path / "f32.gguf", tmp_path / "q8.gguf"
    convert(ROOT / "fixtures" / "tiny-llama-f32", "F32", f32)
    convert(ROOT / "fixtures" / "tiny-llama-f32", "Q8_0", q8)
    tokens = [318, 84, 104, 101]
    res = client.run(f32, logits=[tokens], tokenize=[(b"The", True, True)], detokenize=[[84, 104, 101]])
    assert res.logits[0].shape == (len(tokens), res.n_vocab) and np.isfinite(res.logits[0]).all()
    assert res.tokens[0][0] == 318 and res.pieces[0] == b"The"
    other = client.logits(q8, tokens)
    err = np.linalg.norm(other - res.logits[0]) / np.linalg.norm(res.logits[0])
    assert err < 0.15
