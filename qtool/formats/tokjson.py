"""tokenizer.json read in bulk: its vocabulary and merges as GGUF string records, the rest parsed by json.

A tokenizer.json is a small document around two large values, ``model.vocab`` (10^5 ``"text": id`` members)
and ``model.merges`` (10^5 strings or pairs). json.loads makes a Python object of each entry (~0.1 s for
Qwen2's 151k tokens), and the GGUF then wants them back as bytes. `read` finds the two values and decodes
them into GGUF string records (kernels.jsontext, one walk; `Texts`: the bytes the GGUF holds, hashed for
lookups), and parses the document without them with json: ``model.vocab`` is ``{}`` and ``model.merges``
``[]`` in `BulkTokenizerJson.rest`. The kernels accept only text that json.loads reads to the same strings
and ids; where they do not (an escaped key ``model``, a float id, a surrogate without its pair, a
duplicate text, ...) `read` returns None and the caller parses the file with json as before, which also
reports what is wrong with a malformed file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from qtool.formats.gguf_in import StringRecords


@dataclass
class Texts:
    """``len(starts) - 1`` UTF-8 strings as GGUF string records (u64 length, the bytes) one after another in
    ``records``, record k at ``starts[k]`` (the last start is the end), with their FNV-1a hashes (None where
    they are looked up by other hashes)."""

    records: np.ndarray  # uint8
    starts: np.ndarray  # int64 [n + 1]
    hashes: np.ndarray | None  # uint64 [n]

    def __len__(self) -> int:
        return self.starts.size - 1

    def raw(self, k: int) -> bytes:
        return self.records[self.starts[k] + 8:self.starts[k + 1]].tobytes()

    def text(self, k: int) -> str:
        return self.raw(k).decode("utf-8")

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts) - 8

    def strings(self) -> list[str]:
        """Every string (one UTF-8 decode for all)."""
        return StringRecords(self.records.tobytes(), len(self)).strings() if len(self) else []

    def among(self, texts: set[str], hashes: np.ndarray | None = None, cut: np.ndarray | None = None) -> np.ndarray:
        """The indices, in order, of the strings that are in ``texts``; with ``hashes`` (of each string
        without its byte at ``cut``) those whose text without that byte is."""
        from qtool.kernels import jsontext

        wanted = hash_texts([t.encode("utf-8", "surrogatepass") for t in texts])
        mine = self.hashes if hashes is None else hashes
        if not wanted.size or not mine.size:
            return np.zeros(0, np.int64)
        hit = np.empty(mine.size, dtype=bool)
        table = np.empty(1 << (2 * wanted.size).bit_length(), np.uint64)
        jsontext.count_members(mine, wanted, table, hit)
        out = []
        for k in np.flatnonzero(hit).tolist():
            raw = self.raw(k)
            if cut is not None:
                c = int(cut[k] - self.starts[k]) - 8
                raw = raw[:c] + raw[c + 1:]
            if raw.decode("utf-8") in texts:
                out.append(k)
        return np.asarray(out, dtype=np.int64)


def hash_texts(raws: list[bytes]) -> np.ndarray:
    """FNV-1a hashes of byte strings, as `Texts` keeps them."""
    from qtool.kernels import jsontext

    lengths = np.fromiter(map(len, raws), np.int64, len(raws))
    offsets = np.zeros(len(raws) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.frombuffer(b"".join(raws), np.uint8) if raws else np.zeros(0, np.uint8)
    out = np.empty(len(raws), np.uint64)
    jsontext.fnv1a(data if data.size else np.zeros(1, np.uint8), offsets, out)
    return out


def gguf_records(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> bytes:
    """GGUF string records (u64 length + bytes) of data[starts[k]:starts[k] + lengths[k]], in order."""
    from qtool.kernels import jsontext

    out = np.empty(8 * starts.size + int(lengths.sum()), np.uint8)
    jsontext.gguf_records(data if data.size else np.zeros(1, np.uint8), starts.astype(np.int64),
                          lengths.astype(np.int64), out)
    return out.tobytes()


@dataclass
class BulkTokenizerJson:
    """A tokenizer.json: ``rest`` as json.loads gives the document, with ``model.vocab`` ``{}`` and
    ``model.merges`` ``[]`` (where present); the vocabulary's texts and ids in file order; the merges as
    "a b" strings (``merge_form`` "str" where the file has strings, "pair" for pairs; None without merges),
    with ``merge_spaces`` the index in ``merges.records`` of each one's separating space and ``joined_hashes``
    the hash of each without it (the text the merge makes)."""

    rest: dict
    vocab: Texts
    ids: np.ndarray  # int64
    hash_order: np.ndarray  # the vocabulary's indices sorted by hash
    sorted_hashes: np.ndarray  # its hashes in that order
    merges: Texts | None
    merge_form: str | None
    merge_spaces: np.ndarray | None
    joined_hashes: np.ndarray | None

    def find(self, text: str) -> int:
        """The vocabulary index of ``text``, -1 if absent (by its hash among the sorted ones, then its bytes)."""
        raw = text.encode("utf-8", "surrogatepass")
        h = hash_texts([raw])[0]
        lo, hi = np.searchsorted(self.sorted_hashes, h, "left"), np.searchsorted(self.sorted_hashes, h, "right")
        return next((k for k in self.hash_order[lo:hi].tolist() if self.vocab.raw(k) == raw), -1)

    def merge_records(self) -> StringRecords:
        """The merges as GGUF writes them ("a b"), as string records."""
        return StringRecords(self.merges.records.tobytes(), len(self.merges))

    def merges_among(self, texts: set[str]) -> list:
        """The merges (as the file has them: "a b" strings or [a, b] pairs), in order, whose text (the two
        parts joined) is in ``texts``."""
        m = self.merges
        found = m.among(texts, self.joined_hashes, self.merge_spaces)
        out = [m.text(k) for k in found.tolist()]
        return [t.split(" ", 1) for t in out] if self.merge_form == "pair" else out

    def vocab_among(self, texts: set[str]) -> dict[str, int]:
        """The vocabulary's {text: id} for the texts in ``texts``, in file order."""
        found = self.vocab.among(texts)
        return {self.vocab.text(k): int(self.ids[k]) for k in found.tolist()}


class VocabView:
    """The vocabulary as the read-only mapping json.loads would give (text -> id), looked up by hash."""

    def __init__(self, bulk: BulkTokenizerJson):
        self.bulk = bulk

    def __len__(self) -> int:
        return len(self.bulk.vocab)

    def _index(self, text) -> int:
        return self.bulk.find(text) if isinstance(text, str) else -1

    def __contains__(self, text) -> bool:
        return self._index(text) >= 0

    def __getitem__(self, text) -> int:
        k = self._index(text)
        if k < 0:
            raise KeyError(text)
        return int(self.bulk.ids[k])

    def items(self):
        return zip(self.bulk.vocab.strings(), self.bulk.ids.tolist())


def read(raw) -> BulkTokenizerJson | None:
    """``raw`` (a tokenizer.json's bytes, or its mapping) read in bulk, or None where only json can read it
    (see above)."""
    from qtool.kernels import jsontext

    b = np.frombuffer(raw, np.uint8)
    n = b.size
    if n == 0:
        return None
    # sized for the whole file (pages are touched only as they are written)
    vocab_out, merge_out = np.empty(3 * n + 16, np.uint8), np.empty(3 * n + 16, np.uint8)
    vocab_starts, ids, hashes = np.empty(n // 5 + 2, np.int64), np.empty(n // 5 + 1, np.int64), \
        np.empty(n // 5 + 1, np.uint64)
    merge_starts, joined, spaces = np.empty(n // 4 + 3, np.int64), np.empty(n // 4 + 2, np.uint64), \
        np.empty(n // 4 + 2, np.int64)
    found = np.empty(7, np.int64)
    status = jsontext.tokenizer_parts(b, vocab_out, vocab_starts, ids, hashes, merge_out, merge_starts, joined,
                                      spaces, found)
    if status != jsontext.OK:
        return None
    vs, ve, ms, me, count, mcount, mform = found.tolist()
    # views of the buffers (their untouched pages cost nothing; copying took ~7 ms for Qwen2's)
    vocab_starts = vocab_starts[:count + 1]
    vocab = Texts(vocab_out[:vocab_starts[-1]], vocab_starts, hashes[:count])
    ids = ids[:count]
    order = np.argsort(vocab.hashes)
    ordered = vocab.hashes[order]
    if count and (ordered[1:] == ordered[:-1]).any():  # a text twice (or two texts of one hash): json's dict
        return None
    merges = form = None
    cuts = [(vs, ve, b"{}")]
    if ms >= 0:
        merge_starts = merge_starts[:mcount + 1]
        merges = Texts(merge_out[:merge_starts[-1]], merge_starts, None)  # found by joined hashes
        joined, spaces = joined[:mcount], spaces[:mcount]
        form = "str" if mform == 1 else "pair" if mform == 2 else None
        cuts.append((ms, me, b"[]"))
    else:
        joined = spaces = None
    cuts.sort()
    pieces, at = [], 0
    for cs, ce, stand_in in cuts:
        pieces += [raw[at:cs], stand_in]
        at = ce
    pieces.append(raw[at:])
    try:
        rest = json.loads(b"".join(pieces).decode("utf-8"))
    except (ValueError, RecursionError):  # json's own read of the file reports it
        return None
    m = rest.get("model") if isinstance(rest, dict) else None
    if not isinstance(m, dict) or m.get("vocab") != {} or (merges is not None and m.get("merges") != []):
        return None
    return BulkTokenizerJson(rest, vocab, ids, order, ordered, merges, form, spaces, joined)
