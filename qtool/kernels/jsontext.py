"""JSON text scanned in bulk: a tokenizer.json's vocabulary and merges as packed UTF-8, no Python objects;
GGUF string records (u64 length + bytes) made from such strings and read back.

Python's json module builds one str and one int per vocabulary entry and one list per merge: for a
150k-token tokenizer.json that alone is ~0.1 s. `tokenizer_parts` walks the same bytes once: it decodes
``model.vocab`` (``{"text": id, ...}``) and ``model.merges`` into GGUF string records (u64 length, UTF-8
bytes: what the GGUF holds) with offsets,
skips every other value (`value_end`) and says where the two were, for the reader to parse the rest with
json. They accept only what json.loads accepts and decodes to the same text;
anything they do not handle exactly (a float or negative id, a surrogate escape without its pair, a merge
part holding a space) is status `UNHANDLED`, and the caller reads the file with json instead.

Strings are hashed as they are decoded (64-bit FNV-1a of their UTF-8 bytes, `fnv1a`), so that the caller
finds a text among 10^5 without a dict of them.
"""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import borrowed, jit, jit_inline

#: status of `string_ids` and `merge_strings`
OK, UNHANDLED = 0, 1

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)

_QUOTE, _BACKSLASH, _COLON, _COMMA = 0x22, 0x5C, 0x3A, 0x2C
_OPEN_OBJECT, _CLOSE_OBJECT, _OPEN_ARRAY, _CLOSE_ARRAY = 0x7B, 0x7D, 0x5B, 0x5D


@jit_inline
def _is_space(c) -> bool:
    return c == 0x20 or c == 0x0A or c == 0x0D or c == 0x09


@jit_inline
def _skip_space(b, i, n):
    while i < n and _is_space(b[i]):
        i += 1
    return i


@jit_inline
def _hash_byte(h, c):
    return (h ^ np.uint64(c)) * _FNV_PRIME


@jit_inline
def _hash_range(data, start, end, skip):
    """64-bit FNV-1a of data[start:end] without the byte at ``skip`` (-1: none)."""
    h = _FNV_OFFSET
    for j in range(start, end):
        if j != skip:
            h = _hash_byte(h, data[j])
    return h


@jit_inline
def _put_length(out, at, size):
    """size as the u64 little-endian length field of the GGUF string record at out[at]."""
    for j in range(8):
        out[at + j] = (size >> (8 * j)) & 0xFF


@jit
def fnv1a(data, offsets, out):
    """64-bit FNV-1a of each string: data uint8 [*], offsets int64 [n + 1], out uint64 [n]."""
    for k in range(offsets.shape[0] - 1):
        out[k] = _hash_range(data, offsets[k], offsets[k + 1], -1)


@jit_inline
def _string_skip(b, i, n):
    """b[i] is a string's opening quote: the index after its closing quote, -1 where the bytes end first."""
    i += 1
    while i < n:
        c = b[i]
        if c == _BACKSLASH:
            i += 2
        elif c == _QUOTE:
            return i + 1
        else:
            i += 1
    return -1


@jit
def value_end(b, i, n):
    """The index just after the JSON value that starts at b[i] (b uint8 [n]), -1 where the bytes end first.

    Strings are skipped escape-aware, objects and arrays by their bracket depth, anything else up to the
    next space, comma or closing bracket: where the text is valid JSON that is the value's end. (It does
    not validate: the reader parses everything it does not cut out with json, and what it cuts out with
    the strict kernels below.)
    """
    if i >= n:
        return -1
    c = b[i]
    if c == _QUOTE:
        return _string_skip(b, i, n)
    if c == _OPEN_OBJECT or c == _OPEN_ARRAY:
        depth = 0
        while i < n:
            c = b[i]
            if c == _QUOTE:
                i = _string_skip(b, i, n)
                if i < 0:
                    return -1
                continue
            if c == _OPEN_OBJECT or c == _OPEN_ARRAY:
                depth += 1
            elif c == _CLOSE_OBJECT or c == _CLOSE_ARRAY:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    j = i
    while j < n:
        c = b[j]
        if _is_space(c) or c == _COMMA or c == _CLOSE_OBJECT or c == _CLOSE_ARRAY:
            break
        j += 1
    return j if j > i else -1


@jit_inline
def _hex(c):
    """A hex digit's value, -1 for any other byte."""
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x41 <= c <= 0x46:
        return c - 0x41 + 10
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


@jit_inline
def _hex4(b, i, n):
    """The code unit of \\uXXXX whose X's start at b[i]; -1 where they are not four hex digits."""
    if i + 4 > n:
        return -1
    v = 0
    for j in range(4):
        d = _hex(b[i + j])
        if d < 0:
            return -1
        v = v * 16 + d
    return v


@jit_inline
def _utf8_length(b, i, n):
    """The length of the well-formed UTF-8 sequence of a non-ASCII lead byte at b[i], 0 where it is not one
    (Python's decoder rejects the same: overlong forms, surrogates, code points above U+10FFFF)."""
    c = b[i]
    if 0xC2 <= c <= 0xDF:
        size, low, high = 2, 0x80, 0xBF
    elif c == 0xE0:
        size, low, high = 3, 0xA0, 0xBF
    elif c == 0xED:
        size, low, high = 3, 0x80, 0x9F
    elif 0xE1 <= c <= 0xEF:
        size, low, high = 3, 0x80, 0xBF
    elif c == 0xF0:
        size, low, high = 4, 0x90, 0xBF
    elif 0xF1 <= c <= 0xF3:
        size, low, high = 4, 0x80, 0xBF
    elif c == 0xF4:
        size, low, high = 4, 0x80, 0x8F
    else:
        return 0
    if i + size > n:
        return 0
    if not (low <= b[i + 1] <= high):
        return 0
    for j in range(2, size):
        if not (0x80 <= b[i + j] <= 0xBF):
            return 0
    return size


@jit_inline
def _put_code_point(out, o, cp):
    """cp as UTF-8 at out[o]; the index after it."""
    if cp < 0x80:
        out[o] = cp
        return o + 1
    if cp < 0x800:
        out[o] = 0xC0 | (cp >> 6)
        out[o + 1] = 0x80 | (cp & 0x3F)
        return o + 2
    if cp < 0x10000:
        out[o] = 0xE0 | (cp >> 12)
        out[o + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[o + 2] = 0x80 | (cp & 0x3F)
        return o + 3
    out[o] = 0xF0 | (cp >> 18)
    out[o + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[o + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[o + 3] = 0x80 | (cp & 0x3F)
    return o + 4


@jit_inline
def _decode_string(b, i, n, out, o):
    """The JSON string whose opening quote is b[i], decoded to UTF-8 at out[o] (at most as many bytes as
    it takes in b). Returns (index after the closing quote, index after its last output byte, index in
    out of its first space or -1); the first is -1 where it is not a string json.loads reads as valid
    UTF-8 text (a raw control character, a bad escape, a surrogate without its pair, bytes that are not
    UTF-8, the end of the bytes)."""
    i += 1
    space = -1
    while i < n:
        c = b[i]
        if c == _QUOTE:
            return i + 1, o, space
        if c == _BACKSLASH:
            if i + 1 >= n:
                return -1, o, space
            e = b[i + 1]
            if e == 0x75:  # \uXXXX, a surrogate pair as two
                cp = _hex4(b, i + 2, n)
                if cp < 0:
                    return -1, o, space
                i += 6
                if 0xDC00 <= cp <= 0xDFFF:
                    return -1, o, space
                if 0xD800 <= cp <= 0xDBFF:
                    if i + 1 >= n or b[i] != _BACKSLASH or b[i + 1] != 0x75:
                        return -1, o, space
                    low = _hex4(b, i + 2, n)
                    if not (0xDC00 <= low <= 0xDFFF):
                        return -1, o, space
                    i += 6
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                if cp == 0x20 and space < 0:
                    space = o
                o = _put_code_point(out, o, cp)
                continue
            if e == _QUOTE or e == _BACKSLASH or e == 0x2F:
                v = e
            elif e == 0x62:
                v = 0x08
            elif e == 0x66:
                v = 0x0C
            elif e == 0x6E:
                v = 0x0A
            elif e == 0x72:
                v = 0x0D
            elif e == 0x74:
                v = 0x09
            else:
                return -1, o, space
            out[o] = v
            o += 1
            i += 2
        elif c < 0x20:
            return -1, o, space
        elif c < 0x80:
            if c == 0x20 and space < 0:
                space = o
            out[o] = c
            o += 1
            i += 1
        elif 0xC2 <= c <= 0xDF and i + 1 < n and 0x80 <= b[i + 1] <= 0xBF:  # two bytes: the most usual (~30% less time)
            out[o] = c
            out[o + 1] = b[i + 1]
            o += 2
            i += 2
        else:
            size = _utf8_length(b, i, n)
            if size == 0:
                return -1, o, space
            for j in range(size):
                out[o + j] = b[i + j]
            o += size
            i += size
    return -1, o, space


@jit_inline
def _next_member(b, i, n, close):
    """After a member or an element at b[i]: (1, the index after ``close``) where the object or array ends
    there, (0, the next one's index) after a comma, (-1, i) for anything else."""
    i = _skip_space(b, i, n)
    if i >= n:
        return -1, i
    if b[i] == close:
        return 1, i + 1
    if b[i] != _COMMA:
        return -1, i
    return 0, _skip_space(b, i + 1, n)


@jit_inline
def _close_record(out, offsets, k, end, skip):
    """Record k, which starts at offsets[k] and whose text ends at out[end]: its length field written, its end
    noted (offsets[k + 1]); returns the FNV-1a hash of its text without the byte at ``skip`` (-1: none)."""
    at = offsets[k]
    _put_length(out, at, end - at - 8)
    offsets[k + 1] = end
    return _hash_range(out, at + 8, end, skip)


@jit_inline
def _string_ids(b, i, n, out, offsets, ids, hashes):
    """A JSON object of strings to non-negative integers (a vocabulary: ``{"text": id, ...}``) at b[i]:
    each key decoded to UTF-8 as a GGUF string record (u64 length, the bytes), one after another in out
    (uint8: the object's bytes + 8 a member), where each starts in offsets (int64; the count + 1 of them are
    written: the last is the end), its value in ids (int64) and its FNV-1a hash in hashes (uint64). ids and
    hashes hold at least a fifth of its bytes + 1 entries (a member takes 5 bytes or more).

    Returns (status, count, index after the object): `UNHANDLED` for anything else, or a value that is
    not a plain integer of at most 18 digits (json.loads reads those too, or refuses the text: its reader
    decides).
    """
    i = _skip_space(b, i, n)
    if i >= n or b[i] != _OPEN_OBJECT:
        return UNHANDLED, 0, i
    i = _skip_space(b, i + 1, n)
    k = 0
    o = 0
    offsets[0] = 0
    if i < n and b[i] == _CLOSE_OBJECT:
        return OK, 0, i + 1
    while True:
        if i >= n or b[i] != _QUOTE or k >= ids.shape[0]:
            return UNHANDLED, k, i
        start = o + 8
        i, o, _ = _decode_string(b, i, n, out, start)
        if i < 0:
            return UNHANDLED, k, i
        i = _skip_space(b, i, n)
        if i >= n or b[i] != _COLON:
            return UNHANDLED, k, i
        i = _skip_space(b, i + 1, n)
        if i >= n or not (0x30 <= b[i] <= 0x39):
            return UNHANDLED, k, i
        v = 0
        digits = 0
        while i < n and 0x30 <= b[i] <= 0x39:
            v = v * 10 + (b[i] - 0x30)
            digits += 1
            i += 1
        if digits > 18 or (digits > 1 and b[i - digits] == 0x30):
            return UNHANDLED, k, i
        ids[k] = v
        hashes[k] = _close_record(out, offsets, k, o, -1)
        k += 1
        state, i = _next_member(b, i, n, _CLOSE_OBJECT)
        if state != 0:
            return (OK if state > 0 else UNHANDLED), k, i


@jit_inline
def _pair_part(b, i, n, out, o):
    """One string of a merge pair, after any spaces at b[i], decoded to out[o]: (the index of the next byte
    that is not a space, the index after its last output byte); the first is -1 where it is not a string, or
    holds a space, or the bytes end after it."""
    i = _skip_space(b, i, n)
    if i >= n or b[i] != _QUOTE:
        return -1, o
    i, o, inside = _decode_string(b, i, n, out, o)
    if i < 0 or inside >= 0:
        return -1, o
    i = _skip_space(b, i, n)
    return (i if i < n else -1), o


@jit_inline
def _merge_strings(b, i, n, out, offsets, joined_hashes, spaces):
    """A JSON array of merges at b[i], each a string "a b" or a pair ["a", "b"] (one form throughout), as
    "a b" strings: decoded to UTF-8 as GGUF string records one after another in out (uint8: the array's
    bytes + 8 a merge), where each starts in offsets (int64, count + 1 written: the last is the end), in
    spaces (int64) the index in out of its first space and in joined_hashes (uint64) its FNV-1a hash
    without that space (the text the merge makes). offsets, spaces and joined_hashes hold at least a
    fourth of its bytes + 2 entries.

    Returns (status, count, form, index after the array): form 1 for strings, 2 for pairs, 0 for an empty
    array. `UNHANDLED` for anything else: mixed forms, a string with no space, a pair part holding one (the
    reference writes it as U+0120), a pair of another length.
    """
    i = _skip_space(b, i, n)
    if i >= n or b[i] != _OPEN_ARRAY:
        return UNHANDLED, 0, 0, i
    i = _skip_space(b, i + 1, n)
    k = 0
    o = 0
    form = 0
    offsets[0] = 0
    if i < n and b[i] == _CLOSE_ARRAY:
        return OK, 0, 0, i + 1
    while True:
        if i >= n or k + 1 >= offsets.shape[0]:
            return UNHANDLED, k, form, i
        start = o + 8
        o = start
        if b[i] == _QUOTE:
            if form == 2:
                return UNHANDLED, k, form, i
            form = 1
            i, o, space = _decode_string(b, i, n, out, o)
            if i < 0 or space < 0:
                return UNHANDLED, k, form, i
        elif b[i] == _OPEN_ARRAY:
            if form == 1:
                return UNHANDLED, k, form, i
            form = 2
            i, o = _pair_part(b, i + 1, n, out, o)
            if i < 0 or b[i] != _COMMA:
                return UNHANDLED, k, form, i
            space = o
            out[o] = 0x20
            o += 1
            i, o = _pair_part(b, i + 1, n, out, o)
            if i < 0 or b[i] != _CLOSE_ARRAY:
                return UNHANDLED, k, form, i
            i += 1
        else:
            return UNHANDLED, k, form, i
        joined_hashes[k] = _close_record(out, offsets, k, o, space)
        spaces[k] = space
        k += 1
        state, i = _next_member(b, i, n, _CLOSE_ARRAY)
        if state != 0:
            return (OK if state > 0 else UNHANDLED), k, form, i


_MODEL = np.frombuffer(b"model", np.uint8)
_VOCAB = np.frombuffer(b"vocab", np.uint8)
_MERGES = np.frombuffer(b"merges", np.uint8)


@jit_inline
def _key_is(b, s, e, word):
    if e - s != word.shape[0]:
        return False
    for j in range(word.shape[0]):
        if b[s + j] != word[j]:
            return False
    return True


@jit_inline
def _has_backslash(b, s, e):
    for j in range(s, e):
        if b[j] == _BACKSLASH:
            return True
    return False


@jit
def tokenizer_parts(b, vocab_out, vocab_offsets, ids, hashes, merge_out, merge_offsets, joined_hashes, spaces,
                    found):
    """A tokenizer.json's ``model.vocab`` (as `_string_ids` reads it) and ``model.merges`` (`_merge_strings`),
    in one walk of its bytes b (uint8 [n]); every other value is skipped (`value_end`). The output arrays
    are sized for the whole file (vocab_out, merge_out: 3 * n + 16 bytes; ids, hashes: n // 5 + 1; the
    merges' arrays n // 4 + 2; the offsets one more). found (int64 [7]) gets the vocabulary's span (start,
    end), the merges' (-1, -1 where absent), the vocabulary's count, the merges' count and form.

    Returns `OK`, or `UNHANDLED` where the walk cannot say what json.loads would make of the text: it is not
    an object holding a ``model`` object with a ``vocab`` object (a Unigram vocabulary is a list), a key of
    the top level or of ``model`` is escaped (it may spell one of these) or there twice, or a kernel above
    refuses its value. What follows the top-level object is left to json.
    """
    # views that hold no reference (the caller's arrays live through the call): every array handed to an
    # inlined helper otherwise raised and lowered its owner's count atomically, ~30% of the time here
    b, vocab_out, vocab_offsets, ids, hashes = borrowed(b), borrowed(vocab_out), borrowed(vocab_offsets), \
        borrowed(ids), borrowed(hashes)
    merge_out, merge_offsets, joined_hashes, spaces = borrowed(merge_out), borrowed(merge_offsets), \
        borrowed(joined_hashes), borrowed(spaces)
    n = b.shape[0]
    for j in range(7):
        found[j] = -1
    i = _skip_space(b, 0, n)
    if i >= n or b[i] != _OPEN_OBJECT:
        return UNHANDLED
    depth = 1  # 1: the top-level object; 2: model
    saw_model = False
    i = _skip_space(b, i + 1, n)
    if i < n and b[i] == _CLOSE_OBJECT:
        return UNHANDLED
    while True:
        if i >= n or b[i] != _QUOTE:
            return UNHANDLED
        end = _string_skip(b, i, n)
        if end < 0:
            return UNHANDLED
        ks, ke = i + 1, end - 1
        if _has_backslash(b, ks, ke):
            return UNHANDLED
        i = _skip_space(b, end, n)
        if i >= n or b[i] != _COLON:
            return UNHANDLED
        i = _skip_space(b, i + 1, n)
        if i >= n:
            return UNHANDLED
        if depth == 1 and _key_is(b, ks, ke, _MODEL):
            if saw_model or b[i] != _OPEN_OBJECT:
                return UNHANDLED
            saw_model = True
            depth = 2
            i = _skip_space(b, i + 1, n)
            if i < n and b[i] == _CLOSE_OBJECT:
                return UNHANDLED
            continue
        if depth == 2 and _key_is(b, ks, ke, _VOCAB):
            if found[0] >= 0 or b[i] != _OPEN_OBJECT:
                return UNHANDLED
            status, count, end = _string_ids(b, i, n, vocab_out, vocab_offsets, ids, hashes)
            if status != OK:
                return UNHANDLED
            found[0], found[1], found[4] = i, end, count
        elif depth == 2 and _key_is(b, ks, ke, _MERGES):
            if found[2] >= 0 or b[i] != _OPEN_ARRAY:
                return UNHANDLED
            status, count, form, end = _merge_strings(b, i, n, merge_out, merge_offsets, joined_hashes, spaces)
            if status != OK:
                return UNHANDLED
            found[2], found[3], found[5], found[6] = i, end, count, form
        else:
            end = value_end(b, i, n)
            if end < 0:
                return UNHANDLED
        i = _skip_space(b, end, n)
        while i < n and b[i] == _CLOSE_OBJECT:
            if depth == 1:
                return OK if saw_model and found[0] >= 0 else UNHANDLED
            depth = 1
            i = _skip_space(b, i + 1, n)
        if i >= n or b[i] != _COMMA:
            return UNHANDLED
        i = _skip_space(b, i + 1, n)


@jit
def gguf_records(data, starts, lengths, out):
    """GGUF string records (u64 little-endian length, then the bytes) of the strings data[starts[k]:
    starts[k] + lengths[k]], one after another in out (uint8, 8 * count + sum(lengths) bytes)."""
    o = 0
    for k in range(starts.shape[0]):
        size = lengths[k]
        _put_length(out, o, size)
        o += 8
        s = starts[k]
        for j in range(size):
            out[o + j] = data[s + j]
        o += size


@jit
def record_spans(records, count, starts, lengths):
    """Where each of ``count`` GGUF string records in records (uint8) has its bytes and how many: starts and
    lengths (int64 [count]). Returns the index after the last record, -1 where the records run past the
    end (or a length past 2**62)."""
    n = records.shape[0]
    p = 0
    for k in range(count):
        if p + 8 > n:
            return -1
        size = 0
        for j in range(8):
            size |= np.int64(records[p + j]) << (8 * j)
        if records[p + 7] >= 0x40 or size > n - p - 8:
            return -1
        starts[k] = p + 8
        lengths[k] = size
        p += 8 + size
    return p


@jit
def count_members(values, wanted, table, out):
    """out[k] = whether values[k] is one of ``wanted`` (values, wanted uint64; out bool); returns how many
    are. wanted goes into ``table`` (uint64, a power of two more than twice its size; empty slots hold 0,
    a wanted 0 is noted apart), looked up by the hash's low bits with linear probing: one probe or two an
    element (a binary search took ~50 ns an element, numpy's isin sorts both arrays)."""
    mask = table.shape[0] - 1
    table[:] = 0
    zero = False
    for w in wanted:
        if w == 0:
            zero = True
            continue
        j = np.int64(w & np.uint64(mask))
        while table[j] != 0 and table[j] != w:
            j = (j + 1) & mask
        table[j] = w
    found = 0
    for k in range(values.shape[0]):
        v = values[k]
        hit = False
        if v == 0:
            hit = zero
        else:
            j = np.int64(v & np.uint64(mask))
            while table[j] != 0:
                if table[j] == v:
                    hit = True
                    break
                j = (j + 1) & mask
        out[k] = hit
        found += hit
    return found
