"""config.json as convert_hf_to_gguf reads it (``find_hparam``: the first key present wins), with typed
look-ups that name the file and the key when a value is not what it should be."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from qtool.errors import FormatError
from qtool.formats.source import read_json


_MISSING = object()


class Config:
    """A parsed config.json. ``text_config`` is lifted to the top level, as the reference converter does."""

    def __init__(self, path: Path, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise FormatError(f"{path}: is not a JSON object")
        text = data.get("text_config")
        if isinstance(text, dict):
            data = {**data, **text}
        self.path, self.data = Path(path), data

    @classmethod
    def read(cls, path: Path) -> "Config":
        return cls(path, read_json(path, "model config"))

    def find(self, keys: Iterable[str]) -> tuple[str | None, Any]:
        """(key, value) of the first key present (its value may be None), or (None, None)."""
        for k in keys:
            if k in self.data:
                return k, self.data[k]
        return None, None

    def int(self, keys: Iterable[str] | str, *, required: bool = False, positive: bool = True) -> int | None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        k, v = self.find(keys)
        if v is None:
            if required:
                raise FormatError(f"{self.path}: lacks {' / '.join(keys)}")
            return None
        if not isinstance(v, int) or isinstance(v, bool) or (positive and v <= 0) or v < 0:
            raise FormatError(f"{self.path}: {k} is {v!r}, not a {'positive' if positive else 'non-negative'} "
                              f"integer")
        return v

    def float(self, keys: Iterable[str] | str, section: dict[str, Any] | None = None,
              what: str = "") -> float | None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        src = self.data if section is None else section
        k = next((k for k in keys if k in src), None)
        v = src.get(k) if k is not None else None
        if v is None:
            return None
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise FormatError(f"{self.path}: {what}{k} is {v!r}, not a number")
        return float(v)

    def key_of(self, keys: Iterable[str]) -> str:
        """The key a value was read from (for messages): the first present, else all of them."""
        keys = list(keys)
        k, _ = self.find(keys)
        return k if k is not None else " / ".join(keys)
