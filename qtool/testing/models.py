"""Small GGUF models and importance-matrix files for tests, written with gguf-py's GGUFWriter.

A model is described by a :class:`ModelSpec` (llama-style names: token_embd, output, blk.N.attn_q/k/v/output,
ffn_gate/up/down or the 3-D expert tensors, norms) and written with seeded random F32 data. The metadata
holds what llama.cpp's loader needs to quantize it (no tokenizer: llama_model_quantize never loads one).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # numpy order
    qtype: GGMLQuantizationType = GGMLQuantizationType.F32


@dataclass(frozen=True)
class ModelSpec:
    arch: str = "llama"
    n_layer: int = 8
    n_embd: int = 256
    n_ff: int = 512
    n_head: int = 8
    n_head_kv: int = 2
    n_vocab: int = 320
    tied: bool = False            # no output.weight: the token embeddings double as the output
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 256
    fused_qkv: bool = False       # one attn_qkv instead of attn_q/k/v

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def metadata(self) -> dict:
        a = self.arch
        meta = {
            "general.architecture": a,
            f"{a}.block_count": self.n_layer,
            f"{a}.context_length": 256,
            f"{a}.embedding_length": self.n_embd,
            f"{a}.feed_forward_length": self.n_ff,
            f"{a}.attention.head_count": self.n_head,
            f"{a}.attention.head_count_kv": self.n_head_kv,
            f"{a}.attention.layer_norm_rms_epsilon": 1e-5,
            f"{a}.rope.dimension_count": self.head_dim,
            f"{a}.vocab_size": self.n_vocab,
        }
        if self.n_expert:
            meta[f"{a}.expert_count"] = self.n_expert
            meta[f"{a}.expert_used_count"] = self.n_expert_used
        return meta

    def tensors(self) -> list[TensorSpec]:
        e, kv = self.n_embd, self.n_head_kv * self.head_dim
        out = [TensorSpec("token_embd.weight", (self.n_vocab, e)), TensorSpec("output_norm.weight", (e,))]
        if not self.tied:
            out.append(TensorSpec("output.weight", (self.n_vocab, e)))
        for i in range(self.n_layer):
            b = f"blk.{i}."
            out.append(TensorSpec(b + "attn_norm.weight", (e,)))
            if self.fused_qkv:
                out.append(TensorSpec(b + "attn_qkv.weight", (e + 2 * kv, e)))
            else:
                out += [TensorSpec(b + "attn_q.weight", (e, e)), TensorSpec(b + "attn_k.weight", (kv, e)),
                        TensorSpec(b + "attn_v.weight", (kv, e))]
            out += [TensorSpec(b + "attn_output.weight", (e, e)), TensorSpec(b + "ffn_norm.weight", (e,))]
            if self.n_expert:
                x, f = self.n_expert, self.n_ff_exp
                out += [TensorSpec(b + "ffn_gate_inp.weight", (x, e)),
                        TensorSpec(b + "ffn_gate_exps.weight", (x, f, e)),
                        TensorSpec(b + "ffn_up_exps.weight", (x, f, e)),
                        TensorSpec(b + "ffn_down_exps.weight", (x, e, f))]
            else:
                out += [TensorSpec(b + "ffn_gate.weight", (self.n_ff, e)),
                        TensorSpec(b + "ffn_up.weight", (self.n_ff, e)),
                        TensorSpec(b + "ffn_down.weight", (e, self.n_ff))]
        return out


def write_gguf(path: str | Path, metadata: Mapping, tensors: Sequence[TensorSpec], seed: int = 0) -> Path:
    """Write a GGUF with ``metadata`` and seeded random data for ``tensors`` (F32, F16 or BF16 only)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch=metadata["general.architecture"])
    for key, value in metadata.items():
        if key in ("general.architecture",):
            continue
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            w.add_array(key, list(value))
        else:
            raise TypeError(f"cannot write metadata {key}={value!r}")
    for t in tensors:
        data = (rng.standard_normal(t.shape) * 0.02).astype(np.float32)
        if t.qtype == GGMLQuantizationType.F32:
            w.add_tensor(t.name, data)
        elif t.qtype == GGMLQuantizationType.F16:
            w.add_tensor(t.name, data.astype(np.float16))
        elif t.qtype == GGMLQuantizationType.BF16:
            bits = (data.view(np.uint32) >> 16).astype(np.uint16)
            w.add_tensor(t.name, bits.view(np.uint8).reshape(*t.shape[:-1], t.shape[-1] * 2),
                         raw_dtype=GGMLQuantizationType.BF16)
        else:
            raise ValueError(f"write_gguf writes float tensors only, not {t.qtype.name}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_model(path: str | Path, spec: ModelSpec, seed: int = 0) -> Path:
    return write_gguf(path, spec.metadata(), spec.tensors(), seed)


# --------------------------------------------------------------------------------------------------
# Importance matrices, in the two formats llama-imatrix writes
# --------------------------------------------------------------------------------------------------


def write_imatrix_dat(path: str | Path, entries: Mapping[str, tuple[int, np.ndarray]],
                      chunk_count: int | None = None, dataset: str | None = None) -> Path:
    """Legacy .dat: int32 count; per entry int32 name length, name, int32 ncall, int32 nval, nval float32
    (llama-imatrix stores mean * ncall); then optionally int32 chunk count and int32 length + dataset name."""
    path = Path(path)
    parts = [struct.pack("<i", len(entries))]
    for name, (ncall, values) in entries.items():
        raw = name.encode()
        v = np.ascontiguousarray(values, dtype="<f4")
        parts += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, v.size), v.tobytes()]
    if chunk_count is not None:
        parts.append(struct.pack("<i", chunk_count))
        if dataset is not None:
            raw = dataset.encode()
            parts += [struct.pack("<i", len(raw)), raw]
    path.write_bytes(b"".join(parts))
    return path


def write_imatrix_gguf(path: str | Path, entries: Mapping[str, tuple[np.ndarray, np.ndarray]],
                       datasets: Sequence[str] | None = ("train.txt",), chunk_count: int | None = 10,
                       chunk_size: int | None = 512) -> Path:
    """GGUF imatrix: per entry ``<name>.in_sum2`` (float32 [n_mat, n_per_row]: sums of squared activations)
    and ``<name>.counts`` (float32 [n_mat, 1]); metadata imatrix.datasets/chunk_count/chunk_size (each left
    out when None)."""
    path = Path(path)
    w = GGUFWriter(str(path), arch="imatrix")
    # GGUFWriter always writes general.architecture; llama-imatrix writes general.type instead. The reader
    # ignores both.
    w.add_string("general.type", "imatrix")
    if datasets is not None:
        w.add_array("imatrix.datasets", list(datasets))
    if chunk_count is not None:
        w.add_uint32("imatrix.chunk_count", chunk_count)
    if chunk_size is not None:
        w.add_uint32("imatrix.chunk_size", chunk_size)
    for name in sorted(entries):
        sums, counts = entries[name]
        sums = np.asarray(sums, dtype=np.float32)
        counts = np.asarray(counts, dtype=np.float32)
        n_mat = counts.size
        w.add_tensor(f"{name}.in_sum2", sums.reshape(n_mat, -1))
        w.add_tensor(f"{name}.counts", counts.reshape(n_mat, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
