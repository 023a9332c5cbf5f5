"""WARM: M reward models trained at once from one initialisation, weight-averaged, and compared
with their prediction ensemble and with each member, under label corruption.

    python -m rewardjax.main --config=configs/warm.py                  # offline simulator
    python -m rewardjax.main --config=configs/warm.py:runlocal         # smoke run
    python -m rewardjax.main --config=configs/warm.py:data=hh,model=minilm --workdir=runs/warm_hh

Takes the same arguments as configs/bt.py (runlocal, data=sim|hh, model=tiny|minilm|smollm2);
``members.*`` sets the ensemble: size, init ("shared" as in WARM, or "seed" for different head
seeds), per-member learning-rate multipliers and dropout rates, the label flip rate. Each member
is a reward model: ``train.steps`` are its updates (all members update together) and
``train.batch_size`` its pairs per step, as in bt.py; a step holds ``members.num`` such batches.
"""

import os

import ml_collections

from rewardjax.config import load_config_file


def _bt_config(arg):
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "bt.py"), arg)


def get_config(arg=None):
    c = _bt_config(arg)
    c.recipe = "warm"
    c.members = ml_collections.ConfigDict()
    c.members.num = 4
    c.members.init = "shared"  # shared | seed
    c.members.lr_scales = "0.75,1.0,1.0,1.25"  # comma-separated, one per member ("" = all 1)
    # "" = the backbone's own rate (0 for the tiny default); per-member rates such as
    # "0.0,0.05,0.1,0.0" add diversity but dropout masks cost ~40% more time on CPU.
    c.members.dropout_rates = ""
    c.members.flip_rate = 0.25  # fraction of training labels swapped (recorded per pair)
    c.members.probe_init = False  # head from a linear probe on frozen features first
    # Baklava: "<workdir>/checkpoints:<step>,<step>,..." of an earlier bt.py run, one per member.
    c.members.baklava = ""
    c.members.sequential = False  # one member at a time when memory is short
    c.members.interpolation_points = 0  # >= 2: mode-connectivity curve member_0 -> member_M-1
    c.members.eval_train_max = 500  # cap on corrupted / clean training pairs evaluated
    c.loss.center_coef = 0.01  # members share a reward scale, so ENS / min / UWO compare
    arg = arg or ""
    if "runlocal" not in arg:
        c.train.steps = 200
    if "data=hh" in arg:
        # Real data, sized for a 2-core CPU (~15 min with MiniLM): HH-RLHF harmless + PandaLM
        # (a fixed 384-pair subset, 3 epochs) for training; held-out HH and PandaLM in
        # distribution, LLMBar (Natural, and the four adversarial sets together) out of it.
        root = "$REWARDJAX_DATA"
        hh, panda = f"{root}/hh-rlhf/harmless-base-test.jsonl.gz", f"{root}/pandalm/testset-v1.json"
        c.data.train = f"{hh}@train,{panda}@train"
        c.data.eval = (f"{hh}@heldout,{panda}@heldout,{root}/llmbar/Natural.json,"
                       f"{root}/llmbar/Adversarial_*.json")
        c.members.eval_train_max = 160
        if "runlocal" in arg:
            c.data.train_limit, c.data.eval_limit, c.members.eval_train_max = 64, 16, 16
        else:
            c.data.train_limit = 384
            c.data.eval_limit = 300
            # HH median is 125 MiniLM tokens; longer pairs keep the prompt's end and the
            # response's start.
            c.model.max_length = 128
            c.train.batch_size = 16
            c.train.steps = 72
            # M vmapped MiniLM members at 16 x 2 x 384 tokens outgrew 24 GB; one at a time fits.
            c.members.sequential = True
            c.train.lr = 3e-5 if "model=minilm" in arg else c.train.lr
    if "runlocal" in arg:
        c.members.num = 2
        c.members.lr_scales = ""
        c.members.dropout_rates = ""
    return c
