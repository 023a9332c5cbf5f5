"""A deterministic preference simulator: the offline default dataset and a known-truth testbed.

Each response is plain text assembled from fragments whose presence sets its attribute levels
(banks in `sim_text`, assembly in `sim_render`): a correct / vague / off-topic / wrong answer
span that depends on the prompt, polite or rude phrases, ordered or scrambled connectives,
unsafe phrases, and neutral padding that only adds length. Levels 0..4 are drawn from a
per-response latent quality (so attributes correlate, as in real data) and stored as ratings
``level / 4``; verbosity is the response's length mapped to [0, 1] over ``response_words``.

* Gold reward: a fixed per-category weighted sum of the attributes (verbosity weighs slightly
  negative, although in "train" data longer responses are better on average: a length trap).
* Annotator sources: weights = gold + a per-source deviation (``source_weight_spread``), labels
  drawn from Bradley-Terry on the source's utility difference at the source's temperature, then
  ``flip_rate`` of the labels flipped (remembered in ``meta["flipped"]``).

Everything is drawn from ``numpy.random.default_rng`` seeded by the config: the same config gives
byte-identical text. Labels in every split are source labels; evaluate against the truth with
``meta["gold_chosen"] > meta["gold_rejected"]``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Sequence

import numpy as np

from rewardjax.data import sim_render as R
from rewardjax.data import sim_text as T
from rewardjax.data.records import Pair, Response

CATEGORIES: tuple[str, ...] = tuple(T.ATTRIBUTES)
_VERBOSITY_CORR = {"train": 0.6, "none": 0.0, "reversed": -0.6}
_TEMPLATE_MODES = ("train", "heldout", "all")
_SALT_PAIRS, _SALT_POOLS, _SALT_WORLD = 11, 23, 37


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """What to simulate.

    Attributes:
      seed: data seed (prompts, responses, labels).
      num_pairs: pairs returned by `simulate`.
      categories: task categories to draw from (uniformly); a subset of `CATEGORIES`.
      num_sources: annotator sources; pairs are spread uniformly over them.
      source_weight_spread: std of each source's per-attribute deviation from the gold weights.
      source_noise: Bradley-Terry temperature. A float gives sources temperatures spread
        geometrically over [0.5x, 2x] of it (diverse annotator reliability); a tuple gives one
        temperature per source.
      flip_rate: fraction of labels flipped after the Bradley-Terry draw.
      verbosity_correlation: correlation of a response's length latent with its gold reward
        without verbosity: "train" (0.6: longer responses tend to be better), "none",
        "reversed" (-0.6: an out-of-distribution split), or a float in [-1, 1].
      missing_rating_rate: fraction of reported attribute ratings replaced by NaN.
      response_words: approximate (min, max) response length in whitespace tokens.
      contrast_rate: fraction of pairs whose second response copies the first's levels except
        for 1-3 attributes (minimal pairs); the rest are two independent responses.
      prompt_templates: "train" (the usual templates), "heldout" (templates never used in
        "train") or "all".
      rating_noise: std of Gaussian noise on reported ratings (gold uses the true levels).
      world_seed: seed of the annotator sources' weight deviations, shared by all splits.
      split: split name, mixed into the seed so splits with one seed do not overlap.
    """

    seed: int = 0
    num_pairs: int = 1000
    categories: tuple[str, ...] = CATEGORIES
    num_sources: int = 3
    source_weight_spread: float = 0.5
    source_noise: float | tuple[float, ...] = 0.5
    flip_rate: float = 0.0
    verbosity_correlation: str | float = "train"
    missing_rating_rate: float = 0.0
    response_words: tuple[int, int] = (40, 110)
    contrast_rate: float = 0.5
    prompt_templates: str = "train"
    rating_noise: float = 0.0
    world_seed: int = 0
    split: str = "train"


def attribute_names(category: str | None = None) -> list[str]:
    """The attribute names of ``category``, or of all categories (first-seen order)."""
    if category is not None:
        _check_category(category)
        return list(T.ATTRIBUTES[category])
    names: list[str] = []
    for attrs in T.ATTRIBUTES.values():
        names += [a for a in attrs if a not in names]
    return names


def gold_weights(category: str) -> dict[str, float]:
    """The shared (gold) attribute weights of ``category``."""
    _check_category(category)
    return dict(T.GOLD_WEIGHTS[category])


def gold_reward(category: str, attrs: dict[str, float]) -> float:
    """Gold reward of a response of ``category`` with attribute values ``attrs`` (in [0, 1])."""
    _check_category(category)
    weights = T.GOLD_WEIGHTS[category]
    missing = [a for a in weights if a not in attrs or math.isnan(attrs[a])]
    if missing:
        raise ValueError(f"gold_reward({category!r}): missing or NaN attributes {missing}")
    return float(sum(w * attrs[a] for a, w in weights.items()))


def source_names(cfg: SimulatorConfig | None = None) -> list[str]:
    """Names of the annotator sources (``Pair.source`` is ``"sim/" + name``)."""
    cfg = cfg or SimulatorConfig()
    return [f"annotator{s}" for s in range(cfg.num_sources)]


def source_weights(cfg: SimulatorConfig | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Per-source attribute weights: ``{source: {category: {attribute: weight}}}``."""
    cfg = cfg or SimulatorConfig()
    weights = _source_weight_arrays(cfg)
    return {name: {c: _named(c, weights[c][s]) for c in CATEGORIES}
            for s, name in enumerate(source_names(cfg))}


def source_temperatures(cfg: SimulatorConfig | None = None) -> dict[str, float]:
    """Per-source Bradley-Terry temperatures."""
    cfg = cfg or SimulatorConfig()
    return dict(zip(source_names(cfg), _temperatures(cfg).tolist(), strict=True))


def simulate(cfg: SimulatorConfig) -> list[Pair]:
    """Simulates ``cfg.num_pairs`` labelled preference pairs (see the module docstring)."""
    _validate(cfg)
    n = cfg.num_pairs
    rng = _rng(cfg, _SALT_PAIRS)
    cats = rng.integers(len(cfg.categories), size=n)
    src = rng.integers(cfg.num_sources, size=n)
    contrast = rng.random(n) < cfg.contrast_rate
    q_a = rng.standard_normal(n)
    # Minimal pairs: a nearby latent quality; the rest: an independent response.
    q_b = np.where(contrast, q_a + 0.8 * rng.standard_normal(n), rng.standard_normal(n))
    cat_names = [cfg.categories[c] for c in cats]
    levels_a = R.sample_levels(cat_names, q_a, rng)
    levels_b = R.sample_levels(cat_names, q_b, rng)
    levels_b = R.contrast_levels(cat_names, levels_a, levels_b, contrast, q_b - q_a, rng)
    # Length noise: partly shared inside a minimal pair, so length moves mostly with quality.
    e_a = rng.standard_normal(n)
    e_b = np.where(contrast, 0.5 * e_a + 0.866 * rng.standard_normal(n), rng.standard_normal(n))
    len_a = _target_len(cfg, _quality_z(cat_names, levels_a), e_a)
    len_b = _target_len(cfg, _quality_z(cat_names, levels_b), e_b)
    label_u, flip_u = rng.random(n), rng.random(n)
    draws = R.Draws(rng)

    values = np.zeros((n, 2, R.MAX_ATTRS))
    prompts, texts = [], []
    lo, hi = cfg.response_words
    for i, cat in enumerate(cat_names):
        prompt = R.make_prompt(cat, cfg.prompt_templates, draws)
        text_a, words_a = R.render(prompt, levels_a[i], int(len_a[i]), draws)
        text_b, words_b = R.render(prompt, levels_b[i], int(len_b[i]), draws)
        k = len(T.ATTRIBUTES[cat])
        values[i, 0, :k - 1] = levels_a[i, :k - 1] / 4.0
        values[i, 1, :k - 1] = levels_b[i, :k - 1] / 4.0
        values[i, :, k - 1] = np.clip((np.array([words_a, words_b]) - lo) / (hi - lo), 0.0, 1.0)
        prompts.append(prompt)
        texts.append((text_a, text_b))

    gold = np.einsum("nk,nrk->nr", _gold_matrix(cfg.categories)[cats], values)
    src_w = np.stack([_source_weight_arrays(cfg)[c] for c in cfg.categories], axis=1)
    util = np.einsum("nk,nrk->nr", src_w[src, cats], values)
    temp = _temperatures(cfg)[src]
    p_a = 1.0 / (1.0 + np.exp(-np.clip((util[:, 0] - util[:, 1]) / temp, -60, 60)))
    flipped = flip_u < cfg.flip_rate
    a_wins = (label_u < p_a) ^ flipped
    ratings = _report(cfg, values, rng)

    names = source_names(cfg)
    pairs = []
    for i, cat in enumerate(cat_names):
        ch, rj = (0, 1) if a_wins[i] else (1, 0)
        prompt = prompts[i]
        pairs.append(Pair(
            prompt=[{"role": "user", "content": prompt.text}],
            chosen=texts[i][ch], rejected=texts[i][rj],
            source=f"sim/{names[src[i]]}", category=cat,
            meta={
                "pair_id": f"{cfg.split}-{cfg.seed}-{i}",
                "gold_chosen": float(gold[i, ch]), "gold_rejected": float(gold[i, rj]),
                "attrs_chosen": _named(cat, ratings[i, ch]),
                "attrs_rejected": _named(cat, ratings[i, rj]),
                "flipped": bool(flipped[i]), "source_index": int(src[i]),
                "p_source": float(p_a[i] if ch == 0 else 1.0 - p_a[i]),
                "topic": prompt.topic, "template": prompt.template,
                "heldout_template": prompt.heldout,
            }))
    return pairs


def sample_responses(cfg: SimulatorConfig, num_prompts: int,
                     n_per_prompt: int) -> list[list[Response]]:
    """Pools of ``n_per_prompt`` independent responses for each of ``num_prompts`` prompts.

    Each `Response.meta` holds ``gold``, ``attrs`` (true values, no missing ratings),
    ``utilities`` (one per source), ``prompt_id`` and ``index``: enough for best-of-n curves
    against gold and for multi-annotator aggregation.
    """
    _validate(cfg)
    if num_prompts < 0 or n_per_prompt < 1:
        raise ValueError(f"need num_prompts >= 0 and n_per_prompt >= 1, got "
                         f"{num_prompts}, {n_per_prompt}")
    rng = _rng(cfg, _SALT_POOLS)
    n = num_prompts * n_per_prompt
    cats = np.repeat(rng.integers(len(cfg.categories), size=num_prompts), n_per_prompt)
    cat_names = [cfg.categories[c] for c in cats]
    q = rng.standard_normal(n)
    levels = R.sample_levels(cat_names, q, rng)
    lens = _target_len(cfg, _quality_z(cat_names, levels), rng.standard_normal(n))
    draws = R.Draws(rng)
    lo, hi = cfg.response_words
    src_w = _source_weight_arrays(cfg)
    pools: list[list[Response]] = []
    for j in range(num_prompts):
        cat = cat_names[j * n_per_prompt]
        k = len(T.ATTRIBUTES[cat])
        prompt = R.make_prompt(cat, cfg.prompt_templates, draws)
        pool = []
        for r in range(n_per_prompt):
            i = j * n_per_prompt + r
            text, words = R.render(prompt, levels[i], int(lens[i]), draws)
            vals = np.append(levels[i, :k - 1] / 4.0, min(max((words - lo) / (hi - lo), 0.0), 1.0))
            pool.append(Response(
                prompt=[{"role": "user", "content": prompt.text}], response=text,
                source="sim", category=cat,
                meta={"prompt_id": f"{cfg.split}-{cfg.seed}-p{j}", "index": r,
                      "gold": float(_gold_matrix((cat,))[0, :k] @ vals),
                      "attrs": _named(cat, vals),
                      "utilities": (src_w[cat][:, :k] @ vals).tolist(),
                      "topic": prompt.topic, "template": prompt.template}))
        pools.append(pool)
    return pools


def standard_splits(seed: int = 0, n_train: int = 4000, n_eval: int = 1000,
                    flip_rate: float = 0.0,
                    base: SimulatorConfig | None = None) -> dict[str, list[Pair]]:
    """The standard train / in-distribution / out-of-distribution splits.

    "train" has ``flip_rate`` flipped labels; "test_id" is the same distribution, unflipped;
    "test_ood" is unflipped with the length correlation reversed and held-out prompt templates.
    All three share the annotator sources (``base.world_seed``) and never share a pair.
    """
    base = base or SimulatorConfig()
    rep = dataclasses.replace
    return {
        "train": simulate(rep(base, seed=seed, num_pairs=n_train, flip_rate=flip_rate,
                              split="train", prompt_templates="train")),
        "test_id": simulate(rep(base, seed=seed, num_pairs=n_eval, flip_rate=0.0,
                                split="test_id", prompt_templates="train")),
        "test_ood": simulate(rep(base, seed=seed, num_pairs=n_eval, flip_rate=0.0,
                                 split="test_ood", prompt_templates="heldout",
                                 verbosity_correlation="reversed")),
    }


# ----------------------------------------------------------------------------- internals


def _named(category: str, row: np.ndarray) -> dict[str, float]:
    """{attribute: value} from a (possibly zero-padded) row in attribute order."""
    names = T.ATTRIBUTES[category]
    return dict(zip(names, row[:len(names)].tolist(), strict=True))


def _check_category(category: str) -> None:
    if category not in T.ATTRIBUTES:
        raise ValueError(f"unknown category {category!r}; known: {list(CATEGORIES)}")


def _validate(cfg: SimulatorConfig) -> None:
    if not cfg.categories:
        raise ValueError("SimulatorConfig.categories is empty")
    for c in cfg.categories:
        _check_category(c)
    lo, hi = cfg.response_words
    problems = {
        "seed must be a non-negative int": not (isinstance(cfg.seed, int) and cfg.seed >= 0),
        "num_pairs must be >= 0": cfg.num_pairs < 0,
        "num_sources must be >= 1": cfg.num_sources < 1,
        "flip_rate must be in [0, 1]": not 0.0 <= cfg.flip_rate <= 1.0,
        "missing_rating_rate must be in [0, 1]": not 0.0 <= cfg.missing_rating_rate <= 1.0,
        "contrast_rate must be in [0, 1]": not 0.0 <= cfg.contrast_rate <= 1.0,
        "response_words must be 0 < min < max": not 0 < lo < hi,
        f"prompt_templates must be one of {_TEMPLATE_MODES}":
            cfg.prompt_templates not in _TEMPLATE_MODES,
    }
    bad = [p for p, failed in problems.items() if failed]
    if bad:
        raise ValueError(f"bad SimulatorConfig: {'; '.join(bad)}")
    _verbosity_corr(cfg)
    _temperatures(cfg)


def _verbosity_corr(cfg: SimulatorConfig) -> float:
    v = cfg.verbosity_correlation
    if isinstance(v, str):
        if v not in _VERBOSITY_CORR:
            raise ValueError(f"verbosity_correlation must be one of {list(_VERBOSITY_CORR)} "
                             f"or a float in [-1, 1], got {v!r}")
        return _VERBOSITY_CORR[v]
    if not -1.0 <= float(v) <= 1.0:
        raise ValueError(f"verbosity_correlation must be in [-1, 1], got {v}")
    return float(v)


def _rng(cfg: SimulatorConfig, salt: int) -> np.random.Generator:
    # crc32 rather than hash(): str hashes are salted per process.
    return np.random.default_rng(np.random.SeedSequence(
        [cfg.seed, zlib.crc32(cfg.split.encode()), salt]))


def _temperatures(cfg: SimulatorConfig) -> np.ndarray:
    if isinstance(cfg.source_noise, (tuple, list)):
        temps = np.asarray(cfg.source_noise, dtype=np.float64)
        if temps.shape != (cfg.num_sources,):
            raise ValueError(f"source_noise has {temps.size} temperatures for "
                             f"{cfg.num_sources} sources")
    elif cfg.num_sources == 1:
        temps = np.array([float(cfg.source_noise)])
    else:
        temps = float(cfg.source_noise) * np.geomspace(0.5, 2.0, cfg.num_sources)
    if np.any(temps <= 0):
        raise ValueError(f"source temperatures must be > 0, got {temps.tolist()}")
    return temps


def _gold_matrix(categories: Sequence[str]) -> np.ndarray:
    """[num_categories, R.MAX_ATTRS] gold weights, zero-padded."""
    out = np.zeros((len(categories), R.MAX_ATTRS))
    for c, cat in enumerate(categories):
        out[c, :len(T.ATTRIBUTES[cat])] = [T.GOLD_WEIGHTS[cat][a] for a in T.ATTRIBUTES[cat]]
    return out


def _source_weight_arrays(cfg: SimulatorConfig) -> dict[str, np.ndarray]:
    """category -> [num_sources, R.MAX_ATTRS]: gold + a per-(source, attribute) deviation."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.world_seed, _SALT_WORLD]))
    names = attribute_names()
    # A source's taste for an attribute is the same in every category (a personality).
    dev = cfg.source_weight_spread * rng.standard_normal((cfg.num_sources, len(names)))
    out = {}
    for cat in CATEGORIES:
        idx = [names.index(a) for a in T.ATTRIBUTES[cat]]
        w = np.zeros((cfg.num_sources, R.MAX_ATTRS))
        w[:, :len(idx)] = _gold_matrix((cat,))[0, :len(idx)] + dev[:, idx]
        out[cat] = w
    return out


@functools.cache
def _quality_stats(category: str) -> tuple[float, float]:
    """Mean and std of a category's gold reward without verbosity (fixed-seed Monte Carlo)."""
    rng = np.random.default_rng(np.random.SeedSequence([0, _SALT_WORLD]))
    levels = R.sample_levels([category] * 20000, rng.standard_normal(20000), rng)
    g = _quality_z([category] * 20000, levels, standardize=False)
    return float(g.mean()), float(g.std())


def _quality_z(cat_names: list[str], levels: np.ndarray, standardize: bool = True) -> np.ndarray:
    """Gold reward without verbosity, standardized per category: what length correlates with."""
    w = _gold_matrix(CATEGORIES)
    for c, cat in enumerate(CATEGORIES):
        w[c, len(T.ATTRIBUTES[cat]) - 1] = 0.0  # drop the verbosity slot
    idx = np.array([CATEGORIES.index(c) for c in cat_names], dtype=np.int64)
    g = np.einsum("nk,nk->n", w[idx], levels / 4.0)
    if standardize and len(cat_names):
        stats = np.array([_quality_stats(c) for c in CATEGORIES])[idx]
        g = (g - stats[:, 0]) / stats[:, 1]
    return g


def _target_len(cfg: SimulatorConfig, quality: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Target word counts; their correlation with ``quality`` is the verbosity correlation."""
    c = _verbosity_corr(cfg)
    z = c * quality + math.sqrt(1.0 - c * c) * noise
    lo, hi = cfg.response_words
    return lo + (hi - lo) / (1.0 + np.exp(-1.702 * z))  # ~uniform over [lo, hi]


def _report(cfg: SimulatorConfig, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reported ratings: true values + optional noise, with NaN for missing ratings."""
    out = values.copy()
    if cfg.rating_noise > 0:
        out = np.clip(out + cfg.rating_noise * rng.standard_normal(out.shape), 0.0, 1.0)
    out[rng.random(out.shape) < cfg.missing_rating_rate] = np.nan
    return out
