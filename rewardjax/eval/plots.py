"""PNG plots a person looks at: gold and proxy score against KL (best-of-n, and RL later).

matplotlib runs on the non-interactive Agg backend (no display on training machines) and is
imported lazily, so the rest of the package works without it; the plot functions then log a
warning and write nothing.

A plot is rendered in memory and written through :class:`etils.epath.Path`, the path type of the
workdir layer (``rewardjax.runtime.paths``, a floor above this one), so a ``gs://`` workdir gets
its PNGs in the bucket. Callers write from process 0.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath

log = logging.getLogger(__name__)

# Reference curves are drawn in black so the eye separates them from the scorers.
_REFERENCE_STYLE = {"random": dict(color="black", linestyle="--", marker=None),
                    "oracle": dict(color="black", linestyle=":", marker=None)}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed (pip install matplotlib): no plots written")
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str) -> str:
    """Lays out, writes (PNG, or the format of ``path``'s suffix) and closes ``fig``; returns
    ``path``."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(os.fspath(path))[1].lstrip(".") or "png")
    plt.close(fig)
    out = epath.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return path


def _style(name: str, index: int) -> dict:
    """Members are thin grey lines (context), everything else a coloured line with markers."""
    if name in _REFERENCE_STYLE:
        return dict(_REFERENCE_STYLE[name], linewidth=1.5)
    if name.startswith("member_"):
        return dict(color="0.6", linewidth=0.9, marker=None, alpha=0.8)
    markers = "osD^v<>ph*"
    return dict(color=f"C{index % 10}", linewidth=1.8, marker=markers[index % len(markers)],
                markersize=4)


def plot_curves(path: str, x: Sequence[float], series: Mapping[str, Mapping[str, Sequence]], *,
                key: str, title: str, xlabel: str, ylabel: str, band_key: str | None = None,
                top_ticks: tuple[Sequence[float], Sequence[str]] | None = None) -> str | None:
    """One line per series (``series[name][key]`` against ``x``) saved as a PNG.

    Args:
      path: output file.
      x: shared x values.
      series: ``{name: {key: [len(x)], band_key: [len(x)]}}``.
      key: which values to draw.
      title, xlabel, ylabel: labels.
      band_key: if given, a shaded ±1 band from ``series[name][band_key]`` (e.g. the standard
        error) for the scorers (not members or references; dropped beyond four scorers).
      top_ticks: ``(positions, labels)`` for a secondary x axis on top (e.g. n for KL_bon).

    Returns:
      ``path``, or None without matplotlib.
    """
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    x = np.asarray(x, np.float64)
    colour_index = 0
    coloured = [n for n in series if not n.startswith("member_") and n not in _REFERENCE_STYLE]
    if len(coloured) > 4:  # beyond a few scorers the shaded bands hide the lines
        band_key = None
    for name, values in series.items():
        if key not in values:
            continue
        style = _style(name, colour_index)
        if not name.startswith("member_") and name not in _REFERENCE_STYLE:
            colour_index += 1
        y = np.asarray(values[key], np.float64)
        label = None if name.startswith("member_") and name != "member_0" else name
        if label == "member_0":
            label = "members"
        ax.plot(x, y, label=label, **style)
        if band_key and band_key in values and not name.startswith("member_") \
                and name not in _REFERENCE_STYLE:
            err = np.asarray(values[band_key], np.float64)
            ax.fill_between(x, y - err, y + err, color=style["color"], alpha=0.12, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if top_ticks is not None:
        top = ax.secondary_xaxis("top")
        top.set_ticks(list(top_ticks[0]))
        top.set_xticklabels(list(top_ticks[1]))
        top.set_xlabel("n")
    ax.legend(fontsize=8, loc="best")
    return _save(plt, fig, path)


def plot_bon(summary: dict, workdir: str) -> list[str]:
    """``bon_gold.png`` (gold score of the pick vs KL_bon, with random and oracle) and
    ``bon_proxy.png`` (proxy gain in units of each scorer's spread vs KL_bon)."""
    kl, ns = summary["kl_bon"], summary["n"]
    ticks = (kl, [str(n) for n in ns])
    where = f"{summary['pools']} prompts, {summary['source']}"
    gold_series = {**summary["scorers"], "random": summary["random"],
                   "oracle": summary["oracle"]}
    paths = [
        plot_curves(os.path.join(workdir, "bon_gold.png"), kl, gold_series, key="gold",
                    band_key="gold_sem", top_ticks=ticks, xlabel="KL_bon = log n - (n-1)/n",
                    ylabel="mean gold score of the pick",
                    title=f"Best-of-n: gold score vs KL ({where})"),
        plot_curves(os.path.join(workdir, "bon_proxy.png"), kl, summary["scorers"],
                    key="proxy_gain_std", top_ticks=ticks, xlabel="KL_bon = log n - (n-1)/n",
                    ylabel="proxy gain over n=1 (in std of the scorer's scores)",
                    title=f"Best-of-n: proxy score vs KL ({where})"),
    ]
    return [p for p in paths if p is not None]


# ----------------------------------------------------------------------------- RL


def pareto_front(drift: Sequence[float], reward: Sequence[float]) -> np.ndarray:
    """Boolean mask of the non-dominated points: no other point has less or equal drift and more
    or equal reward with one of the two strict (NaN points are never on the front)."""
    x = np.asarray(drift, np.float64)
    y = np.asarray(reward, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    front = np.zeros(x.shape, bool)
    for i in np.flatnonzero(ok):
        better = ok & (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        front[i] = not better.any()
    return front


def plot_reward_vs_kl(path: str, runs: Mapping[str, Mapping[str, Sequence]]) -> str | None:
    """Two panels, proxy and gold score against KL(π‖π_init), one line per run (evaluations in
    training order, each labelled with its step, so a line that turns back shows KL falling,
    e.g. after an Elastic Reset).

    Args:
      path: output PNG.
      runs: ``{name: {"kl": [...], "proxy": [...], "gold": [...], "step": [...]}}``.
    """
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.6), dpi=120)
    for ax, key in zip(axes, ("proxy", "gold")):
        for i, (name, run) in enumerate(runs.items()):
            y = np.asarray(run.get(key, []), np.float64)
            if y.size and np.isfinite(y).any():
                style = _style(name, i)
                ax.plot(run["kl"], y, label=name, **style)
                for x_i, y_i, s in zip(run["kl"], y, run.get("step", [])):
                    ax.annotate(str(s), (x_i, y_i), textcoords="offset points", xytext=(3, 3),
                                fontsize=6, color=style["color"])
        ax.set_xlabel("KL(π ‖ π_init) per response (nats)")
        ax.set_ylabel(f"mean {key} score")
        ax.set_title(f"{key} score vs KL (held-out prompts)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    return _save(plt, fig, path)


def plot_pareto(path: str, runs: Mapping[str, Mapping[str, Sequence]],
                key: str = "gold") -> str | None:
    """Reward-vs-drift Pareto fronts: every evaluation as a faint point, each run's
    non-dominated evaluations (:func:`pareto_front`: low KL, high ``key`` score) joined by a
    step line. Falls back to the proxy when a run has no gold score."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    for i, (name, run) in enumerate(runs.items()):
        kl = np.asarray(run["kl"], np.float64)
        y = np.asarray(run.get(key, []), np.float64)
        label = name
        if not (y.size and np.isfinite(y).any()):
            y, label = np.asarray(run["proxy"], np.float64), f"{name} (proxy)"
        colour = f"C{i % 10}"
        ax.scatter(kl, y, s=14, color=colour, alpha=0.35)
        on = pareto_front(kl, y)
        order = np.argsort(kl[on])
        ax.step(kl[on][order], y[on][order], where="post", color=colour, linewidth=1.8,
                marker="o", markersize=5, label=f"{label}: front")
    ax.set_xlabel("KL(π ‖ π_init) per response (nats)  [drift]")
    ax.set_ylabel(f"mean {key} score")
    ax.set_title(f"Reward vs drift: Pareto fronts ({key})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(plt, fig, path)
