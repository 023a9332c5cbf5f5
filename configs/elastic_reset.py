"""RL fine-tuning with Elastic Reset (Noukhovitch et al., 2023): ``configs/ppo.py`` plus resets.

    python -m rewardjax.main --config=configs/elastic_reset.py:runlocal --workdir=runs/er_smoke
    python -m rewardjax.main --config=configs/elastic_reset.py --workdir=runs/er_sim \\
        --config.rl.compare_with=runs/ppo_sim      # offline default, drawn against plain PPO
    python -m rewardjax.main --config=configs/elastic_reset.py:policy=smollm2,rm=runs/hh_minilm,\
gold=pandalm,every=15,decay=0.95 --workdir=runs/er_smol --config.rl.compare_with=runs/ppo_smol

After every optimizer step the EMA of the policy's LoRA parameters moves,
``θ̄ ← d·θ̄ + (1−d)·θ``; at the end of every ``every``-th RL iteration the policy is set to the
EMA and the EMA to the initial policy. The value head, the optimizer state and the KL anchor
(the initial policy) are left alone (DESIGN §3).

Arguments: everything ``configs/ppo.py`` takes, plus
  every=<int>     reset period in RL iterations (default: a quarter of the run's iterations,
                  ``train.steps / (rl.epochs x rl.minibatches)``, so a run sees a few resets).
  decay=<float>   EMA decay per optimizer step (default 0.995, the paper's; short runs want it
                  lower so that the EMA moves at all between resets: after n updates the initial
                  policy still weighs d^n in it, 0.995^30 = 0.86 but 0.95^30 = 0.21).
"""

import os

from rewardjax.config import load_config_file, parse_arg


def _ppo_config(arg):
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ppo.py"), arg)


def get_config(arg=None):
    args = parse_arg(arg)
    rest = ",".join(f"{k}={v}" for k, v in args.items() if k not in ("every", "decay"))
    c = _ppo_config(rest)
    er = c.rl.elastic_reset
    iterations = int(c.train.steps) // (int(c.rl.epochs) * int(c.rl.minibatches))
    er.every = int(args.get("every", max(1, iterations // 4)))
    er.decay = float(args.get("decay", 0.995))
    return c
