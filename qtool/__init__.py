"""qtool: convert models to GGUF byte-identically to ggml, and inspect where quantization hurt."""

__version__ = "0.1.0"
