"""The named tensor transforms of the families: what convert_hf_to_gguf's ``modify_tensors`` and
``generate_extra_tensors`` do to Hugging Face tensors, as small objects that know their output shape
(checked before anything is read) and apply to element arrays of any dtype (widened float32 for
``load``, the stored 16/32-bit words for ``raw``).

Q/K rows of one llama head, HF (rotate_half: halves) -> GGUF (ggml rope: interleaved pairs)::

    HF rows:    [x0 x1 ... x(h/2-1) | y0 y1 ... y(h/2-1)]
    GGUF rows:  [x0 y0 x1 y1 ... x(h/2-1) y(h/2-1)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from qtool.errors import FormatError

Shape = tuple[int, ...]


def rope_row_order(n_rows: int, n_head: int) -> np.ndarray:
    """The HF row each GGUF row of a llama q/k projection comes from (LlamaModel.permute)."""
    half = n_rows // n_head // 2
    return np.arange(n_rows).reshape(n_head, 2, half).swapaxes(1, 2).reshape(-1)


class Transform:
    """A tensor made from one or more HF tensors. ``shape`` validates and gives the output shape.
    ``rearranges``: it only moves elements (rows, experts, slices), so that it gives the same values
    whether it runs on widened floats or on the stored words (which a reader may widen afterwards)."""

    name = "transform"
    rearranges = False

    def shape(self, shapes: Sequence[Shape], where: str) -> Shape:
        raise NotImplementedError

    def __call__(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class PermuteQK(Transform):
    """permute_qk: reorder the rows of a q/k projection (weight or bias) head by head for ggml's rope."""

    n_head: int
    name = "permute_qk"
    rearranges = True

    def shape(self, shapes, where):
        (s,) = shapes
        if s[0] % (2 * self.n_head):
            raise FormatError(f"{where} has {s[0]} rows, not a multiple of 2 x {self.n_head} heads")
        return s

    def __call__(self, arrays):
        (a,) = arrays
        return a[rope_row_order(a.shape[0], self.n_head)]


@dataclass(frozen=True)
class StackExperts(Transform):
    """stack_experts: one tensor per expert -> one [n_expert, ...] tensor (torch.stack(dim=0))."""

    name = "stack_experts"
    rearranges = True

    def shape(self, shapes, where):
        if any(s != shapes[0] for s in shapes):
            odd = next(i for i, s in enumerate(shapes) if s != shapes[0])
            raise FormatError(f"{where}: expert {odd} has shape {list(shapes[odd])}, expert 0 has "
                              f"{list(shapes[0])}")
        return (len(shapes), *shapes[0])

    def __call__(self, arrays):
        return np.stack(arrays, axis=0)


@dataclass(frozen=True)
class SplitRows(Transform):
    """split_gate_up: part ``part`` of ``parts`` equal slices of the second-to-last axis (a fused
    [n_expert, 2*n_ff, n_embd] gate_up projection -> gate, up)."""

    part: int
    parts: int = 2
    name = "split_gate_up"
    rearranges = True

    def shape(self, shapes, where):
        (s,) = shapes
        if len(s) < 2 or s[-2] % self.parts:
            raise FormatError(f"{where} has shape {list(s)}; its rows do not split in {self.parts}")
        return (*s[:-2], s[-2] // self.parts, s[-1])

    def __call__(self, arrays):
        (a,) = arrays
        n = a.shape[-2] // self.parts
        return np.ascontiguousarray(a[..., self.part * n:(self.part + 1) * n, :])


# -- generated tensors ------------------------------------------------------------------------------


def llama3_rope_factors(base: float, dim: int, factor: float, low_freq_factor: float, high_freq_factor: float,
                        old_context_len: float) -> np.ndarray:
    """rope_freqs for ``rope_type: llama3``: the divisor of each rotary frequency, float32 [dim // 2].

    As LlamaModel.generate_extra_tensors computes it: the frequencies in float32, each wavelength
    2*pi/freq in float32 (torch: reciprocal, then times the constant), compared with the Python-float
    thresholds, the smoothing in float32.
    """
    f32 = np.float32
    freqs = (f32(1.0) / _pow(base, np.arange(0, dim, 2, dtype=f32) / f32(dim))).astype(f32)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    out = np.empty(len(freqs), dtype=f32)
    for i, freq in enumerate(freqs):
        wavelen = f32(f32(1.0) / freq) * f32(2 * math.pi)
        if wavelen < f32(high_freq_wavelen):
            out[i] = 1
        elif wavelen > f32(low_freq_wavelen):
            out[i] = factor
        else:
            smooth = (f32(f32(1.0) / wavelen) * f32(old_context_len) - f32(low_freq_factor)) \
                / f32(high_freq_factor - low_freq_factor)
            out[i] = f32(1.0) / ((f32(1.0) - smooth) / f32(factor) + smooth)
    return out


def _pow(base: float, exponents: np.ndarray) -> np.ndarray:
    """float32 base ** float32 exponents, rounded from float64. torch (the reference) uses its own
    vectorized powf, which numpy's float32 power misses by an ulp in most cases; rounding the float64
    power matches it in all but a few (none of the Llama 3.x configurations)."""
    return (np.float64(np.float32(base)) ** exponents.astype(np.float64)).astype(np.float32)
