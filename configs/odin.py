"""ODIN: a BT reward model with a second, length head that soaks up the length signal
(Chen et al. 2024); only the quality head ``r_Q`` is used downstream.

    python -m rewardjax.main --config=configs/odin.py                    # simulator
    python -m rewardjax.main --config=configs/odin.py:runlocal           # seconds-long smoke run
    python -m rewardjax.main --config=configs/odin.py:data=hh,model=minilm --workdir=runs/odin_hh
    python -m rewardjax.main --config=configs/odin.py:data=hh,model=minilm --workdir=runs/odin_hh \
        --config.mode=export                                             # r_Q only, as bt exports
    python benchmarks/odin_vs_bt.py                                      # ODIN vs BT on HH

Takes the arguments of configs/bt.py (runlocal, data=sim|hh, model=tiny|minilm|smollm2,
defaults=v0) and trains with the same budget; ``odin.*`` adds the loss terms:

    loss = BT(r_Q + r_L) + length_weight (|ρ(r_Q, ℓ)| − ρ(r_L, ℓ)) + ortho_weight |w_Q · w_L|

ρ: Pearson correlation over the batch's responses; ℓ: response length (``odin.length_unit``).
"""

import os

import ml_collections

from rewardjax.config import load_config_file


def _bt_config(arg):
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "bt.py"), arg)


def get_config(arg=None):
    c = _bt_config(arg)
    c.recipe = "odin"
    c.odin = ml_collections.ConfigDict()
    c.odin.length_weight = 1.0  # λ_L: the correlation term
    c.odin.ortho_weight = 1.0  # λ_O: |w_Q · w_L|
    c.odin.length_unit = "tokens"  # tokens (the response as encoded) | chars (its text)
    return c
