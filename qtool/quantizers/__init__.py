"""Quantizers, one family module each; importing this package registers every type."""

from qtool.quantizers import floats, kquants, legacy  # noqa: F401  (registration side effect)
from qtool.quantizers.base import Quantizer, get, registered

FAMILIES = (floats, legacy, kquants)

__all__ = ["Quantizer", "get", "registered", "FAMILIES"]
