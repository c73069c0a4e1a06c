"""The architecture registry: one small :class:`Family` subclass per convert_hf_to_gguf model class,
registered on its Hugging Face ``architectures`` names.

A family module declares data (after ``ModelBase.register``, but small)::

    class Qwen2(Family, hf=("Qwen2ForCausalLM",), model_types=("qwen2",)):
        arch = MODEL_ARCH.QWEN2
        tokenizer = "qwen2"
        keys = (pooling_type,)

and the machinery below the families (tensors.py: names through ``gguf.TensorNameMap``, transforms,
generated and skipped tensors, the config-vs-tensors checks; metadata.py: keys through ``gguf.GGUFWriter``'s
adders, i.e. ``gguf.Keys``; the tokenizer through qtool.formats.vocab) does the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR

from qtool.archs.transforms import PermuteQK, Transform

_REGISTRY: dict[str, type["Family"]] = {}
_BY_MODEL_TYPE: dict[str, type["Family"]] = {}

T = MODEL_TENSOR

#: config.json keys of each hyperparameter symbol (``find_hparam`` order: the first key present wins)
HPARAMS: dict[str, tuple[str, ...]] = {
    "n_layer": ("n_layers", "num_hidden_layers", "n_layer", "num_layers"),
    "n_embd": ("hidden_size", "n_embd", "dim"),
    "n_ff": ("prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner",
             "hidden_dim"),
    "n_head": ("num_attention_heads", "n_head", "n_heads"),
    "n_head_kv": ("num_key_value_heads", "n_kv_heads"),
    "n_vocab": ("vocab_size",),
    "head_dim": ("head_dim",),
    "n_expert": ("num_local_experts", "num_experts", "n_routed_experts"),
    "n_expert_used": ("num_experts_per_tok", "num_experts_per_token", "top_k_experts"),
    "n_ff_exp": ("moe_intermediate_size",),
}

#: what llama.cpp's loader expects of each tensor (numpy order, expressions over the symbols above);
#: a ``.bias`` is checked against the first dimension. Families add or override entries.
SHAPES: dict[MODEL_TENSOR, tuple[str, ...]] = {
    T.TOKEN_EMBD: ("n_vocab", "n_embd"),
    T.OUTPUT: ("n_vocab", "n_embd"),
    T.OUTPUT_NORM: ("n_embd",),
    T.ATTN_NORM: ("n_embd",),
    T.FFN_NORM: ("n_embd",),
    T.ATTN_Q: ("n_head*head_dim", "n_embd"),
    T.ATTN_K: ("n_head_kv*head_dim", "n_embd"),
    T.ATTN_V: ("n_head_kv*head_dim", "n_embd"),
    T.ATTN_OUT: ("n_embd", "n_head*head_dim"),
    T.ATTN_Q_NORM: ("head_dim",),
    T.ATTN_K_NORM: ("head_dim",),
    T.FFN_GATE: ("n_ff", "n_embd"),
    T.FFN_UP: ("n_ff", "n_embd"),
    T.FFN_DOWN: ("n_embd", "n_ff"),
    T.FFN_GATE_INP: ("n_expert", "n_embd"),
    T.FFN_GATE_EXP: ("n_expert", "n_ff_exp", "n_embd"),
    T.FFN_UP_EXP: ("n_expert", "n_ff_exp", "n_embd"),
    T.FFN_DOWN_EXP: ("n_expert", "n_embd", "n_ff_exp"),
    T.ROPE_FREQS: ("head_dim/2",),
}

#: buffers the reference converter drops before mapping (ModelBase.prepare_tensors)
SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")


@dataclass(frozen=True)
class Experts:
    """stack_experts: per-expert HF tensors (``pattern`` with groups bid, expert, projection) stacked
    into one tensor per projection, renamed ``merged`` (then mapped as any other name)."""

    pattern: str
    merged: str                       # formatted with bid= and proj=
    projections: tuple[str, ...]      # in the order the reference emits them

    def match(self, name: str) -> tuple[int, int, str] | None:
        m = re.fullmatch(self.pattern, name)
        return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None


@dataclass(frozen=True)
class Split:
    """One stored HF tensor that becomes several (e.g. a fused gate_up): suffix -> [(new suffix, part)]."""

    suffix: str
    parts: tuple[tuple[str, int], ...]


def permute_q(hp) -> Transform:
    """Q rows in ggml's rope order: heads of the query projection."""
    return PermuteQK(hp.n_head)


def permute_k(hp) -> Transform:
    """K rows in ggml's rope order: heads of the key projection (the kv heads under GQA)."""
    return PermuteQK(hp.n_head_kv)


class Family:
    """What convert_hf_to_gguf does for one model class. Subclass with ``hf=(...)`` to register."""

    #: the GGUF architecture
    arch: ClassVar[MODEL_ARCH]
    #: the HF names it is registered on (set by registration)
    hf_names: ClassVar[tuple[str, ...]] = ()
    #: the tokenizer recipe (the reference's set_vocab) or kind, as qtool.formats.vocab names them
    tokenizer: ClassVar[str] = "gpt2"
    #: HF name suffix -> transform factory (called with the checked hyperparameters)
    transforms: ClassVar[dict[tuple[str, ...], Callable[[Any], Transform]]] = {}
    #: per-expert tensors stacked into ffn_*_exps
    experts: ClassVar[Experts | None] = None
    #: stored tensors split into several
    splits: ClassVar[tuple[Split, ...]] = ()
    #: HF name suffix -> suffix it is renamed to before mapping (e.g. a fused expert tensor without
    #: ".weight")
    renames: ClassVar[dict[str, str]] = {}
    #: name parts dropped before mapping (filter_tensors)
    strip: ClassVar[tuple[str, ...]] = ("language_model.",)
    #: tensors dropped (by suffix)
    skip: ClassVar[tuple[str, ...]] = SKIPPED_SUFFIXES
    #: drop lm_head.weight when config.json says tie_word_embeddings (only where the reference does)
    skip_tied_head: ClassVar[bool] = False
    #: generated tensors: functions (config, hparams) -> [(MODEL_TENSOR, float32 array)], written first
    generate: ClassVar[tuple[Callable, ...]] = ()
    #: family keys after the shared ones: functions (writer, config, hparams, folder), in the reference's order
    keys: ClassVar[tuple[Callable, ...]] = ()
    #: replaces the shared TextModel.set_gguf_parameters keys (metadata.hparams) for a family whose reference
    #: class writes its own instead of calling super(): a function (writer, config, hparams)
    own_hparams: ClassVar[Callable | None] = None
    #: checks of the config beyond the shapes: functions (config, hparams) -> [why llama.cpp would not run
    #: it as the HF model]
    checks: ClassVar[tuple[Callable, ...]] = ()
    #: extra or different tensor shapes (see SHAPES)
    shapes: ClassVar[dict[MODEL_TENSOR, tuple[str, ...]]] = {}
    #: model_type -> {key: default}: what transformers' config class of that model_type fills in when
    #: config.json lacks the key (the reference reads config.json through AutoConfig(...).to_dict()).
    #: A callable default is given the config and may return None (no value).
    defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init_subclass__(cls, hf: tuple[str, ...] = (), model_types: tuple[str, ...] = (), **kwargs):
        super().__init_subclass__(**kwargs)
        if not hf:
            return
        if "arch" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} registers {hf} without an arch")
        for name in hf:
            if name in _REGISTRY:
                raise TypeError(f"{name} is registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
            _REGISTRY[name] = cls
        for mt in model_types:
            if mt in _BY_MODEL_TYPE:
                raise TypeError(f"model_type {mt} is registered twice")
            _BY_MODEL_TYPE[mt] = cls
        cls.hf_names = tuple(hf)

    @classmethod
    def arch_name(cls) -> str:
        return MODEL_ARCH_NAMES[cls.arch]

    @classmethod
    def with_defaults(cls, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with the defaults of its model_type's transformers config class filled in."""
        table = cls.defaults.get(config.get("model_type"), {})
        out = dict(config)
        for key, default in table.items():
            if out.get(key) is None:
                value = default(out) if callable(default) else default
                if value is not None:
                    out[key] = value
        return out

    @classmethod
    def all_shapes(cls) -> dict[MODEL_TENSOR, tuple[str, ...]]:
        return {**SHAPES, **cls.shapes}


def hf_class(config: dict[str, Any]) -> str | None:
    """``architectures[0]`` of a config.json (``text_config``'s if it has its own), or None."""
    text = config.get("text_config")
    for c in ((text, config) if isinstance(text, dict) else (config,)):
        archs = c.get("architectures")
        if isinstance(archs, list) and archs and isinstance(archs[0], str):
            return archs[0]
    return None


def lookup(config: dict[str, Any]) -> type[Family] | None:
    """The family of a config.json: by ``architectures``, else (none named) by ``model_type``."""
    from qtool import archs  # noqa: F401  (registers the families)

    name = hf_class(config)
    if name is not None:
        return _REGISTRY.get(name)
    model_type = config.get("model_type")
    return _BY_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None


def supported() -> list[str]:
    from qtool import archs  # noqa: F401

    return sorted(_REGISTRY)


def registered() -> dict[str, type[Family]]:
    from qtool import archs  # noqa: F401

    return dict(_REGISTRY)
