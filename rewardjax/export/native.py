"""rewardjax's own export format, for models that are not one scalar HF classifier.

Multi-objective (ArmoRM), ensembles and mixtures of experts (DMoERM) have no
``AutoModelForSequenceClassification`` form, and neither do encoders with mean pooling. They are
written as a directory:

* ``rewardjax_model.json``: the manifest (documented below);
* ``model.safetensors``: every array, float32, under the stored names listed in the manifest;
  identical arrays are stored once (K experts merged from LoRA on one base share every tensor
  but their adapted kernels, so they cost little more than one model);
* the tokenizer files (``tokenizer.save_pretrained``).

This module writes the format; :mod:`rewardjax.export.native_load` reads it back and scores.

Manifest (``format: "rewardjax-native"``, ``version: 1``)::

    backbone   {"family": "llama"|"bert", "config": <LlamaConfig/BertConfig fields>}
    pooling    "last" | "cls" | "mean";  uses_token_types: bool
    encoding   {"max_length", "truncation", "mode", "padding_side"} (SequenceEncoder settings)
    members    [{"num_outputs": K}, ...]  each a full reward model: backbone + pooling +
               linear head with K outputs, LoRA already merged; variables under
               "members/<i>/<module path>"
    modules    {name: {"type": "gate"|"fixed_weights"|"moe_aggregator"|"router",
                       "hparams": {...}}}; variables under "modules/<name>/<path>"
    arrays     {name: shape}; stored under "arrays/<name>"
    objectives [names of the K outputs]   (multi_objective)
    combine    how the reward is computed, by kind:
      scalar           reward = member 0's head (K = 1)
      multi_objective  r = member 0's K outputs; r' = r Tᵀ with T = arrays[debias] (or r);
                       reward = β g(x)ᵀ r' with g = modules[gate] on the prompt feature, or
                       arrays[weights]ᵀ r', or absent (objectives only)
      ensemble         reward = predictions.combine(member rewards, method, lam)
      mixture          category = argmax modules[router](prompt feature of member
                       router_member, ``prompt_feature``: "prefix_mean" by default, as the
                       DMoERM recipe's router) (or 0 without a router); per category c with experts
                       E_c (member ids): reward_c = modules[aggregator_c](z_e1 ⊕ … ⊕ z_eK)
                       with z the pooled features, or the single expert's head reward
    tensors    {variable name: stored name}
    normalisation, meta: free-form, optional

Prompt features (``combine["prompt_feature"]``): ``"armorm"``, the gate input of
``rewardjax.runtime.features`` (decoders: the hidden state at the prompt's last token of the same
sequence; encoders: the pooled feature of a second pass over the prompt-only prefix), default
for the gate; ``"prefix_mean"``, the mean hidden state of a pass over the prompt-only prefix
(``rewardjax.recipes.dmoerm.data.prompt_features``), default for the router.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardjax.models.llama import LlamaConfig

FORMAT, VERSION = "rewardjax-native", 1
MANIFEST, TENSORS = "rewardjax_model.json", "model.safetensors"
KINDS = ("scalar", "multi_objective", "ensemble", "mixture")


def describe_module(module) -> tuple[str, dict]:
    """``(type, hparams)`` that rebuild ``module`` (a gate, aggregator or router) by shape."""
    from rewardjax.heads.gating import FixedWeights, GatingMLP
    from rewardjax.heads.moe import MoEAggregator
    from rewardjax.heads.router import Router

    if isinstance(module, GatingMLP):
        layers = list(module.hidden)
        return "gate", {"in_features": (layers[0] if layers else module.out).in_features,
                        "num_objectives": module.out.out_features,
                        "hidden": layers[0].out_features if layers else 1,
                        "depth": len(layers), "temperature": module.temperature}
    if isinstance(module, FixedWeights):
        return "fixed_weights", {"num_objectives": int(module.logits.shape[0]),
                                 "temperature": module.temperature}
    if isinstance(module, MoEAggregator):
        return "moe_aggregator", {"num_experts": module.num_experts, "features": module.features,
                                  "hidden": module.w0.out_features, "sigmoid": module.sigmoid,
                                  "prelu_parameters": int(module.act.slope.shape[0])}
    if isinstance(module, Router):
        return "router", {"features": int(module.shift.shape[0]),
                          "num_categories": module.num_categories,
                          "hidden": module.hidden.out_features if module.hidden is not None
                          else 0}
    raise TypeError(f"no native-format description for {type(module).__name__}")


def _flat(module) -> dict[str, np.ndarray]:
    out = {}
    for p, v in nnx.to_flat_state(nnx.state(module)):
        value = np.asarray(jax.device_get(v.get_value()))
        floating = np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"
        out["/".join(map(str, p))] = value.astype(np.float32) if floating else value
    return out


def _config_dict(config) -> dict:
    d = dataclasses.asdict(config)
    if isinstance(config, LlamaConfig):
        d["rope_scaling"] = config.rope_scaling_dict
    return d


def save_native(out_dir: str, *, kind: str, spec, tokenizer, members, combine: dict,
                modules: dict | None = None, arrays: dict | None = None,
                objectives=None, encoding: dict | None = None,
                normalisation: dict | None = None, meta: dict | None = None) -> str:
    """Writes the native format (see the module docstring).

    Args:
      out_dir: created if needed.
      kind: one of ``KINDS``.
      spec: the :class:`~rewardjax.models.registry.BackboneSpec` every member shares.
      tokenizer: saved alongside (may be None).
      members: reward models (``RewardModel``, LoRA merged: see :func:`merged_experts`).
      combine: the kind's combination settings (see the module docstring).
      modules: ``{name: module}`` of gates, aggregators and routers (described by
        :func:`describe_module`).
      arrays: ``{name: array}`` (debias matrix, fixed objective weights ...).
      objectives: names of a multi-objective model's outputs.
      encoding: ``SequenceEncoder`` settings (``max_length``, ``truncation``, ``mode``,
        ``padding_side``).
      normalisation, meta: stored as given.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    if not members:
        raise ValueError("the native format needs at least one member reward model")
    variables: dict[str, np.ndarray] = {}
    member_info = []
    for i, m in enumerate(members):
        if any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(nnx.state(m))):
            raise ValueError(f"member {i} still has LoRA adapters: merge them first")
        member_info.append({"num_outputs": int(m.head.num_outputs)})
        variables.update({f"members/{i}/{k}": v for k, v in _flat(m).items()})
    module_info = {}
    for name, module in (modules or {}).items():
        mtype, hparams = describe_module(module)
        module_info[name] = {"type": mtype, "hparams": hparams}
        variables.update({f"modules/{name}/{k}": v for k, v in _flat(module).items()})
    array_info = {}
    for name, value in (arrays or {}).items():
        value = np.asarray(value, np.float32)
        array_info[name] = list(value.shape)
        variables[f"arrays/{name}"] = value
    stored, names, by_hash = {}, {}, {}
    for key in sorted(variables):
        value = np.array(variables[key], order="C")  # (ascontiguousarray makes 0-d 1-d)
        digest = hashlib.sha1(value.tobytes() + str(value.shape).encode()).hexdigest()
        names[key] = by_hash.setdefault(digest, key)
        stored.setdefault(names[key], value)
    manifest = {
        "format": FORMAT, "version": VERSION, "kind": kind,
        "backbone": {"family": spec.family, "config": _config_dict(spec.config)},
        "pooling": members[0].pooling, "uses_token_types": bool(members[0].uses_token_types),
        "encoding": encoding or {}, "members": member_info, "modules": module_info,
        "arrays": array_info, "objectives": list(objectives or []), "combine": combine,
        "tensors": names, "normalisation": normalisation, "meta": meta or {},
    }
    os.makedirs(out_dir, exist_ok=True)
    from safetensors.numpy import save_file

    save_file(stored, os.path.join(out_dir, TENSORS), metadata={"format": FORMAT})
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def set_normalisation(out_dir: str, normalisation: dict | None) -> None:
    """Rewrites the ``normalisation`` entry of an existing export's manifest (statistics that
    need the exported model itself to compute)."""
    path = os.path.join(out_dir, MANIFEST)
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["normalisation"] = normalisation
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)


def encoding_of(config) -> dict:
    """The ``encoding`` manifest entry from a run config."""
    return {"max_length": int(config.model.max_length), "truncation": config.data.truncation,
            "mode": config.data.encoding, "padding_side": config.data.padding_side}


def save_run(run, state, out_dir: str, *, normalisation: dict | None = None) -> str:
    """A trained scalar (or K-output) run as a one-member native model, any pooling."""
    from rewardjax.export.hf_export import merged_model

    model = merged_model(run, state)
    k = int(model.head.num_outputs)
    return save_native(out_dir, kind="scalar" if k == 1 else "multi_objective", spec=run.spec,
                       tokenizer=run.tokenizer, members=[model],
                       combine={"type": "scalar" if k == 1 else "multi_objective"},
                       encoding=encoding_of(run.config), normalisation=normalisation,
                       meta={"source_model": str(run.spec.source),
                             "step": int(np.asarray(jax.device_get(state.step)))})


def save_armorm(out_dir: str, run, state, head, *, normalisation: dict | None = None) -> str:
    """An ArmoRM model (frozen backbone of ``run`` + :class:`~rewardjax.heads.gating.ArmoRMHead`)
    as a multi-objective native model: the ridge regression becomes a K-output linear head
    (float32; the stage-1 head computes in float64 on the host)."""
    from rewardjax.export.hf_export import merged_model
    from rewardjax.heads.scalar import LinearHead

    model = merged_model(run, state)
    w = np.asarray(head.regression_weights, np.float32)  # [D, K]
    with nnx.use_eager_sharding(False):
        linear = LinearHead(w.shape[0], w.shape[1], rngs=nnx.Rngs(0))
    linear.kernel.set_value(jnp.asarray(w))
    linear.bias.set_value(jnp.asarray(head.regression_bias, jnp.float32))
    model.head = linear
    return save_native(
        out_dir, kind="multi_objective", spec=run.spec, tokenizer=run.tokenizer, members=[model],
        combine={"type": "multi_objective", "debias": "debias", "gate": "gate"},
        modules={"gate": head.gate}, arrays={"debias": head.debias},
        objectives=head.objectives, encoding=encoding_of(run.config),
        normalisation=normalisation,
        meta={"verbose_index": int(head.verbose_index), "source_model": str(run.spec.source)})


def merged_experts(graphdef, stacked_lora, rest_state) -> list:
    """K plain reward models from stacked LoRA experts (:mod:`rewardjax.lora.stacked`)."""
    from rewardjax.lora.inject import merge_lora
    from rewardjax.lora.stacked import _without, num_experts

    rest = _without(rest_state, stacked_lora)
    out = []
    for i in range(num_experts(stacked_lora)):
        adapter = jax.tree.map(lambda x, i=i: x[i], stacked_lora)
        out.append(merge_lora(nnx.merge(graphdef, adapter, rest)))
    return out
