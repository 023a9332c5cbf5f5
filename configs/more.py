"""MORE: one sub-batch per preference source, loss weights λ from the min-norm point of the
sources' reward-head gradients (Zeng et al.); ``more.mode=multitask`` is plain mixing (λ = 1/K)
on the same sampler and budget.

    python -m rewardjax.main --config=configs/more.py                   # simulator, 3 annotators
    python -m rewardjax.main --config=configs/more.py:runlocal          # smoke run
    python -m rewardjax.main --config=configs/more.py:data=hh,model=minilm --workdir=runs/more_hh
    python benchmarks/more_compare.py --config=configs/more.py --workdir=runs/more_cmp

Takes the arguments of configs/bt.py (runlocal, data=sim|hh, model=tiny|minilm|smollm2).
data=sim: the simulator's annotator sources (``sim/annotator0..2``, BT temperatures
0.25/0.5/1.0 and their own attribute weights) are the MORE sources. data=hh: two sources,
HH-RLHF harmless and PandaLM (80% content-hashed splits), evaluated on both held-out splits and
on LLMBar (Natural, the four adversarial sets together, and the MT-bench human pairs).
model=minilm trains a linear head on the frozen MiniLM (``train.trainable='^head/'``); add
``finetune`` to train the backbone too.

With two sources and ``more.normalize="l2"`` (MORE as specified) λ is (½, ½) at every step: the
min-norm point of two unit vectors is their midpoint. ``more.normalize="none"`` (the benchmark's
``more-raw`` mode) is the two-source variant whose λ actually moves.
"""

import os

import ml_collections

from rewardjax.config import load_config_file, parse_arg


def _bt_config(arg):
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "bt.py"), arg)


def get_config(arg=None):
    c = _bt_config(arg)
    args = parse_arg(arg)
    c.recipe = "more"
    c.more = ml_collections.ConfigDict()
    c.more.mode = "more"  # more | multitask (λ = 1/K, same sampler and budget)
    c.more.sources = ""  # comma-separated Pair.source names and order ("" = all, sorted)
    # Pairs per source per step; 0 derives it from train.batch_size, the pairs of a step summed
    # over the K sources (batch_size / K; a non-zero value must agree with it).
    c.more.sub_batch = 0
    c.more.alpha = 0.99  # m ← (1 − α) m + α g
    # l2: the solver sees unit directions (MORE). With K = 2 that makes λ = (½, ½) exactly
    # (the min-norm point of two unit vectors is their midpoint): MORE = multitask there.
    # none: raw momentum, so λ also reflects gradient scale (MGDA without a normaliser).
    c.more.normalize = "l2"
    c.more.clamp_low = 0.001  # K = 2: λ_1 clamped to [clamp_low, clamp_high]
    c.more.clamp_high = 0.999
    c.more.fw_max_iters = 1000  # K >= 3: Frank-Wolfe
    c.more.fw_tol = 1e-5  # stop at ‖Δλ‖₁ < fw_tol
    c.more.fw_away_steps = True  # Frank-Wolfe with away steps (plain FW stalls at λ_t = 0)

    # Simulator: 3 sources x 6 pairs a step, ~1.1 epochs of each source's ~1,330 training pairs.
    c.train.batch_size = 18
    c.train.steps = 240
    c.train.checkpoint_every = 120
    c.train.log_every = 20

    if args.get("data") == "hh":
        root = "$REWARDJAX_DATA"
        hh, panda = f"{root}/hh-rlhf/harmless-base-test.jsonl.gz", f"{root}/pandalm/testset-v1.json"
        c.data.train = f"{hh}@train,{panda}@train"
        c.data.eval = (f"{hh}@heldout,{panda}@heldout,{root}/llmbar/Natural.json,"
                       f"{root}/llmbar/Adversarial_*.json,{root}/llmbar/Processed_MT-Bench.json")
        c.train.batch_size = 16  # 2 sources x 8 pairs
        c.model.max_length = 256  # HH median is 125 MiniLM tokens; longer ones keep their end
        # Sized for ~10 CPU-minutes a mode with the frozen MiniLM (forward passes only):
        # 48 steps x 2 x 8 pairs (PandaLM's 674 training pairs ~1.1 epochs), <= 150 pairs per
        # evaluation set.
        c.data.train_limit = 1200
        c.data.eval_limit = 150
        c.train.steps = 48
        c.train.checkpoint_every = 24
        c.train.log_every = 4
    if args.get("model") == "minilm" and "finetune" not in args:
        c.train.trainable = "^head/"  # a linear reward head on frozen MiniLM features
        c.train.dropout = False  # frozen features: no dropout noise in the backbone
        c.train.lr = 1e-2
        c.train.warmup_steps = 4
        c.train.weight_decay = 0.0

    if "runlocal" in args:
        c.train.batch_size = 4 if args.get("data") == "hh" else 6  # 2 pairs per source
        c.train.steps = 6
        c.train.log_every = 2
        c.train.checkpoint_every = 3
        if args.get("data") == "hh":
            c.data.train_limit, c.data.eval_limit = 64, 16
    return c

