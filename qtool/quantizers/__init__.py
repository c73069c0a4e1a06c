"""Quantizers, one family module each, imported on the first use of one of their types (base.FAMILY_OF)."""

from qtool.quantizers.base import FAMILIES, FAMILY_OF, Quantizer, can_quantize, get, registered

__all__ = ["Quantizer", "get", "registered", "can_quantize", "FAMILIES", "FAMILY_OF"]
