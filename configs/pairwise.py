"""Pairwise preference model: ``[prompt, A, B]`` -> P(A better), trained on both orders of every
pair and symmetrised at inference (position swap).

    python -m rewardjax.main --config=configs/pairwise.py                    # offline simulator
    python -m rewardjax.main --config=configs/pairwise.py:runlocal           # smoke run
    python -m rewardjax.main --config=configs/pairwise.py:data=hh,model=minilm --workdir=runs/pw
    python -m rewardjax.main --config=configs/pairwise.py:data=hh,model=minilm \\
        --config.mode=rewardbench --workdir=runs/pw                         # pairwise protocol

Takes the same arguments as configs/bt.py (runlocal, data=sim|hh, model=tiny|minilm|smollm2).
``train.batch_size`` counts pairs, as for bt: a step holds each of them in both orders
(2 x batch_size sequences of prompt + two responses). Pairs are length-bucketed, never packed.
A sequence holds the prompt and two responses, so the simulator's length is twice bt's; MiniLM
keeps its 512 positions (``data.truncation=keep_end`` shares them fairly: see
rewardjax/data/pairwise.py).
"""

import os

from rewardjax.config import load_config_file


def get_config(arg=None):
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "bt.py"), arg)
    c.recipe = "pairwise"
    c.data.packing = False
    # The verdict must depend on which response is shown first. Mean pooling averages the two
    # responses' states almost symmetrically: MiniLM on HH then stayed at chance (loss ln 2,
    # grad norm ~0.07 after 50 steps). An encoder reads [CLS], which attends to both with their
    # positions and segment markers (a cross-encoder's usual head); causal models keep "last".
    c.defaults.scratch.pooling_encoder = "cls"
    c.defaults.finetune.pooling_encoder = "cls"
    args = arg or ""
    if "runlocal" in args:
        c.defaults.scratch.max_length = 128
    else:
        c.defaults.scratch.max_length = 384 if "data=hh" not in args else 512
    return c
