"""Hugging Face model folders: config.json + safetensors weights, read as the GGUF model they convert to.

Tensor names are mapped to GGUF names (names.py), the metadata is what convert_hf_to_gguf.py would write
(hf_meta.py), and for llama-family models the q_proj/k_proj rows come out in ggml's rotary order::

    HF rows of one head:    [x0 x1 ... x(h/2-1) | y0 y1 ... y(h/2-1)]   (rotate_half: halves)
    GGUF rows of one head:  [x0 y0 x1 y1 ... x(h/2-1) y(h/2-1)]         (ggml rope: interleaved pairs)

``load()`` and ``raw()`` both apply that row order, so a writer that copies stored bytes gets it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qtool.errors import FormatError
from qtool.formats import hf_meta, names
from qtool.formats.safetensors import WeightFiles, widen
from qtool.formats.source import INDEX_SUFFIX, ModelSource, TensorInfo, byte_shape

_Q_SUFFIXES = ("q_proj.weight", "q_proj.bias")
_K_SUFFIXES = ("k_proj.weight", "k_proj.bias")


def rope_row_order(n_rows: int, n_head: int) -> np.ndarray:
    """The HF row each GGUF row of a llama q/k projection comes from (convert_hf_to_gguf's permute)."""
    half = n_rows // n_head // 2
    return np.arange(n_rows).reshape(n_head, 2, half).swapaxes(1, 2).reshape(-1)


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

    def __init__(self, folder: str | Path, weights: str | Path | None = None):
        folder = Path(folder)
        config_path = folder / "config.json"
        config = hf_meta.read_json(config_path, "model config")
        if not isinstance(config, dict):
            raise FormatError(f"{config_path}: is not a JSON object")
        if weights is not None:
            weights_path, files = Path(weights), None
        else:
            weights_path, files = find_weights(folder)
        super().__init__(folder if weights is None else weights_path)
        self.config = config
        self.hf_class, arch = names.hf_architecture(config)
        meta = hf_meta.build(folder, config, arch, self.hf_class)
        self.architecture = names.arch_name(arch) if arch is not None else None
        self.metadata, self.metadata_types, self.metadata_sub_types = meta.kv, meta.types, meta.sub_types
        self.loadable, self.problems, self.notes = meta.loadable, meta.problems, meta.notes

        self._w = WeightFiles(weights_path, files)
        try:
            self._index(folder, config_path, config, arch, meta.tied_embeddings)
        except BaseException:
            self._w.close()
            raise
        tokenizer_files = [folder / n for n in ("tokenizer.json", "tokenizer_config.json") if (folder / n).is_file()]
        read = [config_path, weights_path, *self._w.files, *tokenizer_files]
        self.files = [f for i, f in enumerate(read) if f != self.path and f not in read[:i]]

    def _index(self, folder, config_path, config, arch, tied) -> None:
        mapper = names.NameMapper(arch, hf_meta.block_count(config_path, config)) if arch is not None else None
        permute = names.permutes_qk(config)
        n_head = n_head_kv = 0
        if permute:
            n_head = config.get("num_attention_heads")
            n_head_kv = config.get("num_key_value_heads", n_head)
            for key, v in (("num_attention_heads", n_head), ("num_key_value_heads", n_head_kv)):
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise FormatError(f"{config_path}: {key} is {v!r}, not a positive integer")
        infos: list[TensorInfo] = []
        self.skipped: list[str] = []
        self._rows: dict[str, int] = {}  # GGUF name -> head count its rows are reordered for
        for src in self._w.names():
            if names.is_skipped(src) or (tied and src == "lm_head.weight"):
                self.skipped.append(src)
                continue
            e = self._w.entry(src)
            gguf_name = mapper(src) if mapper is not None else None
            if gguf_name is None:
                gguf_name = src
                self.unmapped.append(src)
            heads = n_head if src.endswith(_Q_SUFFIXES) else n_head_kv if src.endswith(_K_SUFFIXES) else 0
            if permute and heads:
                if e.shape[0] % (2 * heads):
                    raise FormatError(f"{self._w.where[src].path}: tensor {src!r} has {e.shape[0]} rows, not a "
                                      f"multiple of 2 x {heads} heads from {config_path.name}")
                self._rows[gguf_name] = heads
            infos.append(TensorInfo(gguf_name, src, e.shape, e.qtype, e.end - e.begin))
        self._set_tensors(infos)

    def _load(self, info: TensorInfo) -> np.ndarray:
        e = self._w.entry(info.source_name)
        out = widen(self._w.bytes_of(info.source_name), e.dtype, e.shape)
        heads = self._rows.get(info.name)
        return out[rope_row_order(out.shape[0], heads)] if heads else out

    def _stored(self, info: TensorInfo) -> np.ndarray:
        return self._w.bytes_of(info.source_name)  # _raw may be a reordered copy

    def _raw(self, info: TensorInfo) -> np.ndarray:
        data = self._w.bytes_of(info.source_name)
        heads = self._rows.get(info.name)
        if not heads:
            return data.reshape(byte_shape(info.shape, info.qtype))
        rows = data.reshape(info.shape[0], -1)  # a 1-D bias: one element per row
        return rows[rope_row_order(info.shape[0], heads)].reshape(byte_shape(info.shape, info.qtype))

    def close(self) -> None:
        self._w.close()
