"""A feature store: frozen-backbone features of (prompt, response) sequences, cached on disk.

ArmoRM (DESIGN §3) never trains the backbone, so its features are computed once and reused by
stage 1 (regression), the debiasing and stage 2 (gate), and by every later run with the same
backbone and texts. What the two vectors per sequence (``response`` and ``prompt``) are, and
the backbone pass that computes them, is :class:`rewardjax.runtime.features.BackboneFeatures`;
this module only keys, stores and reads them (no network runs here).

Cache files are ``<cache_dir>/<key>.npz`` (+ a ``.json`` with what the key covers), ``key`` a
sha256 of the backbone fingerprint (:func:`backbone_fingerprint`) and the texts in order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np

from rewardjax.data.records import Pair
from rewardjax.data.tokenize import Encoded

log = logging.getLogger(__name__)

FEATURE_VERSION = "armorm-features-v1"  # bump when what a feature means changes
FeatureDict = dict[str, np.ndarray]  # {"response": [N, D], "prompt": [N, D]} float32


def tokenizer_digest(tokenizer) -> str:
    """sha256 of the vocabulary and special tokens: random backbones fit their tokenizer on the
    training texts, so the path alone does not fix the ids."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([str(t) for t in tokenizer.all_special_tokens]).encode())
    h.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    return h.hexdigest()


def backbone_fingerprint(config, tokenizer) -> dict:
    """Everything besides the texts that changes a feature (the cache key's first half)."""
    fields = {
        "version": FEATURE_VERSION,
        "path": str(config.model.path),
        "overrides": str(config.model.overrides),
        "max_length": int(config.model.max_length),
        "encoding": str(config.data.encoding),
        "truncation": str(config.data.truncation),
        "pooling": str(config.model.pooling),
        "dtype": str(config.model.dtype),
        "tokenizer": tokenizer_digest(tokenizer),
    }
    if str(config.model.path).startswith("random:"):  # weights come from the seed
        fields["seed"] = int(config.seed)
    return fields


def feature_key(fingerprint: dict, prompts: Sequence, responses: Sequence[str]) -> str:
    """sha256 over the fingerprint and every (prompt, response) text, in order."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    h = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode())
    for p, r in zip(prompts, responses):
        h.update(b"\x00p")
        h.update(json.dumps(p, sort_keys=True).encode())
        h.update(b"\x00r")
        h.update(r.encode())
    return h.hexdigest()


class FeatureCache:
    """Feature arrays on disk, keyed by :func:`feature_key`.

    Args:
      directory: where ``<key>.npz`` files live (created on first write).
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.npz")

    def get_or_compute(
        self,
        fingerprint: dict,
        prompts: Sequence,
        responses: Sequence[str],
        compute: Callable[[Sequence, Sequence[str]], FeatureDict],
        name: str = "",
    ) -> FeatureDict:
        """Cached features of ``(prompts[i], responses[i])``; ``compute`` runs only on a miss.

        Args:
          fingerprint: :func:`backbone_fingerprint` of the backbone.
          prompts: chat-message lists, one per response.
          responses: response texts.
          compute: ``(prompts, responses) -> {"response": [N, D], "prompt": [N, D]}``.
          name: for log messages and the sidecar JSON.
        """
        key = feature_key(fingerprint, prompts, responses)
        path = self.path(key)
        if os.path.isfile(path):
            with np.load(path) as f:
                out = {k: f[k] for k in f.files}
            if all(len(v) == len(responses) for v in out.values()):
                self.hits += 1
                log.info("features %s: cache hit %s", name, path)
                return out
            log.warning("features %s: %s has the wrong row count; recomputing", name, path)
        self.misses += 1
        out = {k: np.asarray(v, np.float32) for k, v in compute(prompts, responses).items()}
        if jax.process_index() == 0:
            os.makedirs(self.directory, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npz"  # atomic: a killed run leaves no half file
            np.savez(tmp, **out)
            os.replace(tmp, path)
            with open(os.path.join(self.directory, f"{key}.json"), "w") as f:
                json.dump({"name": name, "rows": len(responses), **fingerprint}, f, indent=1)
        return out


def prompt_prefix(seq: Encoded) -> Encoded:
    """The tokens before the response (``[CLS] prompt [SEP]`` for text-pair encoders)."""
    n = max(int(seq.response_start), 1)  # an empty prompt still keeps its first (special) token
    return Encoded(seq.ids[:n], seq.type_ids[:n], n)


def pair_features(store: FeatureCache, fingerprint: dict, pairs: Sequence[Pair],
                  compute: Callable, name: str = "") -> dict[str, np.ndarray]:
    """``{"prompt": [N, D], "chosen": [N, D], "rejected": [N, D]}`` for preference pairs.

    One cache entry per pair list (chosen responses first, then rejected); the prompt feature
    is read from the chosen rows (identical to the rejected rows' by construction).
    """
    n = len(pairs)
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    f = store.get_or_compute(fingerprint, prompts, responses, compute, name)
    return {"prompt": f["prompt"][:n], "chosen": f["response"][:n],
            "rejected": f["response"][n:]}
