"""Hugging Face names -> GGUF names: the architecture from config.json, tensor names through gguf-py's
TensorNameMap (the table convert_hf_to_gguf.py maps with)."""

from __future__ import annotations

from typing import Any

import gguf
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES

#: HF `architectures[0]` -> GGUF architecture, only for classes whose tensors convert_hf_to_gguf.py
#: passes through renamed and otherwise unchanged (the llama q/k row order aside, see PERMUTE_QK).
#: Others (Gemma adds 1 to its norms, Mixtral stacks experts, ...) would need their own conversion.
HF_ARCHITECTURES: dict[str, MODEL_ARCH] = {
    "LlamaForCausalLM": MODEL_ARCH.LLAMA,
    "LLaMAForCausalLM": MODEL_ARCH.LLAMA,
    "MistralForCausalLM": MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": MODEL_ARCH.QWEN2,
    "Qwen3ForCausalLM": MODEL_ARCH.QWEN3,
}
#: config.json `model_type` -> GGUF architecture, when `architectures` is absent.
HF_MODEL_TYPES: dict[str, MODEL_ARCH] = {
    "llama": MODEL_ARCH.LLAMA,
    "mistral": MODEL_ARCH.LLAMA,
    "qwen2": MODEL_ARCH.QWEN2,
    "qwen3": MODEL_ARCH.QWEN3,
}

#: HF classes whose q_proj/k_proj rows convert_hf_to_gguf.py reorders for ggml's rotary layout
#: (LlamaModel.undo_permute). Mistral's consolidated format and Granite do not.
PERMUTE_QK = {"LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM"}

#: Tensors convert_hf_to_gguf.py drops before mapping: buffers, not weights.
SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")

def hf_architecture(config: dict[str, Any]) -> tuple[str | None, MODEL_ARCH | None]:
    """(HF class name, GGUF architecture) from a config.json; the architecture is None when unknown."""
    archs = config.get("architectures")
    hf_class = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if hf_class in HF_ARCHITECTURES:
        return hf_class, HF_ARCHITECTURES[hf_class]
    model_type = config.get("model_type")
    if hf_class is None and isinstance(model_type, str):
        return None, HF_MODEL_TYPES.get(model_type)
    return hf_class, None


def permutes_qk(config: dict[str, Any]) -> bool:
    hf_class, arch = hf_architecture(config)
    if hf_class is not None:
        return hf_class in PERMUTE_QK
    return arch == MODEL_ARCH.LLAMA  # known only by model_type "llama"/"mistral"


class NameMapper:
    """Map HF tensor names to GGUF names for one architecture and block count."""

    def __init__(self, arch: MODEL_ARCH, n_blocks: int):
        self.arch = arch
        self._map = gguf.get_tensor_name_map(arch, n_blocks)

    def __call__(self, hf_name: str) -> str | None:
        """The GGUF name, or None when gguf-py's table has none (``.weight``/``.bias`` are carried over)."""
        name = hf_name.replace("language_model.", "")  # as convert_hf_to_gguf's filter_tensors does
        return self._map.get_name(name, try_suffixes=(".weight", ".bias"))


def is_skipped(hf_name: str) -> bool:
    return hf_name.endswith(SKIPPED_SUFFIXES)


def arch_name(arch: MODEL_ARCH) -> str:
    return MODEL_ARCH_NAMES[arch]
