"""Everything a run needs, built from the config: mesh, tokenizer, model, optimizer, state."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rewardjax.data.tokenize import SequenceEncoder, build_wordlevel_tokenizer
from rewardjax.models import registry
from rewardjax.models.reward_model import build_reward_model
from rewardjax.runtime import paths
from rewardjax.runtime.defaults import log_effective, resolve_defaults
from rewardjax.runtime.optim import make_optimizer
from rewardjax.runtime.state import init_state
from rewardjax.runtime.step import make_train_step, place_batch

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str):
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {sorted(DTYPES)}")
    return DTYPES[name]


def parse_overrides(text: str) -> dict:
    """``"remat=full,scan_unroll=6"`` -> backbone config fields (typed like the registry's)."""
    from rewardjax.models.registry import parse_value

    out = {}
    for item in (text or "").split(","):
        if item.strip():
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"model.overrides item {item!r} is not key=value")
            out[key.strip()] = parse_value(value.strip())
    return out


def mesh_and_rules(config) -> tuple[Mesh, tuple]:
    from rewardjax.sharding import make_mesh

    shape = {k: int(v) for k, v in config.mesh.shape.items()}
    rules = tuple(
        (name, None if axes is None else tuple(axes) if isinstance(axes, (list, tuple)) else axes)
        for name, axes in config.mesh.rules
    )
    n = int(config.mesh.get("num_devices", 0))
    return make_mesh(shape, devices=jax.devices()[:n] if n else None), rules


@dataclasses.dataclass
class Run:
    """A built run: what the train / eval / score modes share."""

    config: Any
    mesh: Mesh
    rules: tuple
    spec: Any
    tokenizer: Any
    encoder: SequenceEncoder
    graphdef: Any
    state: Any
    shardings: Any
    tx: Any
    # Jitted functions built for this run, by name (see :meth:`compiled`).
    jitted: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def compiled(self, name: str, build):
        """``build()``'s result, built once per run and name (a jitted function over this
        run's graphdef and mesh), so repeated scoring does not retrace."""
        if name not in self.jitted:
            self.jitted[name] = build()
        return self.jitted[name]

    def train_step(self, *, dropout: bool = True, trace_guard=None, pair_loss=None):
        """The jitted Bradley-Terry step for this run's model, optimizer and mesh
        (``pair_loss``: a recipe's own loss on the pair rewards, see ``step.bt_update``)."""
        return make_train_step(self.graphdef, self.tx, self.config.loss, mesh=self.mesh,
                               rules=self.rules, state_shardings=self.shardings,
                               dropout=dropout, trace_guard=trace_guard, pair_loss=pair_loss)

    def place(self, batch: dict) -> dict:
        """A host batch placed on this run's mesh (rows split over the batch axes)."""
        return place_batch(batch, self.mesh, self.rules)


def get_tokenizer(config, spec, workdir: str, texts_fn):
    """The backbone's tokenizer; for random backbones a word-level one, fitted once on the
    training texts and saved in the workdir so eval / score / resume reuse the same ids.

    Pretrained weights without a tokenizer (an HF directory lacking its tokenizer files) are an
    error: a vocabulary fitted here would feed their embeddings ids they were never trained on.
    ``model.fit_tokenizer=True`` accepts that (with a warning), capped at the checkpoint's
    vocabulary so every id has an embedding row.

    Raises:
      ValueError: pretrained weights without a tokenizer and ``model.fit_tokenizer`` unset; no
        training texts to fit on; a saved tokenizer larger than the checkpoint's vocabulary.
    """
    if spec.tokenizer is not None:
        return spec.tokenizer
    pretrained = spec.load_weights is not None
    what = (getattr(spec, "missing_tokenizer", "")
            or f"the pretrained backbone {spec.source} comes without a tokenizer")
    if pretrained and not config.model.get("fit_tokenizer", False):
        raise ValueError(
            f"model.path={config.model.path!r}: {what}. Its embeddings only make sense with the "
            "tokenizer they were trained with: copy that tokenizer's files into the directory "
            "(tokenizer.save_pretrained(<dir>)), or set --config.model.fit_tokenizer=True to fit "
            "a word-level tokenizer on the training data instead (its vocabulary will not match "
            "the pretrained embeddings)")
    path = os.path.join(workdir, "tokenizer")
    if paths.isdir(path):
        from transformers import PreTrainedTokenizerFast

        with paths.local_copy(path) as local:
            tok = PreTrainedTokenizerFast.from_pretrained(local)
    else:
        texts = texts_fn()
        if not texts:
            raise ValueError(
                f"model.path={config.model.path!r} has no tokenizer and {path} does not exist: "
                "train first (a word-level tokenizer is fitted on the training data)"
            )
        vocab_size = int(config.model.vocab_size)
        if pretrained:  # every id must index a row of the checkpoint's embedding table
            vocab_size = min(vocab_size, int(spec.config.vocab_size))
        tok = build_wordlevel_tokenizer(texts, vocab_size=vocab_size)
        if paths.is_main_process():
            with paths.staged_dir(path) as local:
                tok.save_pretrained(local)
    if pretrained:
        if len(tok) > spec.config.vocab_size:
            raise ValueError(f"{path}: the saved tokenizer has {len(tok)} tokens but the "
                             f"checkpoint {spec.source} only {spec.config.vocab_size} embedding "
                             "rows; delete it to fit a new one")
        log.warning("model.path=%r: %s; model.fit_tokenizer=True: using a word-level tokenizer "
                    "fitted on the training data (%d tokens, %s). Its vocabulary does NOT match "
                    "the pretrained embeddings: each id indexes a row learned for another token",
                    config.model.path, what, len(tok), path)
    return tok


def pair_texts(pairs) -> list[str]:
    out = []
    for p in pairs:
        out.extend(m["content"] for m in p.prompt)
        out.extend((p.chosen, p.rejected))
    return out


def reward_backbone_spec(config, spec, vocab_size: int | None = None):
    """The backbone a reward model is built from: ``model.overrides`` applied (remat policy,
    dropout, ...), a random backbone's vocabulary set to ``vocab_size`` (its tokenizer's), and an
    untied ``lm_head`` dropped, since rewards never read next-token logits."""
    overrides = parse_overrides(config.model.overrides)
    if vocab_size is not None and spec.tokenizer is None and spec.load_weights is None:
        overrides["vocab_size"] = vocab_size
    if getattr(spec.config, "lm_head", False) and not spec.config.tie_embeddings:
        overrides.setdefault("lm_head", False)
    if overrides:
        spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, **overrides))
    return spec


def resolve_config(config) -> None:
    """Fills the settings that follow the backbone (:mod:`rewardjax.runtime.defaults`) and logs
    the effective values; call once before a run reads them (``build_run`` also does)."""
    spec = registry.resolve(config.model.path)
    log_effective(resolve_defaults(config, spec), config.model.path)


def build_run(config, workdir: str, train_pairs=None, *, num_outputs: int = 1) -> Run:
    """Builds mesh, tokenizer, model and a freshly initialised sharded train state
    (``num_outputs``: the head's outputs, e.g. ODIN's quality and length heads)."""
    mesh, rules = mesh_and_rules(config)
    spec = registry.resolve(config.model.path)
    resolve_defaults(config, spec)
    tokenizer = get_tokenizer(config, spec, workdir, lambda: pair_texts(train_pairs or []))
    spec = reward_backbone_spec(config, spec, vocab_size=len(tokenizer))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    positions = getattr(spec.config, "max_position_embeddings", None)
    if not spec.is_causal and positions and config.model.max_length > positions:
        # Learned absolute positions (BERT): a longer sequence would index past the table, which
        # XLA clamps or fills silently instead of failing.
        raise ValueError(f"model.max_length={config.model.max_length} exceeds the backbone's "
                         f"{positions} learned positions ({config.model.path}); lower "
                         f"model.max_length or raise max_position_embeddings")
    encoder = SequenceEncoder(
        tokenizer, config.model.max_length, config.data.truncation, config.data.encoding
    )
    dtype, param_dtype = dtype_of(config.model.dtype), dtype_of(config.model.param_dtype)

    lora = None
    trainable = config.train.trainable
    if config.lora.enabled:
        from rewardjax.lora import LoRAConfig, apply_lora, trainable_regex_for_lora

        lora = LoRAConfig(rank=config.lora.rank, alpha=config.lora.alpha,
                          dropout=config.lora.dropout, targets=config.lora.targets)
        if trainable == ".*":  # default: adapters and the reward head, backbone frozen
            trainable = trainable_regex_for_lora()

    def build():
        backbone = registry.create(spec, dtype=dtype, param_dtype=param_dtype, seed=config.seed)
        model = build_reward_model(
            backbone,
            spec.config.hidden_size,
            is_causal=spec.is_causal,
            pooling=config.model.pooling,
            num_outputs=num_outputs,
            seed=config.seed,
        )
        if lora is not None:
            apply_lora(model, lora, seed=config.seed)
        return model

    weights = None
    if spec.load_weights is not None:
        weights = lambda g, p, f, sh: load_pretrained(spec, p, f, sh)  # noqa: E731
    tx = make_optimizer(config.train)
    graphdef, state, shardings = init_state(
        build, tx, mesh, rules, seed=config.seed, trainable=trainable, weights=weights
    )
    return Run(config, mesh, rules, spec, tokenizer, encoder, graphdef, state, shardings, tx)


def load_pretrained(spec, params, frozen, shardings):
    """Overwrites the backbone leaves of ``params`` / ``frozen`` with the checkpoint's weights,
    placed directly onto their shardings."""
    loaded = spec.load_weights()  # pure nested dict of numpy arrays for the backbone
    flat_loaded = dict(_flatten(loaded))
    pooler = _pretrained_pooler(spec, params, frozen)
    used = set()
    out = []
    for state, sh in zip((params, frozen), shardings):
        pure = state.to_pure_dict()
        sh_pure = sh.to_pure_dict() if hasattr(sh, "to_pure_dict") else None
        for path, value in _flatten(pure):
            if pooler is not None and path[:1] == ("head",) and path[-1] in pooler:
                target = _get(sh_pure, path) if sh_pure is not None else None
                _set(pure, path, jax.device_put(pooler[path[-1]].astype(value.dtype), target))
                continue  # BERT's pretrained pooler starts the PoolerHead
            if path[0] != "backbone" or path[-1] in ("lora_a", "lora_b"):
                continue  # the head and LoRA adapters keep their fresh initialisation
            key = path[1:]
            if key not in flat_loaded:
                raise ValueError(
                    f"{spec.source}: no weight for parameter {'/'.join(map(str, key))}"
                )
            arr = np.asarray(flat_loaded[key])
            if arr.shape != tuple(value.shape):
                raise ValueError(
                    f"{spec.source}: {'/'.join(map(str, key))} has shape {arr.shape}, "
                    f"model expects {tuple(value.shape)}"
                )
            if not np.isfinite(arr).all():  # else: NonFiniteLoss at step 1, "lower the LR"
                raise ValueError(
                    f"{spec.source}: checkpoint weights contain NaN/inf in "
                    f"{'/'.join(map(str, key))} ({int((~np.isfinite(arr)).sum())} of "
                    f"{arr.size} values): corrupt or badly converted checkpoint"
                )
            target = _get(sh_pure, path) if sh_pure is not None else None
            _set(pure, path, jax.device_put(arr.astype(value.dtype), target))
            used.add(key)
        nnx.replace_by_pure_dict(state, pure)
        out.append(state)
    missing = {k for k in set(flat_loaded) - used if k[0] != "lm_head"}  # dropped on purpose
    if missing:
        log.warning("%d checkpoint tensors unused, e.g. %s", len(missing), sorted(missing)[:3])
    return out[0], out[1]


def _pretrained_pooler(spec, params, frozen) -> dict | None:
    """The checkpoint's pooler for a ``pooling="pooler"`` head, or None when the model has no
    such head; an error when it has one but the checkpoint carries no pooler."""
    names = {p[-1] for st in (params, frozen) for p, _ in _flatten(st.to_pure_dict())
             if p[:1] == ("head",)}
    if "dense_kernel" not in names:
        return None
    from rewardjax.models import hf

    source = os.fspath(spec.source)
    pooler = hf.bert_pooler_from_hf(hf.load_tensors(source)) if os.path.isdir(source) else None
    if pooler is None:
        raise ValueError(f"model.pooling=pooler needs a BERT checkpoint with pretrained pooler "
                         f"weights (pooler.dense.*); {source} has none: use model.pooling=cls")
    return pooler


def _flatten(d, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _get(d, path):
    for k in path:
        d = d[k]
    return d


def _set(d, path, value):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
