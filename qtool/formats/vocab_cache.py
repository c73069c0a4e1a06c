"""What reading a model folder's tokenizer added to its metadata, kept for the next command on that folder.

Reading a Hugging Face tokenizer costs a conversion ~0.15-0.4 s before its first tensor (tokenizer.json
parsed whole, the ``tokenizers`` package imported and a tokenizer built for the pre-tokenizer check, 10^5
strings encoded for the file), and a user converting one model to several types pays it each time. The
``qtool`` command (cli.app.run, `enable`) keeps the tokenizer.* keys, notes and problems that
vocab.add_tokenizer gave, under a key naming everything they came from: the folder's files other than the
weights (name and sha256 of the contents: an edited tokenizer file is a new key; a file over 128 MiB by its
size and modification time), config.json's contents, the architecture, the tokenizer kind and forced
pre-tokenizer asked for, qtool's own source for reading tokenizers and the installed gguf, tokenizers and
sentencepiece. A later command with the same key takes them as they were; any other reads the folder. String
arrays are kept with their GGUF bytes, which the writer copies (formats.gguf_in.PackedStrings). A library
caller (and the tests) reads the folder every time.

$QTOOL_VOCAB_CACHE=0 turns it off; entries live in $QTOOL_VOCAB_CACHE_DIR, else
$XDG_CACHE_HOME/qtool/vocab (~/.cache/qtool/vocab), the `_KEEP` last used.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Callable

_state = {"enabled": False}
_KEEP = 16
#: files of a model folder that hold weights, not tokenizer data: left out of the key (they are large,
#: and converting a folder rewrites none of them)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx", ".tflite",
                    ".npz", ".ot")
#: a larger file of the folder is keyed by its size and modification time, not hashed (the largest tokenizer.json
#: files are ~35 MB)
_HASHED_BYTES = 128 << 20
_VERSION = 1


def enable() -> None:
    """Keep and reuse entries in this process (the ``qtool`` command's), unless $QTOOL_VOCAB_CACHE is 0."""
    _state["enabled"] = os.environ.get("QTOOL_VOCAB_CACHE", "1") != "0"


def folder() -> Path:
    chosen = os.environ.get("QTOOL_VOCAB_CACHE_DIR")
    if chosen:
        return Path(chosen)
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(home) / "qtool" / "vocab"


def add_tokenizer(meta, folder_path: Path, config: dict[str, Any], kind: str, pre_tokenizer: str | None,
                  read: Callable[[], str | None]) -> str | None:
    """``read()`` (vocab.add_tokenizer on ``meta``), or what it added to ``meta`` when the same folder was read
    before; returns what ``read`` returned."""
    if not _state["enabled"]:
        return read()
    try:
        path = folder() / f"{_key(meta, folder_path, config, kind, pre_tokenizer)}.pkl"
    except (OSError, TypeError, ValueError):  # a file that cannot be read, a config json cannot spell
        return read()
    entry = _load(path)
    if entry is not None:
        _apply(meta, entry)
        return entry["returned"]
    before = (dict(meta.kv), len(meta.problems), len(meta.notes), meta.loadable)
    with _logged() as records:
        returned = read()
    entry = _entry(meta, before, returned)
    entry["logged"] = [(r.name, r.levelno, r.getMessage()) for r in records]
    _store(path, entry)
    return returned


class _logged:
    """The records qtool's loggers emit inside the block (a kept entry logs them again when it is used:
    the pre-tokenizer warning), which still reach their handlers."""

    def __enter__(self) -> list:
        import logging

        self.records: list = []
        records = self.records

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        self.handler = Keep(logging.WARNING)
        self.logger = logging.getLogger("qtool")
        self.logger.addHandler(self.handler)
        return records

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)


def _key(meta, folder_path: Path, config: dict, kind: str, pre_tokenizer: str | None) -> str:
    import json

    files = []
    for entry in sorted(os.scandir(folder_path), key=lambda e: e.name):
        if entry.is_file() and not entry.name.endswith(_WEIGHT_SUFFIXES):
            st = entry.stat()
            if st.st_size > _HASHED_BYTES:  # not a tokenizer file (an exported model of another format)
                files.append((entry.name, st.st_size, st.st_mtime_ns))
                continue
            digest = hashlib.sha256()  # ~3 ms for a 50k-token tokenizer.json, ~10 ms for 150k
            with open(entry.path, "rb") as f:  # (hashlib.file_digest is Python 3.11's; qtool runs on 3.10)
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            files.append((entry.name, digest.hexdigest()))
    here = Path(__file__).parent
    sources = [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
               for p in (here / "vocab.py", here / "vocab_cache.py")]
    described = repr((_VERSION, str(Path(folder_path).resolve()), files, json.dumps(config, sort_keys=True),
                      meta.kv.get("general.architecture"), kind, pre_tokenizer, sources,
                      _version("gguf"), _version("tokenizers"), _version("sentencepiece")))
    return hashlib.sha256(described.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _version(package: str) -> tuple | None:
    """The installed package's __init__ file (path, size, modification time): a reinstall changes it. Without
    importlib.metadata, whose import alone costs ~15 ms."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    st = os.stat(spec.origin)
    return spec.origin, st.st_size, st.st_mtime_ns


def _entry(meta, before, returned) -> dict:
    """What ``read`` changed in ``meta``: keys added or replaced (in order), problems and notes appended."""
    kv, n_problems, n_notes, loadable = before
    from qtool.formats.gguf_out import _pack_strings

    added = []
    for key, value in meta.kv.items():
        if key in kv and kv[key] is value:
            continue
        packed = _pack_strings(value) if isinstance(value, list) and value and isinstance(value[0], str) else None
        added.append((key, list(value) if packed is not None else value, packed, meta.types[key],
                      meta.sub_types.get(key)))
    return {"added": added, "problems": meta.problems[n_problems:], "notes": meta.notes[n_notes:],
            "loadable": meta.loadable if meta.loadable != loadable else None, "returned": returned}


def _apply(meta, entry: dict) -> None:
    from qtool.formats.gguf_in import PackedStrings

    for key, value, packed, vtype, sub_type in entry["added"]:
        meta.add(key, PackedStrings(value, packed) if packed is not None else value, vtype, sub_type)
    meta.problems.extend(entry["problems"])
    meta.notes.extend(entry["notes"])
    if entry["loadable"] is not None:
        meta.loadable = entry["loadable"]
    if entry["logged"]:
        import logging

        for name, level, message in entry["logged"]:
            logging.getLogger(name).log(level, "%s", message)


def _load(path: Path) -> dict | None:
    from qtool.kernels import read_checked

    payload = read_checked(str(path))
    if payload is None:
        return None
    try:
        entry = pickle.loads(payload)
    except Exception:  # noqa: BLE001 (another Python's pickle, a damaged file: read the folder)
        return None
    if not isinstance(entry, dict) or set(entry) != {"added", "problems", "notes", "loadable", "returned", "logged"}:
        return None
    try:
        os.utime(path)  # newest used: kept longest
    except OSError:
        pass
    return entry


def _store(path: Path, entry: dict) -> None:
    from qtool.kernels import write_checked

    try:
        write_checked(str(path), pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL))
        kept = sorted(path.parent.glob("*.pkl"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in kept[_KEEP:]:
            old.unlink()
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass  # a read-only or full cache folder: read the folder next time too
