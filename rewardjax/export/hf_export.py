"""Exporting a trained scalar reward model as a Hugging Face sequence-classification checkpoint.

``export_hf`` writes ``model.safetensors`` (float32, HF tensor names), ``config.json`` and the
tokenizer files, so that ``AutoModelForSequenceClassification.from_pretrained(out_dir)`` in
PyTorch scores like rewardjax does. LoRA adapters are merged into their base kernels first.

What maps exactly, and how (each case is tested against ``transformers`` in PyTorch):

* **Llama / Qwen2 / Qwen3 / Mistral, pooling ``last``** -> ``<Family>ForSequenceClassification``
  (``num_labels=1``). HF reads the logit at the *rightmost token whose id is not
  ``config.pad_token_id``*; rewardjax reads the last position whose attention mask is 1. The
  two agree for right- or left-padded batches as long as no sequence *ends* with the pad token,
  so ``pad_token_id`` is set to the tokenizer's pad id and export refuses a tokenizer whose
  encoded sequences end with that id (e.g. pad = EOS with an EOS-terminated encoding). HF's
  ``score`` layer has no bias, and the head's bias ``b`` cannot be folded into its weights (the
  final RMSNorm output has no constant dimension), so a plain ``transformers`` user would get
  ``reward - b``. Export therefore refuses a non-zero ``b`` (``export.format=auto`` then writes
  the native format) unless ``drop_bias=True`` (``export.drop_bias``): the checkpoint is written
  without ``b``, ``config.json`` records ``rewardjax.dropped_bias = logit_offset = b``, and
  rewards are shifted by that constant; pairwise preferences (and RewardBench accuracies) do
  not depend on it.
* **BERT, pooling ``pooler``** -> ``BertForSequenceClassification`` by a plain weight copy: the
  model's PoolerHead *is* BERT's tanh pooler + classifier (started from the checkpoint's pooler).
* **BERT, pooling ``cls``** -> ``BertForSequenceClassification``. HF computes
  ``classifier(tanh(pooler(h[:, 0])))``; our head is linear on ``h[:, 0]`` (the first real token,
  position 0 under right padding). The pooler's first unit is set to ``c * (wᵀh + b)`` with
  ``c = 2^-k`` and every other unit to 0, the classifier to ``[1/c, 0, …]``. Because ``h`` comes
  out of a LayerNorm, ``|wᵀh + b| <= S = ||w ⊙ γ||₂ √D + |wᵀβ| + |b|`` for *every* input, and
  ``k`` is chosen so that ``c·S <= 2^-12``; then ``|tanh(x) - x| <= |x|³/3`` is a relative error
  below ``2^-24 / 3``, under float32 resolution. Powers of two make the scaling itself exact.
* **BERT with ``mean`` pooling (the encoder default) or ``last``** has no HF
  sequence-classification equivalent (the HF head only sees position 0): export raises and
  points to :mod:`rewardjax.export.native`, which stores any pooling exactly.

``config.json`` carries a ``rewardjax`` block: pooling, ``logit_offset`` (= ``dropped_bias``,
0 unless a bias was dropped), the source model and step, and optional reward normalisation
statistics ``{"mean", "std", "count", "data"}`` of rewardjax rewards
(``reward = logit + logit_offset``; ``normalised = (reward - mean) / std``).
"""

from __future__ import annotations

import json
import logging
import math
import os

import jax
import numpy as np
from flax import nnx

from rewardjax.heads.scalar import LinearHead, PoolerHead
from rewardjax.models import hf
from rewardjax.models.bert import BertConfig
from rewardjax.models.llama import LlamaConfig

log = logging.getLogger(__name__)

SEQ_CLS_ARCHITECTURES = {
    "llama": "LlamaForSequenceClassification",
    "qwen2": "Qwen2ForSequenceClassification",
    "qwen3": "Qwen3ForSequenceClassification",
    "mistral": "MistralForSequenceClassification",
    "bert": "BertForSequenceClassification",
}
# |tanh(x) - x| <= |x|^3 / 3: with |x| <= 2^-12 the relative error is below 2^-24 / 3.
_TANH_LINEAR_BOUND_LOG2 = -12
# A head bias below this fraction of the largest |w·h| (or of 1) is float noise, not an offset.
_BIAS_RTOL = 1e-6


class NotExportable(ValueError):
    """The model has no exact HF sequence-classification equivalent (use native export)."""


def merged_model(run, state) -> nnx.Module:
    """The run's reward model rebuilt from ``state`` with every LoRA adapter merged."""
    from rewardjax.lora.inject import lora_paths, merge_lora

    params, frozen = jax.device_get((state.params, state.frozen))
    model = nnx.merge(run.graphdef, params, frozen)
    return merge_lora(model) if lora_paths(model) else model


def reward_statistics(rewards, data: str = "") -> dict:
    """``{"mean", "std", "count", "data"}`` of rewards (population std), for normalisation."""
    r = np.asarray(rewards, np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("cannot compute normalisation statistics from zero rewards")
    return {"mean": float(r.mean()), "std": float(r.std()), "count": int(r.size), "data": data}


def _check_normalisation(norm: dict | None) -> dict | None:
    if norm is None:
        return None
    missing = [k for k in ("mean", "std") if k not in norm]
    if missing:
        raise ValueError(f"normalisation needs keys mean and std; missing {missing}")
    if not (math.isfinite(float(norm["mean"])) and float(norm["std"]) > 0):
        raise ValueError(f"normalisation must have a finite mean and std > 0, got {norm}")
    return {k: (float(v) if k in ("mean", "std") else v) for k, v in norm.items()}


def _scalar_head(model) -> tuple[np.ndarray, float]:
    head = model.head
    if not isinstance(head, LinearHead) or head.num_outputs != 1:
        raise NotExportable(
            f"HF sequence-classification export needs a scalar linear head; this model has "
            f"{type(head).__name__} with {getattr(head, 'num_outputs', '?')} outputs. Use "
            "rewardjax.export.native for multi-objective or mixture models.")
    kernel = np.asarray(head.kernel[...], np.float32)[:, 0]  # [D]
    return kernel, float(np.asarray(head.bias[...])[0])


def _last_token_is_pad(run) -> bool:
    """Whether an encoded sequence ends with the pad id (HF would then pool the wrong token)."""
    probe = run.encoder.encode([{"role": "user", "content": "Hello there."}], "Fine, thanks.")
    if probe is None:
        return False
    return int(probe.ids[-1]) == int(run.tokenizer.pad_token_id)


def _llama_export(spec, params, kernel, bias, run, drop_bias) -> tuple[dict, dict, float]:
    config: LlamaConfig = spec.config
    hf_config = config.to_hf()
    arch = SEQ_CLS_ARCHITECTURES[hf_config["model_type"]]
    tokenizer = run.tokenizer
    if tokenizer.pad_token_id is None:
        raise NotExportable("the tokenizer has no pad token: HF sequence classification needs "
                            "config.pad_token_id to find the last real token")
    if _last_token_is_pad(run):
        raise NotExportable(
            f"encoded sequences end with token id {tokenizer.pad_token_id}, which is also the "
            "pad token: transformers would pool an earlier token. Give the tokenizer a pad "
            "token distinct from the end-of-sequence token before training.")
    # |w·h| <= ||w ⊙ γ||₂ √D for every final-RMSNorm output h = γ ⊙ n with ||n||₂ = √D.
    gamma = np.asarray(params["backbone"]["final_norm"]["scale"], np.float64)
    reach = float(np.linalg.norm(kernel * gamma)) * math.sqrt(kernel.shape[0])
    if abs(bias) > _BIAS_RTOL * max(reach, 1.0):
        if not drop_bias:
            raise NotExportable(
                f"{arch}'s score layer has no bias, and this reward head's bias {bias:.6g} "
                "cannot be folded into the weights (the final RMSNorm output has no constant "
                f"dimension), so transformers would score reward - {bias:.6g}. Export in the "
                "native format (export.format=native or auto), or set export.drop_bias=True "
                "(export_hf(..., drop_bias=True)) to write the HF checkpoint without the bias: "
                "rewards shifted by a constant, pairwise preferences unchanged.")
        log.warning("export.drop_bias: %s has no bias; dropping the head's bias %.6g, so "
                    "transformers scores are rewardjax rewards - %.6g (a constant shift: "
                    "pairwise preferences unchanged; recorded as rewardjax.dropped_bias)",
                    arch, bias, bias)
    tensors = hf.llama_params_to_hf(config, params["backbone"], prefix="model.",
                                    include_lm_head=False)
    tensors["score.weight"] = kernel[None, :]  # [num_labels=1, D]
    hf_config["pad_token_id"] = int(tokenizer.pad_token_id)
    for key in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            hf_config[key] = int(value)
    return tensors, hf_config, bias  # dropped (or negligible): logits = reward - bias


def pooler_scale_exponent(kernel: np.ndarray, bias: float, norm_scale: np.ndarray,
                          norm_bias: np.ndarray) -> int:
    """``k`` with ``2^-k · S <= 2^-12``, ``S`` the bound on ``|wᵀh + b|`` over LayerNorm outputs."""
    d = kernel.shape[0]
    w = kernel.astype(np.float64)
    bound = (np.linalg.norm(w * norm_scale) * math.sqrt(d) + abs(float(w @ norm_bias))
             + abs(bias))
    bound = max(bound, 1e-30)
    return max(0, math.ceil(math.log2(bound)) - _TANH_LINEAR_BOUND_LOG2)


def _bert_export(spec, params, kernel, bias, run, drop_bias) -> tuple[dict, dict, float]:
    del drop_bias  # exact: the bias lives in the pooler
    config: BertConfig = spec.config
    backbone = params["backbone"]
    tensors = hf.bert_params_to_hf(config, backbone, prefix="bert.")
    last_norm = backbone["layers"]["mlp_norm"]
    gamma = np.asarray(last_norm["scale"], np.float64)[-1]
    beta = np.asarray(last_norm["bias"], np.float64)[-1]
    k = pooler_scale_exponent(kernel, bias, gamma, beta)
    c = np.float32(2.0 ** -k)
    d = config.hidden_size
    pooler_w = np.zeros((d, d), np.float32)  # torch Linear layout [out, in]
    pooler_w[0] = kernel * c  # exact: scaling by a power of two
    pooler_b = np.zeros((d,), np.float32)
    pooler_b[0] = np.float32(bias) * c
    classifier_w = np.zeros((1, d), np.float32)
    classifier_w[0, 0] = np.float32(2.0 ** k)
    tensors.update({"bert.pooler.dense.weight": pooler_w, "bert.pooler.dense.bias": pooler_b,
                    "classifier.weight": classifier_w,
                    "classifier.bias": np.zeros((1,), np.float32)})
    hf_config = config.to_hf()
    pad = run.tokenizer.pad_token_id
    hf_config["pad_token_id"] = int(pad if pad is not None else config.pad_token_id)
    hf_config["classifier_dropout"] = None
    return tensors, hf_config, 0.0


def export_hf(run, state, out_dir: str, *, normalisation: dict | None = None,
              drop_bias: bool = False) -> str:
    """Writes ``state`` of ``run`` as an HF sequence-classification checkpoint.

    Args:
      run: a :class:`rewardjax.runtime.setup.Run` (its graph, backbone spec and tokenizer).
      state: the :class:`TrainState` to export (e.g. ``run.state`` after training/restoring).
      out_dir: created if needed; ``model.safetensors``, ``config.json`` and tokenizer files.
      normalisation: optional ``{"mean", "std"[, "count", "data"]}`` of rewardjax rewards
        (:func:`reward_statistics`), stored under ``config.json["rewardjax"]``.
      drop_bias: Llama family only: write a head with a non-zero bias without it (HF's
        ``score`` has none); transformers then scores ``reward - bias``, recorded as
        ``rewardjax.dropped_bias``. False refuses such a head.

    Returns:
      ``out_dir``.

    Raises:
      NotExportable: no exact HF equivalent (multi-output head, BERT without cls pooling,
        decoder without last-token pooling, a pad token that ends sequences, a decoder head
        with a non-zero bias and ``drop_bias=False``).
    """
    model = merged_model(run, state)
    spec = run.spec
    pooling = model.pooling
    if spec.family not in ("llama", "bert"):
        raise NotExportable(f"no HF export for backbone family {spec.family!r}")
    if spec.family == "llama" and pooling != "last":
        raise NotExportable(f"decoder with pooling={pooling!r}: HF sequence classification "
                            "reads the last token only; use native export")
    if spec.family == "bert" and pooling == "pooler":
        return _write_hf(run, state, out_dir, model, *_bert_pooler_export(spec, model, run),
                         normalisation)
    if spec.family == "bert" and pooling != "cls":
        raise NotExportable(
            f"BERT with pooling={pooling!r}: BertForSequenceClassification only sees the "
            "[CLS] position (through its tanh pooler), so a mean- or last-pooled reward has "
            "no exact HF form. Train with model.pooling=pooler (BERT's own head) or cls, or "
            "export with "
            "rewardjax.export.native.")
    kernel, bias = _scalar_head(model)
    params = nnx.state(model, nnx.Param).to_pure_dict()
    build = _llama_export if spec.family == "llama" else _bert_export
    tensors, hf_config, offset = build(spec, params, kernel, bias, run, drop_bias)
    return _write_hf(run, state, out_dir, model, tensors, hf_config, offset, normalisation)


def _bert_pooler_export(spec, model, run) -> tuple[dict, dict, float]:
    """``pooling="pooler"``: the model *is* ``BertForSequenceClassification`` (pooler and
    classifier are the PoolerHead's weights), so the export is a plain weight copy."""
    head = model.head
    if not isinstance(head, PoolerHead) or head.num_outputs != 1:
        raise NotExportable("pooling=pooler export needs a scalar PoolerHead")
    params = nnx.state(model, nnx.Param).to_pure_dict()
    config: BertConfig = spec.config
    tensors = hf.bert_params_to_hf(config, params["backbone"], prefix="bert.")
    f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))  # noqa: E731
    tensors.update({
        "bert.pooler.dense.weight": f32(np.asarray(head.dense_kernel[...]).T),  # [out, in]
        "bert.pooler.dense.bias": f32(head.dense_bias[...]),
        "classifier.weight": f32(np.asarray(head.out.kernel[...]).T),  # [1, D]
        "classifier.bias": f32(head.out.bias[...]),
    })
    hf_config = config.to_hf()
    pad = run.tokenizer.pad_token_id
    hf_config["pad_token_id"] = int(pad if pad is not None else config.pad_token_id)
    hf_config["classifier_dropout"] = None
    return tensors, hf_config, 0.0


def _write_hf(run, state, out_dir, model, tensors, hf_config, offset, normalisation) -> str:
    spec, pooling = run.spec, model.pooling
    model_type = hf_config["model_type"]
    hf_config.update({
        "architectures": [SEQ_CLS_ARCHITECTURES[model_type]],
        "num_labels": 1,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
        "dtype": "float32",
        "rewardjax": {
            "format_version": 1,
            "pooling": pooling,
            "logit_offset": float(offset),
            "dropped_bias": float(offset),
            "reward_formula": "reward = logits[:, 0] + logit_offset; "
                              "normalised = (reward - normalisation.mean) / normalisation.std",
            "normalisation": _check_normalisation(normalisation),
            "source_model": str(spec.source),
            "step": int(np.asarray(jax.device_get(state.step))),
        },
    })
    hf.save_checkpoint(out_dir, hf_config, tensors)
    if run.tokenizer is not None:
        run.tokenizer.save_pretrained(out_dir)
    log.info("exported %s (%d tensors) to %s", hf_config["architectures"][0], len(tensors),
             out_dir)
    return out_dir


def read_rewardjax_block(out_dir: str) -> dict:
    """The ``rewardjax`` block of an exported ``config.json``."""
    with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
        block = json.load(f).get("rewardjax")
    if block is None:
        raise ValueError(f"{out_dir}/config.json has no 'rewardjax' block (not a rewardjax export)")
    return block
