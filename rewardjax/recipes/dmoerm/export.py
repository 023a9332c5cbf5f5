"""A trained DMoERM as one native mixture model, and the scorer the modes use through it.

At the end of training the recipe writes ``<workdir>/export`` (:func:`save_dmoerm`): the router
(on the frozen base model's mean prompt state, as trained), and per category the capability
experts (LoRA merged into full reward models) with their aggregator; without the router
variant, the single inner model. ``eval`` / ``score`` / ``rewardbench`` read it through
:class:`~rewardjax.runtime.scorer.NativeScorer`; ``export`` copies it (with reward statistics).
"""

from __future__ import annotations

import os

from flax import nnx

from rewardjax.export import (
    MANIFEST,
    NotExportable,
    encoding_of,
    load_native,
    merged_experts,
    save_native,
    set_normalisation,
)
from rewardjax.runtime import NativeScorer, eval_statistics, local_copy, staged_dir
from rewardjax.runtime.workdir import copy_tree, is_local, isfile

EXPORT = "export"


def save_dmoerm(out_dir: str, run_full, run_lora, models: dict, categories, config) -> str:
    """Writes the trained DMoERM (``models`` as built by the recipe) to the local ``out_dir``.

    Member 0 is the frozen base model (its mean prompt state feeds the router); members
    ``1..`` are the merged capability experts, category by category.
    """
    if "router" in models and config.dmoerm.router_features != "backbone":
        raise NotExportable(f"dmoerm.router_features={config.dmoerm.router_features!r} has no "
                            "native form (the native router reads the base model's mean prompt "
                            "state); train with router_features=backbone to export")
    base = nnx.merge(run_full.graphdef, run_full.state.params, run_full.state.frozen)
    members, modules, cats = [base], {}, []
    if "router" in models:
        router, inners = models["router"]
        modules["router"] = router
        order = [(c, inners[c]) for c in categories]
    else:
        order = [("all", models["no_router"])]
    for i, (name, inner) in enumerate(order):
        experts = merged_experts(run_lora.graphdef, inner.experts.params, inner.experts.frozen)
        cats.append({"name": str(name), "capabilities": list(inner.caps),
                     "experts": list(range(len(members), len(members) + len(experts))),
                     "aggregator": f"aggregator_{i}"})
        modules[f"aggregator_{i}"] = inner.aggregator
        members += experts
    combine = {"type": "mixture", "categories": cats}
    if "router" in models:
        combine.update(router="router", router_member=0, prompt_feature="prefix_mean")
    return save_native(out_dir, kind="mixture", spec=run_full.spec, tokenizer=run_full.tokenizer,
                       members=members, combine=combine, modules=modules,
                       encoding=encoding_of(config),
                       meta={"recipe": "dmoerm", "source_model": str(run_full.spec.source),
                             "variant": "router" if "router" in models else "no_router"})


def write_export(workdir: str, run_full, run_lora, models, categories, config) -> str:
    """``<workdir>/export`` from the trained models (what the scorer and export mode read)."""
    out = os.path.join(workdir, EXPORT)
    with staged_dir(out) as local:
        save_dmoerm(local, run_full, run_lora, models, categories, config)
    return out


def _saved(workdir: str) -> str:
    out = os.path.join(workdir, EXPORT)
    if not isfile(os.path.join(out, MANIFEST)):
        raise FileNotFoundError(f"no DMoERM model in {out}: train the dmoerm recipe into "
                                "--workdir first (workdirs trained before the native export was "
                                "written at the end of training must be trained again)")
    return out


def native_scorer(config, workdir: str) -> NativeScorer:
    """The scorer of a DMoERM workdir: routed category, then that category's aggregator over
    its experts (``category``, ``category_rewards`` and ``expert_rewards/<c>`` alongside)."""
    with local_copy(_saved(workdir)) as local:
        return NativeScorer(load_native(local), batch_size=int(config.eval.batch_size))


def export(config, workdir: str, opts: dict) -> dict:
    """The export mode: the native mixture (no HF form exists for routed experts), copied to
    ``export.dir`` when it names another place; ``stats=eval`` adds reward statistics."""
    if opts["format"] == "hf":
        raise NotExportable("a DMoERM model (router, capability experts, aggregators) has no HF "
                            "sequence-classification form; use export.format=native or auto")
    if opts["stats"] not in ("eval", "none"):
        raise ValueError(f"export.stats must be eval or none, got {opts['stats']!r}")
    src = _saved(workdir)
    out = opts["dir"] or src
    if os.path.normpath(str(out)) != os.path.normpath(str(src)):
        copy_tree(src, out)
    norm = None
    if opts["stats"] == "eval":
        with local_copy(out) as local:
            norm = eval_statistics(NativeScorer(load_native(local),
                                                batch_size=int(config.eval.batch_size)), config)
            if norm is not None:
                set_normalisation(local, norm)
                if not is_local(out):
                    copy_tree(local, out)
    return {"format": "native", "dir": out, "normalisation": norm}
