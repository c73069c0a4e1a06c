"""HF tensors -> the GGUF tensors a family's conversion makes: dropped buffers, renamed names (through
``gguf.TensorNameMap``), transforms, stacked experts, generated tensors, and every claim of config.json
checked against what the weight files hold before anything is allocated from it.

Only headers are read here (names, dtypes, shapes): the plan says what each GGUF tensor is made of,
HFSource reads and transforms one tensor at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import MODEL_TENSOR

from qtool.archs.base import HPARAMS, Family
from qtool.archs.config import Config
from qtool.archs.transforms import Shape, SplitRows, StackExperts, Transform
from qtool.errors import FormatError

#: where a symbol is derived rather than read: how to name it in a message
_DERIVED = {"n_head_kv": "num_attention_heads", "head_dim": "hidden_size/num_attention_heads"}


class Hparams:
    """The hyperparameters of config.json the checks and transforms use, each with the key it came from."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.values: dict[str, int] = {}
        self.keys: dict[str, str] = {}
        for sym, keys in HPARAMS.items():
            v = cfg.int(keys, positive=False)
            if v is None or (v == 0 and sym in ("n_expert", "n_expert_used", "n_ff_exp")):
                continue
            k = cfg.key_of(keys)
            if v == 0:
                raise FormatError(f"{cfg.path}: {k} is 0, not a positive integer")
            self.values[sym], self.keys[sym] = v, k
        if "n_head" in self.values and "n_head_kv" not in self.values:
            self.values["n_head_kv"], self.keys["n_head_kv"] = self.values["n_head"], _DERIVED["n_head_kv"]
        if "head_dim" not in self.values and "n_embd" in self.values and "n_head" in self.values:
            self.values["head_dim"], self.keys["head_dim"] = (self.values["n_embd"] // self.values["n_head"],
                                                              _DERIVED["head_dim"])
        n_head, n_kv = self.values.get("n_head"), self.values.get("n_head_kv")
        if n_head and n_kv and (n_kv > n_head or n_head % n_kv):
            raise FormatError(f"{cfg.path}: {self.keys['n_head_kv']} is {n_kv}, which does not divide "
                              f"{self.keys['n_head']} {n_head}")
        used, n_exp = self.values.get("n_expert_used"), self.values.get("n_expert")
        if used and n_exp and used > n_exp:
            raise FormatError(f"{cfg.path}: {self.keys['n_expert_used']} is {used}, more than the {n_exp} "
                              f"experts of {self.keys['n_expert']}")

    def __getattr__(self, sym: str) -> int:
        try:
            return self.__dict__["values"][sym]
        except KeyError:
            raise FormatError(f"{self.__dict__['cfg'].path}: lacks {' / '.join(HPARAMS.get(sym, (sym,)))}") from None

    def get(self, sym: str) -> int | None:
        return self.values.get(sym)

    def describe(self, syms: list[str]) -> str:
        return ", ".join(f"{self.keys[s]} {self.values[s]}" for s in syms if s in self.values)


@dataclass
class Planned:
    """One GGUF tensor: made of ``sources`` (stored HF names) by ``transform``, or generated (``data``)."""

    name: str
    label: str                        # what to call its source (TensorInfo.source_name)
    sources: tuple[str, ...]
    shape: Shape
    transform: Transform | None = None
    data: np.ndarray | None = None
    kind: MODEL_TENSOR | None = None


@dataclass
class Plan:
    tensors: list[Planned] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    n_layer: int = 0


#: TextModel.filter_tensors: the vision / audio parts of a multimodal checkpoint, dropped by every text family
_MM_PREFIXES = ("mlp", "vit.", "vpm.", "siglip2.", "conformer.", "merger.", "resampler.", "sound_encoder.",
                "sound_projection.", "speech_embeddings.")
_MM_PARTS = ("visual.", "vision.", "audio.", "talker.", "vision_", "audio_", "token2wav.", "code2wav.", "projector.",
             "pre_mm_projector_norm", "image_newline", "view_seperator", "patch_embed", "patch_embedding",
             "patch_merger.", "patch_merge_mlp.", "model.connector.")


def multimodal(name: str) -> bool:
    """A stored tensor of a multimodal checkpoint's non-text parts (the reference's TextModel skips them)."""
    return name.startswith(_MM_PREFIXES) or any(p in name for p in _MM_PARTS)


def block_id(name: str) -> int | None:
    """The first number-like part of a tensor name (the reference's block id)."""
    for part in name.split("."):
        if part.isdecimal():
            return int(part)
    return None


def build(family: type[Family], cfg: Config, hp: Hparams, weights: Any) -> Plan:
    """The plan for the tensors of ``weights`` (a WeightFiles) under ``family``; FormatError, naming the
    file and the key, where config.json and the tensors disagree."""
    plan = Plan()
    tied = cfg.data.get("tie_word_embeddings") is True
    names: dict[str, str] = {}   # name as mapped -> stored name
    for stored in weights.names():
        name = stored
        if multimodal(stored):
            plan.skipped.append(stored)
            continue
        for s in family.strip:
            name = name.replace(s, "")
        if name.endswith(family.skip) or (family.skip_tied_head and tied and name == "lm_head.weight"):
            plan.skipped.append(stored)
            continue
        for old, new in family.renames.items():
            if name.endswith(old):
                name = name[: -len(old)] + new
        if name in names:
            raise FormatError(f"{weights.path}: tensors {names[name]!r} and {stored!r} are the same tensor "
                              f"{name!r}")
        names[name] = stored

    plan.n_layer = _check_layers(cfg, hp, weights, names)
    tmap = NameMap(family.arch, plan.n_layer)

    def where(stored: str) -> str:
        return f"{_file_of(weights, stored)}: tensor {stored!r}"

    def entry_shape(stored: str) -> Shape:
        e = weights.entry(stored)
        _check_dtype(weights, stored)
        return tuple(e.shape)

    for fn in family.generate:
        for kind, data in fn(cfg, hp):
            name = gguf.TENSOR_NAMES[kind] + ".weight"
            plan.tensors.append(Planned(name, f"(generated: {name})", (), tuple(data.shape), data=data, kind=kind))

    experts = _group_experts(family, cfg, hp, weights, names)
    emitted_bids: set[int] = set()
    for name, stored in names.items():
        made: list[tuple[str, str, tuple[str, ...], Transform | None]] = []  # (name, label, sources, transform)
        m = family.experts.match(name) if family.experts is not None else None
        if m is not None:
            bid = m[0]
            if bid in emitted_bids:
                continue
            emitted_bids.add(bid)
            for proj in family.experts.projections:
                merged = family.experts.merged.format(bid=bid, proj=proj)
                members = experts[(bid, proj)]
                made.append((merged, merged, tuple(names[members[x]] for x in range(len(members))),
                             StackExperts()))
        else:
            split = next((s for s in family.splits if name.endswith(s.suffix)), None)
            if split is not None:
                for suffix, part in split.parts:
                    made.append((name[: -len(split.suffix)] + suffix, stored, (stored,), SplitRows(part,
                                                                                                len(split.parts))))
            else:
                factory = next((f for sfx, f in family.transforms.items() if name.endswith(sfx)), None)
                transform = factory(hp) if factory is not None else None
                if hasattr(transform, "for_dtype"):  # computes in the stored precision, as torch does
                    transform = transform.for_dtype(weights.entry(stored).dtype)
                made.append((name, stored, (stored,), transform))
        for hf_name, label, sources, transform in made:
            shapes = [entry_shape(s) for s in sources]
            shape = transform.shape(shapes, where(label)) if transform is not None else shapes[0]
            mapped = tmap.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
            if mapped is None:
                plan.unmapped.append(label)
                plan.tensors.append(Planned(label, label, sources, shape, transform))
            else:
                kind, gguf_name = mapped
                plan.tensors.append(Planned(gguf_name, label, sources, shape, transform, kind=kind))
    _check_shapes(family, cfg, hp, weights, plan)
    return plan


class NameMap:
    """gguf's TensorNameMap(arch, n_blocks) (convert_hf_to_gguf's names), each name looked up when asked for.

    gguf's map formats every name pattern of every tensor the architecture has for every block up front
    (~17-19 ms for 30 blocks, 33 ms for 80, a conversion's fixed cost). Here a name's digit runs are tried as the
    block number, one at a time (every ``{bid}`` in gguf's patterns stands between non-digits), and the answer
    is the one gguf's map holds: the entry written last while building it (the highest block, then the latest
    pattern), block patterns over the architecture-wide ones. As in a fresh process: gguf's constructor also
    adds its architecture's extra block patterns to the class's shared table, which this leaves alone.
    """

    def __init__(self, arch: gguf.MODEL_ARCH, n_blocks: int):
        from gguf.tensor_mapping import TensorNameMap

        kinds = set(gguf.MODEL_TENSORS[arch])
        self.n_blocks = n_blocks
        self.fixed: dict[str, tuple[MODEL_TENSOR, str]] = {}
        for kind, keys in TensorNameMap.mappings_cfg.items():
            if kind in kinds:
                name = gguf.TENSOR_NAMES[kind]
                for key in (name, *keys):
                    self.fixed[key] = (kind, name)
        block = {**TensorNameMap.block_mappings_cfg, **TensorNameMap.arch_block_mappings_cfg.get(arch, {})}
        #: key pattern -> (when gguf writes it within a block, tensor kind, GGUF name pattern)
        self.patterns: dict[str, tuple[int, MODEL_TENSOR, str]] = {}
        for kind, keys in block.items():
            if kind in kinds:
                name = gguf.TENSOR_NAMES[kind]
                for key in (name, *keys):
                    self.patterns[key] = (len(self.patterns), kind, name)

    def lookup(self, key: str) -> tuple[MODEL_TENSOR, str] | None:
        best = None  # (block, order, kind, name pattern)
        if self.n_blocks > 0 and "{bid}" not in key and key in self.patterns:  # a block pattern naming no block
            best = (self.n_blocks - 1, *self.patterns[key])
        for m in _DIGITS.finditer(key):
            bid = int(m[0])
            if bid >= self.n_blocks or str(bid) != m[0]:
                continue
            hit = self.patterns.get(f"{key[:m.start()]}{{bid}}{key[m.end():]}")
            if hit is not None and (best is None or (bid, hit[0]) > best[:2]):
                best = (bid, *hit)
        if best is None:
            return self.fixed.get(key)
        return best[2], best[3].format(bid=best[0])

    def get_type_and_name(self, key: str, try_suffixes: tuple[str, ...] = ()) -> tuple[MODEL_TENSOR, str] | None:
        found = self.lookup(key)
        if found is not None:
            return found
        for suffix in try_suffixes:
            if key.endswith(suffix):
                found = self.lookup(key[:-len(suffix)])
                if found is not None:
                    return found[0], found[1] + suffix
        return None


_DIGITS = re.compile(r"\d+")


def _file_of(weights: Any, stored: str) -> str:
    return str(weights.where[stored].path) if stored in getattr(weights, "where", {}) else str(weights.path)


def _check_dtype(weights: Any, stored: str) -> None:
    from qtool.formats.safetensors import SUPPORTED, unsupported_dtype

    e = weights.entry(stored)
    if e.dtype not in SUPPORTED:
        raise unsupported_dtype(e.dtype, stored, Path(_file_of(weights, stored)))


def _check_layers(cfg: Config, hp: Hparams, weights: Any, names: dict[str, str]) -> int:
    """config.json's layer count against the layers the tensors hold, before anything is sized by it."""
    claimed = hp.n_layer
    found = sorted({b for b in map(block_id, names) if b is not None})
    n_found = found[-1] + 1 if found else 0
    if claimed != n_found:
        held = f"layers 0 to {n_found - 1}" if found else "no numbered layers"
        raise FormatError(f"{cfg.path}: {hp.keys['n_layer']} is {claimed}, but {weights.path.name} holds "
                          f"{held} ({n_found} layers)")
    missing = sorted(set(range(n_found)) - set(found))
    if missing:
        raise FormatError(f"{weights.path}: holds no tensor of layer {missing[0]} (of the {n_found} that "
                          f"{cfg.path.name}'s {hp.keys['n_layer']} says)")
    return n_found


def _group_experts(family: type[Family], cfg: Config, hp: Hparams, weights: Any,
                   names: dict[str, str]) -> dict[tuple[int, str], dict[int, str]]:
    """(layer, projection) -> {expert: name}, complete for every expert config.json names, or FormatError."""
    spec = family.experts
    groups: dict[tuple[int, str], dict[int, str]] = {}
    if spec is None:
        return groups
    for name in names:
        m = spec.match(name)
        if m is not None:
            bid, x, proj = m
            groups.setdefault((bid, proj), {})[x] = name
    if not groups:
        return groups
    n_expert = hp.n_expert
    for bid in sorted({b for b, _ in groups}):
        for proj in spec.projections:
            members = groups.get((bid, proj), {})
            have = sorted(members)
            if have != list(range(n_expert)):
                extra = [x for x in have if x >= n_expert]
                if extra:
                    why = f"holds expert {extra[0]}"
                else:
                    why = f"lacks expert {next(x for x in range(n_expert) if x not in members)}"
                raise FormatError(f"{cfg.path}: {hp.keys['n_expert']} is {n_expert}, but {weights.path.name} "
                                  f"{why} of layer {bid}'s {proj}")
    return groups


_SYMBOL = re.compile(r"[a-z_]+")


def _check_shapes(family: type[Family], cfg: Config, hp: Hparams, weights: Any, plan: Plan) -> None:
    shapes = family.all_shapes()
    order = sorted(plan.tensors, key=lambda p: p.kind != MODEL_TENSOR.TOKEN_EMBD)
    for p in order:
        want = shapes.get(p.kind) if p.kind is not None else None
        if want is None:
            continue
        if p.name.endswith(".bias"):
            want = want[:1]
        if len(want) != len(p.shape):
            raise FormatError(f"{weights.path}: tensor {p.label!r} ({p.name}) has shape {list(p.shape)}, "
                              f"not {len(want)}-D")
        for axis, expr in enumerate(want):
            syms = _SYMBOL.findall(expr)
            if any(s not in hp.values for s in syms):
                continue
            expected = eval(expr, {"__builtins__": {}}, dict(hp.values))  # expressions of the SHAPES tables
            if expected != p.shape[axis]:
                src = Path(_file_of(weights, p.sources[0])).name if p.sources else "qtool"
                how = "" if expr in syms else f" ({expr} = {int(expected)})"
                raise FormatError(f"{cfg.path}: {hp.describe(syms)}{how} does not fit {p.label!r} in {src}: "
                                  f"shape {list(p.shape)}, axis {axis} should be {int(expected)} ({p.name})")
