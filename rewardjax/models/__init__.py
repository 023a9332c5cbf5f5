"""Backbones (Llama family, BERT), HF checkpoint mapping and the name -> backbone registry."""

from rewardjax.models.bert import Bert, BertConfig
from rewardjax.models.hf import (
    bert_params_from_hf,
    bert_params_to_hf,
    llama_params_from_hf,
    llama_params_to_hf,
    load_config,
    load_tensors,
    load_tokenizer,
    params_from_hf,
    params_to_hf,
    read_safetensors,
    save_checkpoint,
    save_safetensors,
)
from rewardjax.models.llama import Llama, LlamaConfig
from rewardjax.models.registry import (
    BackboneSpec,
    abstract,
    assign_weights,
    build_backbone,
    create,
    load_backbone,
    resolve,
)

__all__ = [
    "BackboneSpec",
    "Bert",
    "BertConfig",
    "Llama",
    "LlamaConfig",
    "abstract",
    "assign_weights",
    "bert_params_from_hf",
    "bert_params_to_hf",
    "build_backbone",
    "create",
    "llama_params_from_hf",
    "llama_params_to_hf",
    "load_backbone",
    "load_config",
    "load_tensors",
    "load_tokenizer",
    "params_from_hf",
    "params_to_hf",
    "read_safetensors",
    "resolve",
    "save_checkpoint",
    "save_safetensors",
]
