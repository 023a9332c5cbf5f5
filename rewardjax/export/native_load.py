"""Loading rewardjax's native export: rebuilds every member and module and scores like the code
that produced it.

The on-disk format (manifest, stored tensors, how each kind combines its members) is documented
in :mod:`rewardjax.export.native`, which writes it.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardjax.data.batching import default_buckets, map_batches
from rewardjax.data.features import prompt_prefix
from rewardjax.data.tokenize import SequenceEncoder
from rewardjax.export.native import FORMAT, MANIFEST, TENSORS, VERSION
from rewardjax.models import hf, registry
from rewardjax.models.bert import BertConfig
from rewardjax.models.llama import LlamaConfig
from rewardjax.models.pooling import pool
from rewardjax.models.reward_model import build_reward_model


def _module_types():
    from rewardjax.heads.gating import build_gate
    from rewardjax.heads.moe import MoEAggregator
    from rewardjax.heads.router import Router

    def agg(num_experts, features, hidden, **kw):
        return MoEAggregator(num_experts, features, hidden, rngs=nnx.Rngs(0), **kw)

    return {
        "gate": lambda in_features, num_objectives, **kw: build_gate(
            "gate", in_features, num_objectives, **kw),
        "fixed_weights": lambda num_objectives, **kw: build_gate(
            "fixed", 1, num_objectives, **kw),
        "moe_aggregator": agg,
        "router": lambda features, num_categories, hidden=0: Router(
            features, num_categories, hidden, rngs=nnx.Rngs(0)),
    }


def _fill(module, tensors: dict[str, np.ndarray], prefix: str, where: str) -> None:
    """Sets every variable of ``module`` from ``tensors[prefix + path]`` (exact shapes)."""
    flat = nnx.to_flat_state(nnx.state(module))
    names = set()
    for path, var in flat:
        key = prefix + "/".join(map(str, path))
        names.add(key)
        if key not in tensors:
            raise ValueError(f"{where}: no tensor {key!r}")
        value = tensors[key]
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"{where}: {key!r} has shape {value.shape}, expected {var.shape}")
        var.set_value(jnp.asarray(value, var.dtype))
    extra = sorted(k for k in tensors if k.startswith(prefix) and k not in names)
    if extra:
        raise ValueError(f"{where}: unexpected tensors {extra[:5]}")
    nnx.update(module, nnx.from_flat_state(flat))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _forward(graphdef, state, batch, prompt_index, pooling=None):
    """``(head outputs, pooled features [B, D], hidden at prompt_index [B, D])``; ``pooling``
    overrides the model's own for the features (not for the head)."""
    model = nnx.merge(graphdef, state)
    kwargs = {"token_type_ids": batch["token_type_ids"]} if model.uses_token_types else {}
    hidden = model.backbone(batch["input_ids"], batch["attention_mask"], dropout_rng=None,
                            dropout_rate=None, **kwargs)  # [B, T, D]
    z = pool(hidden, batch["attention_mask"], model.pooling)  # [B, D]
    r = model.head(z)
    if pooling is not None and pooling != model.pooling:
        z = pool(hidden, batch["attention_mask"], pooling)
    zp = jnp.take_along_axis(hidden, jnp.maximum(prompt_index, 0)[:, None, None], axis=1)
    zp = jnp.where(prompt_index[:, None] >= 0, zp[:, 0].astype(jnp.float32), 0.0)  # [B, D]
    return r, z, zp


class NativeModel:
    """A loaded native export: ``score(prompts, responses)`` rebuilds the saved reward.

    Attributes:
      manifest: the parsed manifest.
      members: ``[(graphdef, state)]`` of the member reward models.
      modules: rebuilt gates / aggregators / routers by name.
      arrays: named numpy arrays.
      tokenizer, encoder: how texts become token ids (as at training time).
    """

    def __init__(self, manifest, members, modules, arrays, tokenizer, encoder, is_causal):
        self.manifest, self.members, self.modules, self.arrays = manifest, members, modules, arrays
        self.tokenizer, self.encoder, self.is_causal = tokenizer, encoder, is_causal

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def _run(self, member: int, seqs, batch_size: int, pooling: str | None = None):
        """``(outputs, pooled, prompt hidden)`` of one member over ``seqs``, in input order."""
        graphdef, state = self.members[member]
        enc = self.manifest["encoding"]
        left = enc.get("padding_side", "right") == "left"
        max_len = max(int(enc.get("max_length", 0)), max(len(s.ids) for s in seqs))

        def fn(batch):
            pidx = batch.pop("prompt_index")
            return _forward(graphdef, state, batch, pidx, pooling)

        outs = map_batches(fn, seqs, batch_size=batch_size, buckets=default_buckets(max_len),
                           pad_id=self.tokenizer.pad_token_id, left=left,
                           with_prompt_index=True)
        return [o.astype(np.float32) for o in outs]

    def _prompt_features(self, member: int, seqs, zp, batch_size: int, kind: str):
        """``[N, D]`` prompt features of one member (``kind``: see
        :mod:`rewardjax.export.native`)."""
        if kind not in ("armorm", "prefix_mean"):
            raise ValueError(f"prompt_feature must be armorm or prefix_mean, got {kind!r}")
        if kind == "armorm" and self.is_causal:
            return zp
        prefixes = [prompt_prefix(s) for s in seqs]
        pooling = "mean" if kind == "prefix_mean" else None
        return self._run(member, prefixes, batch_size, pooling)[1]

    def score_encoded(self, seqs, batch_size: int = 16) -> dict[str, np.ndarray]:
        """Scores encoded sequences; returns ``reward [N]`` plus the kind's breakdown."""
        if not seqs:
            raise ValueError("nothing to score")
        c, kind = self.manifest["combine"], self.kind
        if kind in ("scalar", "multi_objective"):
            r, z, zp = self._run(0, seqs, batch_size)
            if kind == "scalar":
                return {"reward": r}
            out = {"objectives_raw": r}
            rp = r @ self.arrays[c["debias"]].T if c.get("debias") else r  # [N, K]
            out["objectives"] = rp
            if c.get("gate"):
                gate = self.modules[c["gate"]]
                x = jnp.asarray(self._prompt_features(
                    0, seqs, zp, batch_size, c.get("prompt_feature", "armorm")))
                reward, contrib = gate(x, jnp.asarray(rp))
                out.update(reward=np.asarray(reward), contributions=np.asarray(contrib),
                           weights=np.asarray(gate.weights(x)))
            elif c.get("weights"):
                out["reward"] = rp @ self.arrays[c["weights"]]
            return out
        if kind == "ensemble":
            from rewardjax.ensembles.predictions import combine

            members = np.stack([self._run(i, seqs, batch_size)[0]
                                for i in range(len(self.members))])  # [M, N]
            reward = combine(jnp.asarray(members), c["method"], lam=c.get("lam", 0.5))
            return {"reward": np.asarray(reward), "members": members}
        return self._score_mixture(seqs, batch_size)

    def _score_mixture(self, seqs, batch_size):
        c = self.manifest["combine"]
        runs = {}

        def run(i):
            if i not in runs:
                runs[i] = self._run(i, seqs, batch_size)
            return runs[i]

        if c.get("router"):
            rm = int(c.get("router_member", 0))
            x = self._prompt_features(rm, seqs, run(rm)[2], batch_size,
                                      c.get("prompt_feature", "prefix_mean"))
            logits = np.asarray(self.modules[c["router"]](jnp.asarray(x)))
            category = np.argmax(logits, axis=-1).astype(np.int32)  # ties: lower index
        else:
            category = np.zeros((len(seqs),), np.int32)
        out, per_cat = {"category": category}, []
        for ci, cat in enumerate(c["categories"]):
            experts = [int(e) for e in cat["experts"]]
            heads = np.stack([run(e)[0] for e in experts], axis=-1)  # [N, K]
            out[f"expert_rewards/{ci}"] = heads
            if cat.get("aggregator"):
                z = np.concatenate([run(e)[1] for e in experts], axis=-1)  # [N, K*D]
                per_cat.append(np.asarray(self.modules[cat["aggregator"]](jnp.asarray(z))))
            elif len(experts) == 1:
                per_cat.append(heads[:, 0])
            else:
                raise ValueError(f"category {ci} has {len(experts)} experts but no aggregator")
        out["category_rewards"] = np.stack(per_cat, axis=-1)  # [N, C]
        out["reward"] = np.take_along_axis(out["category_rewards"], category[:, None], 1)[:, 0]
        return out

    def score(self, prompts, responses, batch_size: int = 16) -> dict[str, np.ndarray]:
        """Scores ``(prompt messages, response)`` pairs, encoded as at training time."""
        seqs = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            e = self.encoder.encode(p, r)
            if e is None:
                raise ValueError(f"response {i} was dropped by the truncation policy")
            seqs.append(e)
        return self.score_encoded(seqs, batch_size)


def load_native(directory: str) -> NativeModel:
    """Reads a native export and rebuilds every member and module with its saved values."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: no {MANIFEST} (not a rewardjax native export)")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path}: format {manifest.get('format')!r} version "
                         f"{manifest.get('version')!r}; expected {FORMAT!r} {VERSION}")
    stored = hf.read_safetensors(os.path.join(directory, TENSORS))
    tensors = {name: stored[key] for name, key in manifest["tensors"].items()}
    bb = manifest["backbone"]
    cls = LlamaConfig if bb["family"] == "llama" else BertConfig
    spec = registry.BackboneSpec(bb["family"], cls(**bb["config"]), None, bb["family"] == "llama")
    members = []
    for i, info in enumerate(manifest["members"]):
        def build(k=info["num_outputs"]):
            return build_reward_model(registry.create(spec), spec.hidden_size,
                                      is_causal=spec.is_causal, pooling=manifest["pooling"],
                                      num_outputs=k,
                                      uses_token_types=manifest["uses_token_types"])

        with nnx.use_eager_sharding(False):
            model = nnx.eval_shape(build)  # abstract: every value comes from the file
        _fill(model, tensors, f"members/{i}/", path)
        members.append(nnx.split(model))
    types = _module_types()
    modules = {}
    for name, info in manifest["modules"].items():
        if info["type"] not in types:
            raise ValueError(f"{path}: unknown module type {info['type']!r}")
        with nnx.use_eager_sharding(False):  # abstract: no initialiser runs
            module = nnx.eval_shape(lambda t=types[info["type"]], h=info["hparams"]: t(**h))
        _fill(module, tensors, f"modules/{name}/", path)
        modules[name] = module
    arrays = {name: tensors[f"arrays/{name}"] for name in manifest["arrays"]}
    tokenizer = hf.load_tokenizer(directory)
    encoder = None
    if tokenizer is not None:
        enc = manifest["encoding"]
        encoder = SequenceEncoder(tokenizer, int(enc.get("max_length", 512)),
                                  enc.get("truncation", "keep_end"), enc.get("mode", "auto"))
    return NativeModel(manifest, members, modules, arrays, tokenizer, encoder, spec.is_causal)
