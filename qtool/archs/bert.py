"""BERT (convert_hf_to_gguf's BertModel, which also takes BertForMaskedLM checkpoints): an encoder for
embeddings. Non-causal attention, the pooling type of a sentence-transformers folder (modules.json ->
1_Pooling/config.json), the WordPiece vocabulary with token type count; the ``bert.`` prefix and
``gamma``/``beta`` names of older checkpoints normalized; the position-id buffer, the pooler and the
masked-LM / next-sentence heads dropped (llama.cpp pools itself).
"""

from __future__ import annotations

import gguf
from gguf import MODEL_ARCH

from qtool.archs.base import SKIPPED_SUFFIXES, Family
from qtool.archs.config import Config
from qtool.archs.qwen import pooling_type


def not_causal(w: gguf.GGUFWriter, cfg: Config, hp, folder) -> None:
    w.add_causal_attention(False)


def single_label_head(cfg: Config, hp) -> list[str]:
    labels = cfg.data.get("id2label")
    if isinstance(labels, dict) and len(labels) > 0 and not (len(labels) == 2 and labels.get("0") == "LABEL_0"):
        return [f"{cfg.path}: id2label names a classification head; qtool converts BertModel's encoder only"]
    return []


#: what BertModel.filter_tensors drops (by suffix: the buffer, the pooler, the pre-training heads)
_DROPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias",
            "cls.predictions.bias", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
            "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
            "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
            "cls.predictions.transform.LayerNorm.gamma", "cls.predictions.transform.LayerNorm.beta",
            "cls.seq_relationship.weight", "cls.seq_relationship.bias")


class Bert(Family, hf=("BertModel", "BertForMaskedLM"), model_types=("bert",)):
    arch = MODEL_ARCH.BERT
    tokenizer = "bert"
    strip = ("bert.",)
    renames = {".gamma": ".weight", ".beta": ".bias"}
    skip = SKIPPED_SUFFIXES + _DROPPED
    keys = (not_causal, pooling_type)
    checks = (single_label_head,)
    # transformers 4.57's BertConfig defaults for keys the conversion writes
    defaults = {"bert": {"max_position_embeddings": 512, "layer_norm_eps": 1e-12, "type_vocab_size": 2}}
