"""Attribute levels and their text for the preference simulator (`rewardjax.data.simulator`).

The fragment banks live in `sim_text`; this module draws levels and picks fragments with a
numpy generator (`Draws` for the many scalar picks) so the output is a pure function of the seed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from rewardjax.data import sim_text as T

_ARTICLE = re.compile(r"\ba (?=[aeio])(?!one\b)")  # "a alien" -> "an alien"
_CONNECTED = (0, 1, 4)  # coherence levels that prefix every body sentence with a connective
MAX_ATTRS = max(len(a) for a in T.ATTRIBUTES.values())
# category -> [MAX_ATTRS, 2] (level offset, correlation with latent quality), zero-padded.
_LEVEL_PARAMS = {c: np.array([T.LEVEL_PARAMS[a] for a in attrs] +
                             [(0.0, 0.0)] * (MAX_ATTRS - len(attrs)))
                 for c, attrs in T.ATTRIBUTES.items()}


class Draws:
    """Uniform numbers from a numpy generator in blocks: per-call numpy overhead would dominate."""

    def __init__(self, rng: np.random.Generator):
        self._rng, self._buf, self._i = rng, [], 0

    def u(self) -> float:
        if self._i == len(self._buf):
            self._buf, self._i = self._rng.random(4096).tolist(), 0
        self._i += 1
        return self._buf[self._i - 1]

    def index(self, n: int) -> int:
        return int(self.u() * n)

    def pick(self, seq: Sequence):
        return seq[int(self.u() * len(seq))]


@dataclasses.dataclass
class Prompt:
    """A simulated prompt and what a correct answer to it may say."""

    category: str
    text: str
    group: int
    topic: str
    template: int
    heldout: bool
    points: tuple[str, ...]  # statements true of the topic (summary: the passage's statements)


def make_prompt(cat: str, templates: str, draws: Draws) -> Prompt:
    """Draws a prompt of category ``cat`` from the "train", "heldout" or "all" templates."""
    content = T.CONTENT[cat]
    g = draws.index(len(content["groups"]))
    desc, topics, preds = content["groups"][g]
    topic = draws.pick(topics)
    n_tpl = len(content["prompts"])
    first, stop = {"train": (0, n_tpl - T.HELDOUT_TEMPLATES), "all": (0, n_tpl),
                   "heldout": (n_tpl - T.HELDOUT_TEMPLATES, n_tpl)}[templates]
    tpl = first + draws.index(stop - first)
    points, passage = tuple(preds), ""
    if cat == "summary":  # the passage is what a faithful summary may state
        order = sorted(range(len(preds)), key=lambda _: draws.u())
        points = tuple(preds[i] for i in order[:T.SUMMARY_PASSAGE_POINTS])
        passage = " ".join(f"the {topic} {p} ." for p in points)
    text = _ARTICLE.sub("an ", content["prompts"][tpl].format(t=topic, d=desc, passage=passage))
    return Prompt(cat, text, g, topic, tpl, tpl >= n_tpl - T.HELDOUT_TEMPLATES, points)


def sample_levels(cat_names: list[str], q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[n, MAX_ATTRS] int levels 0..4 from the latent quality ``q`` (verbosity slot unused)."""
    p = np.stack([_LEVEL_PARAMS[c] for c in cat_names]) if cat_names else \
        np.zeros((0, MAX_ATTRS, 2))
    off, rho = p[..., 0], p[..., 1]
    z = rho * q[:, None] + np.sqrt(1.0 - rho**2) * rng.standard_normal(off.shape)
    return np.clip(np.rint(2.0 + off + 1.3 * z), 0, 4).astype(np.int64)


def contrast_levels(cat_names: list[str], levels_a: np.ndarray, levels_b: np.ndarray,
                    contrast: np.ndarray, dq: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Minimal pairs: b keeps a's levels except for 1-3 resampled (and changed) attributes."""
    n = len(cat_names)
    k_valid = np.array([len(T.ATTRIBUTES[c]) - 1 for c in cat_names], dtype=np.int64)
    keys = rng.random((n, MAX_ATTRS))
    keys[np.arange(MAX_ATTRS)[None, :] >= k_valid[:, None]] = np.inf
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    num = rng.integers(1, 4, size=n)
    resample = rank < num[:, None]
    out = np.where(contrast[:, None] & ~resample, levels_a, levels_b)
    for i in np.flatnonzero(contrast & np.all(out == levels_a, axis=1)):
        j = int(np.argmin(rank[i]))  # guarantee one difference, in the direction of dq
        step = 1 if dq[i] >= 0 else -1
        out[i, j] = levels_a[i, j] + step if 0 <= levels_a[i, j] + step <= 4 else \
            levels_a[i, j] - step
    return out


def _words(sentence: str) -> int:
    return sentence.count(" ") + 1


def render(prompt: Prompt, levels: Sequence[int], target: int, draws: Draws) -> tuple[str, int]:
    """One response with the given attribute levels, padded towards ``target`` words.

    Args:
      prompt: the prompt answered.
      levels: levels 0..4 in the order of ``sim_text.ATTRIBUTES[prompt.category]`` (the
        verbosity entry is ignored: length comes from ``target``).
      target: wanted number of whitespace tokens; fragments alone may exceed it.
      draws: the random stream.

    Returns:
      (text, number of whitespace tokens).
    """
    cat = prompt.category
    names = T.ATTRIBUTES[cat]
    lv = dict(zip(names, list(levels)[:len(names)], strict=True))
    body, opening, closing = [_content(prompt, lv, draws)], [], []
    for attr in T.ATTRIBUTES[cat][1:]:
        level = lv[attr]
        if attr in ("coherence", "verbosity"):
            continue
        if attr == "style" and f"{cat}/style" not in T.BANKS:
            opens, closes = T.STYLE_OPEN_CLOSE.get(level, ((), ()))
            opening += [draws.pick(opens)] if opens else []
            closing += [draws.pick(closes)] if closes else []
            continue
        if attr == "coverage":  # restate passage points the answer span did not already use
            used = 2 if lv["correctness"] == 4 else 1 if lv["correctness"] == 3 else 0
            extra = prompt.points[used:][:{4: 2, 3: 2, 2: 1}.get(level, 0)]
            body += [T.COVERAGE_EXTRA.format(p=p) for p in extra]
        bank = T.BANKS.get(f"{cat}/{attr}", T.BANKS.get(attr, {}))
        if level in bank:
            body.append(draws.pick(bank[level]))
    coherence = lv.get("coherence")
    per_sentence = 2 if coherence in _CONNECTED else 0  # connective words added later
    size = sum(map(_words, opening)) + sum(map(_words, closing)) + sum(map(_words, body))
    size += 2 if coherence == 3 else per_sentence * len(body)
    start = draws.index(len(T.PADDING))  # walk the filler list: no repeats in one response
    for step in range(len(T.PADDING)):
        filler = T.PADDING[(start + step) % len(T.PADDING)]
        extra = _words(filler) + per_sentence
        if size + extra > target:
            break
        body.insert(1 + draws.index(len(body)), filler)
        size += extra
    if coherence is not None:
        body = _cohere(body, coherence, cat, draws)
    size = sum(map(_words, opening)) + sum(map(_words, closing)) + sum(map(_words, body))
    while size <= target - 3:  # short fillers bring the length within a few words of target
        filler = draws.pick(T.SHORT_PADDING)
        body.insert(1 + draws.index(len(body)), filler)
        size += _words(filler)
    return " ".join(opening + body + closing), size


def _content(prompt: Prompt, lv: dict[str, int], draws: Draws) -> str:
    """The prompt-dependent answer span at the correctness (or relevance) level."""
    cat = prompt.category
    level = lv.get("correctness", lv.get("relevance"))
    groups = T.CONTENT[cat]["groups"]
    n_pts = len(prompt.points)
    i = draws.index(n_pts)
    j = (i + 1 + draws.index(n_pts - 1)) % n_pts if n_pts > 1 else i
    if level in (3, 4) and cat == "summary":  # then coverage restates the other points
        i, j = 0, 1
    og = (prompt.group + 1 + draws.index(len(groups) - 1)) % len(groups)  # off-topic group
    wg = (prompt.group + 1 + draws.index(len(groups) - 1)) % len(groups)  # wrong-fact group
    text = draws.pick(T.CONTENT[cat]["frames"][level]).format(
        t=prompt.topic, p=prompt.points[i], p2=prompt.points[j], o=draws.pick(groups[og][1]),
        op=draws.pick(groups[og][2]), wp=draws.pick(groups[wg][2]))
    text = _ARTICLE.sub("an ", text)
    runs = lv.get("runs", 4)
    if runs <= 1:  # code that does not run: a typo, and at level 0 a missing colon as well
        text = text.replace(*T.CODE_TYPO)
        text = text.replace(" ) :", " )", 1) if runs == 0 else text
    return text


def _cohere(body: list[str], level: int, cat: str, draws: Draws) -> list[str]:
    """Connectives in order (4), one "also" (3), none (2), reversed (1), reversed+scrambled (0)."""
    first, middles, last = T.CONNECTIVES.get(cat, T.CONNECTIVES["default"])
    out = list(body)
    n = len(out)
    if level == 4:
        for k in range(n):
            word = first if k == 0 else last if k == n - 1 else middles[(k - 1) % len(middles)]
            out[k] = f"{word} {out[k]}"
    elif level == 3 and n > 1:
        out[1] = f"also , {out[1]}"
    elif level in (0, 1):
        if level == 0:  # scramble one sentence (not the answer span, when there is another)
            k = 1 + draws.index(n - 1) if n > 1 else 0
            words = out[k].split()
            order = sorted(range(len(words)), key=lambda _: draws.u())
            out[k] = " ".join(words[m] for m in order)
        for k in range(n):
            word = last if k == 0 else first if k == n - 1 else "anyway ,"
            out[k] = f"{word} {out[k]}"
        if level == 0:
            out.insert(1 + draws.index(n), T.INCOHERENT_MARK)
    return out
