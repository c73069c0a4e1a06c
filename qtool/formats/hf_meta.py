"""Moved to the architecture registry (qtool.archs): the key/values of a folder are built by
qtool.archs.metadata, config.json is read by qtool.archs.config. What other modules import from here
stays importable."""

from qtool.archs.config import read_json
from qtool.archs.metadata import HFMeta

__all__ = ["HFMeta", "read_json"]
