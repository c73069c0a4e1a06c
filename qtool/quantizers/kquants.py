"""Q2_K ... Q6_K and Q8_K: 256-weight super-blocks with quantized sub-block scales."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from qtool.kernels import kquants as ka
from qtool.kernels import kquants_b as kb
from qtool.quantizers.base import Quantizer

_NO_WEIGHTS = np.zeros(0, dtype=np.float32)


def _w(weights: np.ndarray | None) -> np.ndarray:
    """The kernels' spelling of C's NULL importance vector: a zero-length array."""
    return _NO_WEIGHTS if weights is None else weights


class Q2_K(Quantizer, qtype=T.Q2_K):
    uses_imatrix = True

    def quantize_blocks(self, rows, weights, out):
        kb.quantize_q2_K(rows, _w(weights), out)

    def dequantize_blocks(self, data, out):
        kb.dequantize_q2_K(data, out)


class Q3_K(Quantizer, qtype=T.Q3_K):
    uses_imatrix = True

    def quantize_blocks(self, rows, weights, out):
        kb.quantize_q3_K(rows, _w(weights), out)

    def dequantize_blocks(self, data, out):
        kb.dequantize_q3_K(data, out)


class Q4_K(Quantizer, qtype=T.Q4_K):
    uses_imatrix = True

    def quantize_blocks(self, rows, weights, out):
        ka.quantize_q4_K(rows, _w(weights), out)

    def dequantize_blocks(self, data, out):
        ka.dequantize_q4_K(data, out)


class Q5_K(Quantizer, qtype=T.Q5_K):
    uses_imatrix = True

    def quantize_blocks(self, rows, weights, out):
        ka.quantize_q5_K(rows, _w(weights), out)

    def dequantize_blocks(self, data, out):
        ka.dequantize_q5_K(data, out)


class Q6_K(Quantizer, qtype=T.Q6_K):
    uses_imatrix = True

    def quantize_blocks(self, rows, weights, out):
        kb.quantize_q6_K(rows, _w(weights), out)

    def dequantize_blocks(self, data, out):
        kb.dequantize_q6_K(data, out)


class Q8_K(Quantizer, qtype=T.Q8_K):
    """The k-quants' dot-product partner (quantize_row_q8_K_ref); not a file type llama-quantize writes,
    and ggml_quantize_chunk does not accept it."""

    def quantize_blocks(self, rows, weights, out):
        ka.quantize_q8_K(rows, _NO_WEIGHTS, out)

    def dequantize_blocks(self, data, out):
        ka.dequantize_q8_K(data, out)
