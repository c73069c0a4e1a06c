"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: 32-weight blocks with one (or scale + min) half-precision factor."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import legacy as k
from qtool.quantizers.base import kernel_type

#: these types' kernels quantize several GB/s on one thread without an importance vector: a tensor under 2
#: MiB is quantized on one (Quantizer.serial_bytes)
_SERIAL = 2 << 20

Q4_0 = kernel_type(T.Q4_0, k.quantize_q4_0, k.dequantize_q4_0, uses_imatrix=True,
                   finds_nonfinite=True, serial_bytes=_SERIAL)
Q4_1 = kernel_type(T.Q4_1, k.quantize_q4_1, k.dequantize_q4_1, uses_imatrix=True,
                   finds_nonfinite=True, serial_bytes=_SERIAL)
Q5_0 = kernel_type(T.Q5_0, k.quantize_q5_0, k.dequantize_q5_0, uses_imatrix=True,
                   finds_nonfinite=True, serial_bytes=_SERIAL)
Q5_1 = kernel_type(T.Q5_1, k.quantize_q5_1, k.dequantize_q5_1, uses_imatrix=True,
                   finds_nonfinite=True, serial_bytes=_SERIAL)
# ggml's quantize_q8_0 ignores quant_weights
Q8_0 = kernel_type(T.Q8_0, k.quantize_q8_0, k.dequantize_q8_0, uses_imatrix=False, finds_nonfinite=True,
                   reads_bfloat16=True, serial_bytes=_SERIAL)
