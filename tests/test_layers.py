"""Data flows one way: read -> plan -> quantize -> write. Every import in qtool/ (function-level ones too)
goes down the layers, never up:

    cli                                   parsing and printing
    convert, eval (the pipelines)         read -> plan -> quantize -> write
    analysis                              inspect's figures, what-if, gates
    plan                                  which type each tensor gets
    quantizers                            the type registry and presets
    formats, archs                        readers and writers; model families
    kernels                               Numba only: import nothing of qtool (nor gguf)

``qtool.errors`` may be imported by every layer but the kernels; ``qtool.testing`` is test support that
nothing in qtool imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PKG = ROOT / "qtool"

#: layer of each top-level part of the package; a module may import its own layer or any lower one
RANK = {
    "kernels": 0,
    "errors": 1,
    "formats": 2, "archs": 2,
    "quantizers": 3,
    "plan": 4,
    "analysis": 5,
    "convert": 6, "eval": 6, "pipeline": 6,
    "cli": 7, "__main__": 7,
    "__init__": 7,
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    return ".".join(rel.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    mod = _module_name(path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package (an __init__ counts as a module)
                base = mod.split(".")[: -node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            if target in ("qtool",):  # `from qtool import kernels`
                out.extend((node.lineno, f"qtool.{a.name}") for a in node.names)
    return out


MODULES = sorted(p for p in PKG.rglob("*.py") if "testing" not in p.relative_to(PKG).parts)


def test_every_part_has_a_layer():
    parts = {_part(_module_name(p)) for p in MODULES}
    assert parts <= set(RANK), f"parts of qtool with no layer in this test: {sorted(parts - set(RANK))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_down_the_layers(path):
    mod = _module_name(path)
    here = _part(mod)
    bad = []
    for line, target in _imports(path):
        if target == "qtool.testing" or target.startswith("qtool.testing."):
            bad.append(f"line {line}: {target} (test support)")
            continue
        if here == "kernels":
            if (target.startswith("qtool") and not target.startswith("qtool.kernels")) or target.split(".")[0] == "gguf":
                bad.append(f"line {line}: {target} (kernels import nothing of qtool, nor gguf)")
            continue
        if not target.startswith("qtool.") or target == "qtool":
            continue
        there = _part(target)
        if there not in RANK:
            continue  # caught by test_every_part_has_a_layer
        if RANK[there] > RANK[here]:
            bad.append(f"line {line}: {target} ({there} is above {here})")
    assert not bad, f"{path.relative_to(PKG.parent)} imports up the layers:\n  " + "\n  ".join(bad)


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The check is not vacuous: a kernel importing qtool.errors and a reader importing the CLI fail it."""
    fake = tmp_path / "qtool"
    (fake / "kernels").mkdir(parents=True)
    (fake / "formats").mkdir()
    (fake / "kernels" / "k.py").write_text("def f():\n    from qtool.errors import QuantError\n")
    (fake / "formats" / "r.py").write_text("from ..cli import app\nimport gguf\n")
    monkeypatch.setattr(__import__(__name__), "PKG", fake)
    for path in (fake / "kernels" / "k.py", fake / "formats" / "r.py"):
        with pytest.raises(AssertionError, match="imports up the layers"):
            test_imports_go_down_the_layers(path)
