"""The ArmoRM feature pass: frozen-backbone features of (prompt, response) sequences.

Two vectors per sequence (stored by :mod:`rewardjax.data.features`' cache):

* ``response``: the feature the objectives are regressed on. Causal LMs: the hidden state at the
  response's last token. Encoders (MiniLM): the model's pooled feature (``model.pooling``;
  ``auto`` is the mean over real tokens) of the whole ``[CLS] prompt [SEP] response [SEP]``.
* ``prompt``: the gate's input, a function of the prompt alone. Causal LMs: the hidden state at
  the prompt's last token *of the same sequence* (causal attention has not seen the response
  there, so one forward pass gives both). Encoders attend both ways, so the prompt's positions
  in the full sequence have seen the response; they get a second pass over the prompt-only
  prefix of the encoding (``[CLS] prompt [SEP]``, the tokens before ``response_start``), pooled
  the same way, deduplicated over repeated prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardjax.data.batching import default_buckets, map_batches
from rewardjax.data.features import FeatureDict, prompt_prefix
from rewardjax.data.tokenize import Encoded
from rewardjax.models.pooling import pool
from rewardjax.sharding import axis_rules


class BackboneFeatures:
    """Frozen-backbone feature extractor over a built :class:`~rewardjax.runtime.setup.Run`.

    Calling it with prompts and responses returns the module docstring's two features. The
    jitted function compiles once per length bucket.
    """

    def __init__(self, run, config):
        self.run = run
        self.config = config
        self.is_causal = bool(run.spec.is_causal)
        self.buckets = tuple(config.data.buckets) or default_buckets(config.model.max_length)
        self.batch_size = int(config.eval.batch_size)
        self.left = config.data.padding_side == "left"
        self.calls = 0  # backbone batches run (tests check that a cache hit runs none)
        graphdef, mesh, rules = run.graphdef, run.mesh, run.rules

        def features(params, frozen, batch, prompt_index):
            with axis_rules(mesh, rules):
                model = nnx.merge(graphdef, params, frozen)
                kwargs = {}
                if model.uses_token_types:
                    kwargs["token_type_ids"] = batch["token_type_ids"]
                hidden = model.backbone(batch["input_ids"], batch["attention_mask"],
                                        dropout_rng=None, dropout_rate=None, **kwargs)  # [B,T,D]
                z = pool(hidden, batch["attention_mask"], model.pooling)  # [B, D]
                zp = jnp.take_along_axis(
                    hidden, jnp.maximum(prompt_index, 0)[:, None, None], axis=1
                )[:, 0].astype(jnp.float32)  # [B, D]
                zp = jnp.where(prompt_index[:, None] >= 0, zp, 0.0)  # no prompt: zeros
                return z, zp

        self._fn = jax.jit(features)

    def encode(self, prompts: Sequence, responses: Sequence[str]) -> list[Encoded]:
        seqs = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            e = self.run.encoder.encode(p, r)
            if e is None:
                raise ValueError(f"response {i} was dropped by data.truncation='drop'; the "
                                 "feature store needs every response (use keep_end)")
            seqs.append(e)
        return seqs

    def _run(self, seqs: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]:
        """``(pooled [N, D], hidden at response_start - 1 [N, D])`` in input order."""
        state = self.run.state

        def fn(batch):
            self.calls += 1
            pidx = batch.pop("prompt_index")
            return self._fn(state.params, state.frozen, batch, pidx)

        z, zp = map_batches(fn, seqs, batch_size=self.batch_size, buckets=self.buckets,
                            pad_id=self.run.tokenizer.pad_token_id, left=self.left,
                            with_prompt_index=True)
        return z.astype(np.float32), zp.astype(np.float32)

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> FeatureDict:
        seqs = self.encode(prompts, responses)
        if not seqs:
            d = int(self.run.spec.hidden_size)
            return {"response": np.zeros((0, d), np.float32),
                    "prompt": np.zeros((0, d), np.float32)}
        z, zp = self._run(seqs)
        if not self.is_causal:
            # Prompt-only pass over the distinct prefixes; rows that share a prompt share it.
            prefixes = [prompt_prefix(s) for s in seqs]
            uniq: dict[bytes, int] = {}
            which = np.asarray([uniq.setdefault(p.ids.tobytes(), len(uniq)) for p in prefixes])
            firsts = {}
            for row, u in enumerate(which):
                firsts.setdefault(int(u), row)
            zu, _ = self._run([prefixes[firsts[u]] for u in range(len(uniq))])
            zp = zu[which]
        return {"response": z, "prompt": zp}
