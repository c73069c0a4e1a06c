"""The README's commands work as written.

* Its first command block (install, convert the bundled model, inspect it) runs in a temporary copy of
  fixtures/: every qtool command exits 0 and every file it names exists afterwards. The `pip install .`
  part is skipped (the suite runs from the checkout); instead the `qtool` script it would install is
  checked to be the entry point `python -m qtool` runs.
* Its test command is exactly the command CI (.ci/run) runs.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

README = ROOT / "README.md"
COMMAND_LANGS = {"sh", "bash", "shell", "console"}

#: file-like arguments: a path with a folder, or a name with one of these endings
_FILE_LIKE = re.compile(r"/|\.(gguf|safetensors|json|dat)$")


def command_blocks(text: str) -> list[str]:
    """The fenced blocks marked as shell, in order."""
    blocks = re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [body for lang, body in blocks if lang in COMMAND_LANGS]


def commands(block: str) -> list[list[str]]:
    """A shell block as a list of simple commands: continuation lines joined, comments dropped, split
    at `&&` and line ends. (The README's blocks use nothing more of the shell than that.)"""
    text = block.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        cmd: list[str] = []
        for w in words + ["&&"]:
            if w == "&&":
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


def test_first_block_runs(tmp_path):
    block = command_blocks(README.read_text())[0]
    cmds = commands(block)
    assert {c[0] for c in cmds} <= {"pip", "qtool"}, f"the quickstart runs more than pip and qtool: {cmds}"
    qtool_cmds = [c for c in cmds if c[0] == "qtool"]
    assert qtool_cmds, "the quickstart runs no qtool command"

    shutil.copytree(ROOT / "fixtures", tmp_path / "fixtures")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("QTOOL_DEBUG", None)
    for cmd in qtool_cmds:
        r = subprocess.run([sys.executable, "-m", "qtool", *cmd[1:]], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{shlex.join(cmd)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert r.stdout.strip(), f"{shlex.join(cmd)} printed nothing"

    named = [a for c in qtool_cmds for a in c[1:] if not a.startswith("-") and _FILE_LIKE.search(a)]
    assert named, "the quickstart names no file"
    missing = [a for a in named if not (tmp_path / a).exists()]
    assert not missing, f"named in the README but not there after running it: {missing}"
    for a in named:
        if a.endswith(".gguf"):
            assert (tmp_path / a).read_bytes()[:4] == b"GGUF", f"{a} is not a GGUF file"


def test_installed_script_is_the_module_entry_point():
    # `pip install .` gives a `qtool` script; the test above runs `python -m qtool` instead: the same function
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["qtool"].partition(":")
    entry = getattr(importlib.import_module(module), func)
    main_src = (ROOT / "qtool" / "__main__.py").read_text()
    assert f"from {module} import {func}" in main_src or f"import {module}" in main_src, main_src
    assert callable(entry)


def _pytest_command(lines: list[list[str]]) -> list[str]:
    found = [c for c in lines if "pytest" in c]
    assert len(found) == 1, f"expected one command running pytest, got {found}"
    return found[0]


def test_readme_test_command_is_what_ci_runs():
    readme_blocks = [b for b in command_blocks(README.read_text()) if "pytest" in b]
    assert readme_blocks, "the README gives no test command"
    readme_cmds = commands(readme_blocks[0])
    ci_cmds = commands((ROOT / ".ci" / "run").read_text())
    # the whole README line (install and test) is one line of .ci/run
    readme_line = [" ".join(c) for c in readme_cmds]
    ci_lines = [" ".join(c) for c in ci_cmds]
    assert _pytest_command(readme_cmds) == _pytest_command(ci_cmds)
    start = ci_lines.index(readme_line[0]) if readme_line[0] in ci_lines else -1
    assert start >= 0 and ci_lines[start:start + len(readme_line)] == readme_line, \
        f"README: {readme_line}\n.ci/run: {ci_lines}"
