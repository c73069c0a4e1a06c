"""Hugging Face model folders: config.json + safetensors weights, read as the GGUF model they convert to.

This is the generic reader: which family the folder is, how its tensors are named, transformed, stacked,
generated or skipped, and which keys it gets, is asked of the architecture registry (qtool.archs). A
folder of an architecture not in the registry keeps its HF tensor names and says (``problems``) that
llama.cpp cannot run it.

``load()`` and ``raw()`` both apply the family's transforms (``raw`` to the stored 16/32-bit words), so
a writer that copies stored bytes gets them too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qtool.archs import base as archs_base
from qtool.archs import metadata as archs_meta
from qtool.archs import tensors as archs_tensors
from qtool.archs.config import Config
from qtool.archs.transforms import rope_row_order  # noqa: F401  (re-exported for callers and tests)
from qtool.errors import FormatError
from qtool.formats.safetensors import WeightFiles
from qtool.formats.source import INDEX_SUFFIX, ModelSource, TensorInfo, byte_shape, drop_pages, half_words, widen
from gguf import GGMLQuantizationType

#: the stored words of each float dtype, for transforms on raw bytes
_WORDS = {"F32": np.dtype("<u4"), "F16": np.dtype("<u2"), "BF16": np.dtype("<u2")}
_QTYPES = {"F32": GGMLQuantizationType.F32, "F16": GGMLQuantizationType.F16, "BF16": GGMLQuantizationType.BF16}


def find_weights(folder: Path) -> tuple[Path, list[Path] | None]:
    """(weights path, files) for a folder: the index, model.safetensors, or every *.safetensors file."""
    index = folder / ("model" + INDEX_SUFFIX)
    if index.is_file():
        return index, None
    single = folder / "model.safetensors"
    if single.is_file():
        return single, None
    indexes = sorted(folder.glob("*" + INDEX_SUFFIX))
    if len(indexes) == 1:
        return indexes[0], None
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if files:
        return files[0], files
    other = [p.name for p in sorted(folder.iterdir()) if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    raise FormatError(f"{folder}: no safetensors weights" + (f" (found {', '.join(other[:3])}; qtool reads "
                                                             f"safetensors only)" if other else ""))


class HFSource(ModelSource):
    format = "safetensors"

    def __init__(self, folder: str | Path, weights: str | Path | None = None, *, pre_tokenizer: str | None = None,
                 tensors_only: bool = False):
        """``pre_tokenizer`` forces tokenizer.ggml.pre (None: detect it); ``tensors_only``: see tensors_only()."""
        folder = Path(folder)
        config_path = folder / "config.json"
        cfg = Config.read(config_path)
        if weights is not None:
            weights_path, files = Path(weights), None
        else:
            weights_path, files = find_weights(folder)
        super().__init__(folder if weights is None else weights_path)
        self.folder = folder
        self.config = cfg.data
        self.hf_class = archs_base.hf_class(cfg.data)
        self.family = archs_base.lookup(cfg.data)
        self.skipped: list[str] = []
        self.notes: list[str] = []
        self._plan: dict[str, archs_tensors.Planned] = {}
        self._pre_tokenizer = pre_tokenizer

        self._w = WeightFiles(weights_path, files)
        try:
            if self.family is not None:
                self._index_family(folder, cfg)
            else:
                self._index_unknown(folder, cfg)
            if tensors_only:
                self.tensors_only()
        except BaseException:
            self._w.close()
            raise
        tokenizer_files = [folder / n for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                                "special_tokens_map.json", "added_tokens.json") if (folder / n).is_file()]
        read = [config_path, weights_path, *self._w.files, *tokenizer_files]
        self.files = [f for i, f in enumerate(read) if f != self.path and f not in read[:i]]

    # -- indexing ---------------------------------------------------------------------------------

    def _index_family(self, folder: Path, cfg: Config) -> None:
        family = self.family
        cfg = Config(cfg.path, family.with_defaults(cfg.data))
        hp = archs_tensors.Hparams(cfg)
        plan = archs_tensors.build(family, cfg, hp, self._w)  # checks config.json against the tensors
        self.n_layer = plan.n_layer
        self.skipped, self.unmapped = plan.skipped, plan.unmapped
        infos = []
        for p in plan.tensors:
            qtype = self._qtype(p)
            nbytes = int(np.prod(p.shape, dtype=np.int64)) * (4 if qtype == GGMLQuantizationType.F32 else 2)
            infos.append(TensorInfo(p.name, p.label, p.shape, qtype, nbytes))
            self._plan[p.name] = p
        self._set_tensors(infos)
        meta = archs_meta.build(folder, cfg, family, hp, plan, pre_tokenizer=self._pre_tokenizer)
        for check in family.checks:
            for problem in check(cfg, hp):
                meta.cannot_load(problem)
        if plan.unmapped:
            meta.cannot_load(f"{folder}: {len(plan.unmapped)} tensor(s) the {family.arch_name()} conversion does not "
                             f"know (first {plan.unmapped[0]!r}); llama.cpp refuses unknown tensors")
        self.architecture = family.arch_name()
        self._take(meta)

    def _index_unknown(self, folder: Path, cfg: Config) -> None:
        """No family: tensors keep their HF names; nothing here claims llama.cpp could run it."""
        infos = []
        for name in self._w.names():
            e = self._w.entry(name)
            if e.dtype not in _QTYPES:
                if e.dtype.startswith(("I", "U", "BOOL")):  # integer buffers (position ids, masks)
                    self.skipped.append(name)
                    continue
                archs_tensors._check_dtype(self._w, name)
            infos.append(TensorInfo(name, name, e.shape, _QTYPES[e.dtype], e.end - e.begin))
            self._plan[name] = archs_tensors.Planned(name, name, (name,), tuple(e.shape))
        self._set_tensors(infos)
        self.unmapped = [t.name for t in infos]
        layers = [b for b in map(archs_tensors.block_id, self.unmapped) if b is not None]
        self.n_layer = max(layers) + 1 if layers else 0
        named = self.hf_class or cfg.data.get("model_type")
        meta = archs_meta.HFMeta()
        meta.cannot_load(f"{cfg.path}: architecture {named!r} is not one qtool can convert (it converts "
                         f"{', '.join(archs_base.supported())}); --tensors-only writes its tensors alone")
        self.architecture = None
        self._take(meta)

    def _take(self, meta) -> None:
        self.metadata, self.metadata_types, self.metadata_sub_types = meta.kv, meta.types, meta.sub_types
        self.loadable, self.problems, self.notes = meta.loadable, meta.problems, meta.notes

    def _qtype(self, p) -> GGMLQuantizationType:
        if not p.sources:
            return GGMLQuantizationType.F32
        dtypes = {self._w.entry(s).dtype for s in p.sources}
        return _QTYPES[dtypes.pop()] if len(dtypes) == 1 else GGMLQuantizationType.F32

    def tensors_only(self) -> None:
        """Drop the architecture: the HF class as general.architecture, the tensors as they are named now."""
        arch = self.hf_class or self.config.get("model_type") or "unknown"
        why = (f"qtool wrote only the quantized tensors of {arch}" if self.family is None else
               f"qtool wrote only the quantized tensors of {arch} (no hyperparameters, no tokenizer)")
        meta = archs_meta.tensors_only(str(arch), self.folder, self.n_layer, why)
        self.architecture = str(arch)
        self._take(meta)

    # -- reading ----------------------------------------------------------------------------------

    def _load(self, info: TensorInfo, into: np.ndarray | None = None) -> np.ndarray:
        p = self._plan[info.name]
        if p.data is not None:
            return p.data
        if into is not None and p.transform is None and len(p.sources) == 1:
            e = self._w.entry(p.sources[0])  # stored as it is written: widened into the caller's buffer
            return widen(self._w.bytes_of(p.sources[0]), e.dtype, e.shape, into)
        arrays = []
        for s in p.sources:
            e = self._w.entry(s)
            arrays.append(widen(self._w.bytes_of(s), e.dtype, e.shape))
        return p.transform(arrays) if p.transform is not None else arrays[0]

    def _halves(self, info: TensorInfo) -> tuple[np.ndarray, str] | None:
        p = self._plan[info.name]
        if p.data is not None or not p.sources:
            return None
        entries = [self._w.entry(s) for s in p.sources]
        dtype = entries[0].dtype
        if dtype not in ("F16", "BF16") or any(e.dtype != dtype for e in entries):
            return None
        if p.transform is not None and not p.transform.rearranges:  # gemma's norm + 1 changes values: floats
            return None
        # as stored, or rearranged as words by _raw (llama's permuted q/k, stacked experts, split gate/up): half
        # the bytes of the floats, and no float32 copy of the whole tensor to rearrange
        return half_words(self._raw(info), dtype, info.shape)

    def _stored(self, info: TensorInfo) -> np.ndarray:
        p = self._plan[info.name]
        return self._w.bytes_of(p.sources[0]) if p.sources else np.zeros(0, np.uint8)

    def _raw(self, info: TensorInfo) -> np.ndarray:
        p = self._plan[info.name]
        if p.data is not None:
            return p.data.view(np.uint8).reshape(byte_shape(info.shape, info.qtype))
        if p.transform is None:
            return self._w.bytes_of(p.sources[0]).reshape(byte_shape(info.shape, info.qtype))
        entries = [self._w.entry(s) for s in p.sources]
        if len({e.dtype for e in entries}) > 1:  # mixed dtypes stacked: the widened values
            out = self._load(info)
        else:
            out = p.transform([self._w.bytes_of(s).view(_WORDS[e.dtype]).reshape(e.shape)
                               for s, e in zip(p.sources, entries)])
        return np.ascontiguousarray(out).view(np.uint8).reshape(byte_shape(info.shape, info.qtype))

    def release(self, name: str) -> None:
        for s in self._plan[self.info(name).name].sources:
            drop_pages(self._w.bytes_of(s))

    def close(self) -> None:
        self._w.close()
