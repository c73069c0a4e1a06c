"""Quantizers, one family module each; importing this package registers every type."""

from qtool.quantizers import floats, fp4, iq1, iq2, iq3, iq4, kquants, legacy, lowbit, ternary  # noqa: F401  (registration side effect)
from qtool.quantizers.base import Quantizer, get, registered

FAMILIES = (floats, legacy, kquants, ternary, fp4, iq4, iq3, iq2, iq1, lowbit)

__all__ = ["Quantizer", "get", "registered", "FAMILIES"]
