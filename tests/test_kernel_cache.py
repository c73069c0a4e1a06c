"""Loading kernels from Numba's cache without refreshing the whole target context (qtool.kernels)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from conftest import ROOT
from qtool.quantizers import get

CHILD = """
import sys, numpy as np
from gguf import GGMLQuantizationType as T
import qtool.kernels
from qtool.quantizers import get
x = np.random.default_rng(7).standard_normal((6, 512)).astype(np.float32)
out = [get(T.Q4_K).quantize(x).tobytes().hex(), get(T.Q8_0).quantize(x).tobytes().hex()]
mm = np.memmap(sys.argv[1], np.float32, "w+", shape=x.shape)
mm[:] = x
assert get(T.Q8_0).quantize(mm[2:]).tobytes().hex() == out[1][2 * 2 * 544:]  # a map's rows, as convert passes them
loaded = 'numba.np.linalg' in sys.modules
masked = 'numpy.ma' in sys.modules
import numba
@numba.njit
def median(a):
    return np.median(a)
@numba.njit
def arrays(n):  # reference counting: arrays made, kept in a list, dropped
    kept = [np.ones(3) * i for i in range(n)]
    return np.zeros(n).sum() + sum([a.sum() for a in kept])
assert arrays(4) == 18.0
print(qtool.kernels.LAZY_REFRESH, loaded, float(median(np.arange(5.0))), masked, qtool.kernels.RUNTIME_FROM)
print(*out)
from qtool.kernels.common import first_nonfinite_row
print(first_nonfinite_row._cache._cache_path)
"""


def _python(code: str, *args, cwd=ROOT, env: dict | None = None) -> str:
    """`python -c code args` in a fresh process (with this checkout importable unless ``env`` says otherwise):
    its stdout, after it succeeded."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if env is None else env
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _child(tmp_path) -> list[str]:
    return _python(CHILD, tmp_path / "x.f32").split("\n")


def test_cached_kernels_load_without_the_lowering_registries_and_give_the_same_bytes(tmp_path):
    x = np.random.default_rng(7).standard_normal((6, 512)).astype(np.float32)
    expected = [get(T.Q4_K).quantize(x).tobytes().hex(), get(T.Q8_0).quantize(x).tobytes().hex()]
    _child(tmp_path)  # the first child may compile into the cache; the second loads from it
    flags, blocks = _child(tmp_path)[:2]
    lazy, loaded, median, masked, runtime = flags.split()
    assert lazy == "True"
    assert runtime == "cache", "Numba's runtime functions were compiled again, not loaded from the cache"
    assert loaded == "False", "loading cached kernels imported Numba's lowering registries"
    assert masked == "False", "typing the kernels' arrays imported numpy.ma"
    assert float(median) == 2.0, "a fresh function no longer compiles after a lazy cache load"
    assert blocks.split() == expected


def test_a_damaged_runtime_cache_is_compiled_again(tmp_path):
    """A runtime blob cut short fails its checksum: the next process compiles the functions (and works) and
    writes the blob again, which the one after loads."""
    from pathlib import Path

    folder = Path(_child(tmp_path)[2])
    blobs = list(folder.glob("qtool-nrt-*.bin"))
    assert blobs, f"no runtime blob in {folder}"
    for b in blobs:
        b.write_bytes(b.read_bytes()[:-100])
    assert _child(tmp_path)[0].split()[4] == "compiled"
    assert _child(tmp_path)[0].split()[4] == "cache"


def test_arrays_are_typed_as_numba_types_them(tmp_path):
    """qtool's rule for plain ndarrays gives Numba's types (layout, dtype, read-only), and hands a masked
    array to Numba's own rule, which refuses it as before."""
    import numba
    from numba.core.typing.typeof import typeof

    import qtool.kernels

    assert qtool.kernels.PLAIN_ARRAYS
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    frozen = base.copy()
    frozen.flags.writeable = False
    for a, want in ((base, "array(float32, 2d, C)"), (base.T, "array(float32, 2d, F)"),
                    (base[:, ::2], "array(float32, 2d, A)"), (frozen, "readonly array(float32, 2d, C)"),
                    (np.zeros(3, np.uint8), "array(uint8, 1d, C)"), (np.zeros((), np.float64), "array(float64, 0d, C)"),
                    (np.memmap(tmp_path / "m", np.float32, "w+", shape=(2, 8))[1:], "array(float32, 2d, C)")):
        assert str(typeof(a)) == want
    try:
        typeof(np.ma.array([1.0]))
    except numba.core.errors.NumbaTypeError as e:
        assert "MaskedArray" in str(e)
    else:
        raise AssertionError("a masked array was typed")


# -- what a converting process leaves unimported: Numba's array library, yaml, gguf's model-card and vocabulary
# -- modules (qtool.kernels' and qtool's start-up rules) ---------------------------------------------------------

CONVERT_CHILD = """
import sys
from qtool.cli.app import main
try:
    main(["convert", sys.argv[1], "--type", sys.argv[3], "-o", sys.argv[2], "--quiet"])
except SystemExit as e:
    assert not e.code, e.code
names = ("numba.np.arrayobj", "yaml", "gguf.metadata", "gguf.vocab", "sentencepiece", "qtool.analysis.mix",
         "gguf.gguf_writer")
print("imported:", *(name for name in names if name in sys.modules))
"""


def _convert_child(src, out, qtype: str) -> list[str]:
    return _python(CONVERT_CHILD, src, out, qtype).splitlines()[-1].split()[1:]


def test_a_conversion_from_gguf_imports_only_what_it_uses(tmp_path):
    """Converting a GGUF with cached kernels imports none of Numba's array library (the kernels' environments),
    yaml (Numba's config file reader), gguf's model-card, vocabulary and writer modules (sentencepiece) nor the
    mixer, and writes the file an in-process conversion writes."""
    from qtool.cli.app import main

    src = tmp_path / "f32.gguf"
    main(["convert", str(ROOT / "fixtures" / "tiny-llama-f32"), "--type", "F32", "-o", str(src), "--quiet"])
    for qtype in ("Q8_0", "Q4_K_M"):
        want = tmp_path / f"want-{qtype}.gguf"
        main(["convert", str(src), "--type", qtype, "-o", str(want), "--quiet"])
        _convert_child(src, tmp_path / "warm.gguf", qtype)  # may compile into the cache
        got = tmp_path / f"got-{qtype}.gguf"
        assert _convert_child(src, got, qtype) == [], "a conversion from GGUF imported modules it does not use"
        assert got.read_bytes() == want.read_bytes()


PRELOAD_CHILD = """
import sys
import qtool
thread = qtool.preload_libraries()
thread.join()
maps = open("/proc/self/maps").read()
print("libllvmlite.so" in maps, "llvmlite" in sys.modules, "numpy" in sys.modules)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_preloading_maps_the_libraries_without_importing_their_modules():
    """qtool.preload_libraries maps LLVM's library (the loader's work done ahead) and imports nothing: the
    stored kernels' runtime finds it mapped."""
    assert _python(PRELOAD_CHILD).split() == ["True", "False", "False"]


ENV_MODULE = """
import numpy as np
import pytest
import numba

@numba.njit(cache=True)
def make(n):
    a = np.empty(n, np.float32)
    for i in range(n):
        a[i] = 0.5 * i
    return a
"""

ENV_CHILD = """
import sys
with_qtool = sys.argv[1] == "qtool"
if with_qtool:
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from qtool.quantizers import get
    get(T.Q8_0).quantize(np.ones((1, 32), np.float32))  # a cached kernel that allocates: environments rebuilt
import envmod
out = envmod.make(5)
print(with_qtool and __import__("qtool.kernels").kernels.LAZY_ENVIRONMENTS, "numba.np.arrayobj" in sys.modules,
      sum(envmod.make.stats.cache_hits.values()), out.tolist())
"""


def test_environments_rebuilt_without_numba_modules_still_cache_and_load(tmp_path):
    """A process that rebuilt cached environments without importing numba.np.arrayobj still compiles and caches
    new functions that allocate; their cache files load in processes with qtool (still without numba.np.arrayobj)
    and without it (Numba's own rule, which imports it: the files name Numba's rebuild function, not qtool's)."""
    (tmp_path / "envmod.py").write_text(ENV_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def child(mode: str) -> list[str]:
        return _python(ENV_CHILD, mode, cwd=tmp_path, env=env).strip().split(maxsplit=3)

    values = "[0.0, 0.5, 1.0, 1.5, 2.0]"
    assert child("qtool") == ["True", "True", "0", values]  # compiled here (compiling imports it), then cached
    assert child("qtool") == ["True", "False", "1", values]
    assert child("plain") == ["False", "True", "1", values]
    files = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*.nbc"))
    assert b"numba.core.environment" in files and b"_environments_without_numba_modules" not in files


YAML_CHILD = """
import sys
import qtool.kernels
from numba.core import config
print(type(config.yaml).__name__ == "module" and config.yaml is not sys.modules.get("yaml"), config.DEBUG_CACHE)
"""


def test_numba_config_file_is_read_though_yaml_is_imported_on_demand(tmp_path):
    """With yaml a stand-in while Numba imports (qtool._StandIns), a .numba_config.yaml in the working
    folder still sets Numba's configuration (yaml is imported then); without one, yaml is never imported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_DEBUG_CACHE", None)

    def child() -> list[str]:
        return _python(YAML_CHILD + "import sys; print('yaml' in sys.modules)", cwd=tmp_path, env=env).split()

    assert child() == ["True", "0", "False"]
    (tmp_path / ".numba_config.yaml").write_text("debug_cache: 1\n")
    assert child() == ["True", "1", "True"]
    assert _python(MODEL_CARD_CHILD, tmp_path, env=env).split() == ["False", "test-card-model", "True"]


MODEL_CARD_CHILD = """
import sys
from pathlib import Path
import qtool
import gguf
folder = Path(sys.argv[1])
(folder / "README.md").write_text("---\\nmodel_name: test-card-model\\nlicense: mit\\n---\\n# card\\n")
before = "yaml" in sys.modules
meta = gguf.Metadata.load(None, folder, None, 0)  # gguf's model-card reader parses the YAML header
print(before, meta.name, "yaml" in sys.modules)
"""


SPM_CHILD = """
import sys
from pathlib import Path
import qtool
from gguf import SpecialVocab, SentencePieceVocab
import gguf.vocab
before = "sentencepiece" in sys.modules
vocab = SentencePieceVocab(Path(sys.argv[1]))  # gguf's own reader: its processor, imported on this first use
processor = vocab.sentencepiece_tokenizer
import sentencepiece
print(before, type(processor) is sentencepiece.SentencePieceProcessor,
      isinstance(processor, gguf.vocab.SentencePieceProcessor), vocab.vocab_size)
"""


def test_sentencepiece_is_imported_when_gguf_s_vocabulary_uses_it():
    """gguf's vocabulary module (SpecialVocab, which every Hugging Face conversion uses) takes sentencepiece's
    processor class as a name imported on first use (qtool._LazyName): sentencepiece is not imported for it,
    and gguf's SentencePiece reader still works with the real class."""
    need = importlib.util.find_spec("sentencepiece")
    if need is None:
        pytest.skip("sentencepiece is not installed")
    out = _python(SPM_CHILD, ROOT / "fixtures" / "tokenizers" / "mistral-v0.1").split()
    assert out == ["False", "True", "True", "32000"]


TYPER_CHILD = """
import sys
import qtool.cli.app
import typer.main, typer.core
print("subprocess" in sys.modules, "difflib" in sys.modules)
print(type(typer.main.subprocess).__name__, typer.core.get_close_matches("--typ", ["--type", "--quiet"]))
import subprocess, difflib
print(typer.main.subprocess.Popen is subprocess.Popen, "difflib" in sys.modules)
"""


def test_typer_imports_subprocess_and_difflib_on_first_use():
    """The command's start-up leaves subprocess and difflib unimported (typer's main and core modules take
    stand-ins): an option misspelt still gets its suggestion, and the real modules arrive on first use."""
    out = _python(TYPER_CHILD).splitlines()
    assert out[0] == "False False"
    assert out[1] == "module ['--type']"
    assert out[2] == "True True"
    done = subprocess.run([sys.executable, "-m", "qtool", "convert", str(ROOT / "fixtures" / "tiny-llama"), "--typ",
                           "Q8_0"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "No such option: --typ" in done.stderr and "--type" in done.stderr


GGUF_CHILD = """
import sys
first = sys.argv[1]
if first != "plain":
    import qtool
import gguf
if first == "dir":  # dir() first: it too runs gguf's __init__
    print(",".join(sorted(n for n in dir(gguf) if not n.startswith("_"))))
    raise SystemExit
from gguf import GGMLQuantizationType, GGUFWriter, Keys, get_tensor_name_map
early = sorted(m for m in ("gguf.metadata", "gguf.vocab", "gguf.gguf_reader", "yaml", "sentencepiece")
               if m in sys.modules)
assert GGMLQuantizationType is gguf.constants.GGMLQuantizationType and GGUFWriter is gguf.gguf_writer.GGUFWriter
reader = gguf.GGUFReader  # not in the constants, the writer or the name maps: gguf's own __init__ runs
try:
    gguf.no_such_name
except AttributeError:
    pass
else:
    raise AssertionError("a missing name was found")
import gguf.quants
print(",".join(early) or "-", "gguf.metadata" in sys.modules, reader is gguf.gguf_reader.GGUFReader,
      ",".join(sorted(n for n in vars(gguf) if not n.startswith("_"))))
"""


def test_gguf_package_is_initialised_on_demand_with_the_same_names():
    """After ``import qtool``, gguf's constants, writer and tensor-name maps come without its __init__ (no yaml,
    sentencepiece, reader); any other name runs gguf's __init__, after which the package holds the same public
    names as a plain ``import gguf``."""
    def child(mode: str) -> list[str]:
        return _python(GGUF_CHILD, mode).split()

    lazy, plain = child("qtool"), child("plain")
    assert lazy[:3] == ["-", "True", "True"]
    assert plain[:3] == ["gguf.gguf_reader,gguf.metadata,gguf.vocab,sentencepiece,yaml", "True", "True"]
    assert lazy[3] == plain[3]
    assert child("dir") == [plain[3]]


CHECKS_CHILD = """
import sys, tempfile
made = []
plain = tempfile.TemporaryFile
def counting(*a, **k):
    made.append(k.get("dir"))
    return plain(*a, **k)
tempfile.TemporaryFile = counting
import qtool.kernels
import qtool.kernels.legacy, qtool.kernels.kquants32  # some hundred jitted functions, one cache folder
from numba.core.caching import _CacheLocator
class Bad(_CacheLocator):
    def get_cache_path(self):
        return sys.argv[1]
    def get_source_stamp(self):
        return None
    def get_disambiguator(self):
        return ""
    @classmethod
    def from_function(cls, py_func, py_file):
        return cls()
refused = 0
for _ in range(2):
    try:
        Bad().ensure_cache_path()
    except OSError:
        refused += 1
print(qtool.kernels.CACHE_FOLDERS_ONCE, len(made), len(set(made)), refused)
"""


def test_a_cache_folder_is_checked_once_per_process(tmp_path):
    """Numba checks a cache folder by writing a temporary file in it for every jitted function; qtool's
    rule does it once per folder that passed, and checks a folder that failed every time."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert _python(CHECKS_CHILD, blocked / "cache").split() == ["True", "1", "1", "2"]


EXTENSION_LIBRARY_CHILD = """
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from qtool.quantizers import get
get(T.Q8_0).quantize(np.ones((1, 32), np.float32))
from llvmlite.binding import ffi
print(sum(a.__module__ == "numba.core.base" for a, _ in ffi.lib._lock._cblist))
"""


def test_the_command_leaves_numba_extensions_unloaded_a_library_process_loads_them(tmp_path):
    """``qtool`` itself (run(): console script, python -m qtool) does not look for Numba's third-party
    extensions, and never imports importlib.metadata for it, nor reports LLVM's calls as Numba events; a
    process that imports qtool as a library still gets Numba's extensions initialised before its first
    kernel call, and the events."""
    marker = tmp_path / "loaded.txt"
    (tmp_path / "fakeext.py").write_text(f"def init():\n    open({str(marker)!r}, 'a').write('init\\n')\n")
    info = tmp_path / "fakeext-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeext\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[numba_extensions]\ninit = fakeext:init\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    src = tmp_path / "f32.gguf"
    from qtool.cli.app import main

    main(["convert", str(ROOT / "fixtures" / "tiny-llama-f32"), "--type", "F32", "-o", str(src), "--quiet"])
    # the command ends its process itself (cli.app._end_process): the probe reports from an exit handler
    probe = ("import atexit, runpy, sys; sys.argv = ['qtool'] + sys.argv[1:]\n"
             "def report():\n"
             "    import numba.core.entrypoints as ep\n    from llvmlite.binding import ffi\n"
             "    print(ep._already_initialized, 'importlib.metadata' in sys.modules,\n"
             "          sum(a.__module__ == 'numba.core.base' for a, _ in ffi.lib._lock._cblist))\n"
             "atexit.register(report)\n"
             "runpy.run_module('qtool', run_name='__main__')\n")
    out = _python(probe, "convert", src, "--type", "Q8_0", "-o", tmp_path / "out.gguf", "--quiet", cwd=tmp_path,
                  env=env)
    assert out.splitlines()[-1].split() == ["True", "False", "0"]
    assert (tmp_path / "out.gguf").is_file() and not marker.exists()
    out = _python(EXTENSION_LIBRARY_CHILD, cwd=tmp_path, env=env)
    assert marker.read_text() == "init\n"
    assert out.split() == ["1"]


STAMP_CHILD = """
import numpy as np
import pytest
import qtool.kernels.common as c
c.first_nonfinite_row(np.zeros((2, 4), np.float32))
s = c.first_nonfinite_row.stats
print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))
"""


def test_an_edit_to_any_kernel_file_recompiles_the_cached_kernels(tmp_path):
    """A cached kernel holds the code of the jitted functions it calls from other kernel modules; Numba
    alone keeps it while its own module is unchanged. In a copy of the package: compiled once, loaded from
    the cache next time, and compiled again after an edit to another kernel file (lattice.py, which
    common.py does not even import); an edit outside the kernels folder leaves it cached."""
    import shutil

    shutil.copytree(ROOT / "qtool", tmp_path / "qtool", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)

    def hits_misses() -> tuple[int, ...]:
        return tuple(int(v) for v in _python(STAMP_CHILD, cwd=tmp_path, env=env).split())

    assert hits_misses() == (0, 1)
    assert hits_misses() == (1, 0)
    with open(tmp_path / "qtool" / "kernels" / "lattice.py", "a") as f:
        f.write("\n# edited\n")
    assert hits_misses() == (0, 1)
    assert hits_misses() == (1, 0)
    with open(tmp_path / "qtool" / "plan.py", "a") as f:
        f.write("\n# edited\n")
    assert hits_misses() == (1, 0)
