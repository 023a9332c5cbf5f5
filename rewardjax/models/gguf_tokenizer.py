"""Build a `transformers` tokenizer from the `tokenizer.*` metadata of a GGUF checkpoint.

GGUF stores the vocabulary, its token types, BPE merges (or sentencepiece scores), the
pre-tokenizer family (`tokenizer.ggml.pre`), special token ids and the chat template as metadata.
`gguf_tokenizer` rebuilds the matching `tokenizers` pipeline (byte-level BPE for "gpt2"
vocabularies, sentencepiece BPE with byte fallback for "llama" ones) and wraps it in a
`transformers.PreTrainedTokenizerFast`; `models/gguf.py` calls it from `read_gguf`.
"""

from __future__ import annotations

import logging
from typing import Any

_LOG = logging.getLogger(__name__)

# Token types llama.cpp stores per vocabulary entry.
_UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 2, 3, 4, 6

# Pre-tokenizer split regexes keyed by `tokenizer.ggml.pre` (the patterns published in the
# corresponding HF tokenizer.json files).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {
    **dict.fromkeys(("llama3", "llama-bpe", "llama-v3", "smaug-bpe", "falcon3", "dbrx"),
                    _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}
# StarCoder-family vocabularies (SmolLM's included) split every digit before GPT-2's byte-level
# regex, so numbers are tokenized digit by digit.
_DIGIT_SPLIT = {"smollm", "starcoder", "refact", "codeshell", "command-r"}


def gguf_tokenizer(meta: dict[str, Any], path: str = "<gguf>"):
    """A `transformers.PreTrainedTokenizerFast` from `tokenizer.*` GGUF metadata.

    Args:
      meta: metadata dict (key -> Python value) as read from the file.
      path: file name for error messages.

    Raises:
      ValueError: `tokenizer.ggml.model` is neither "gpt2" (byte-level BPE) nor "llama"
        (sentencepiece BPE).
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    kind = meta.get("tokenizer.ggml.model")
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if len(types) != len(tokens):
        raise ValueError(f"{path}: {len(tokens)} tokens but {len(types)} token types")
    builders = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}
    if kind not in builders:
        raise ValueError(
            f"{path}: unsupported tokenizer model tokenizer.ggml.model={kind!r} "
            "(supported: 'gpt2' byte-level BPE, 'llama' sentencepiece BPE)"
        )
    try:
        tok = Tokenizer(builders[kind](meta, tokens, types))
    except Exception as e:  # tokenizers raises a bare Exception on inconsistent vocab/merges
        raise ValueError(f"{path}: invalid {kind!r} tokenizer vocabulary: {e}") from e
    if kind == "gpt2":
        add_bos = False
        _byte_level_pipeline(tok, meta.get("tokenizer.ggml.pre", "default"))
    else:
        add_bos = True  # llama.cpp's default for sentencepiece vocabularies
        _sentencepiece_pipeline(tok, bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
    # Control tokens (<|im_start|>, <s>) must match whole and be skippable on decode; user-defined
    # ones match whole but stay ordinary text.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types, strict=True) if ty == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types, strict=True) if ty == _USER_DEFINED])

    def token(name):
        i = meta.get(f"tokenizer.ggml.{name}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    _set_post_processor(tok, token("bos") if add_bos else None, token("eos") if add_eos else None)
    kwargs = {"bos_token": token("bos"), "eos_token": token("eos"),
              "unk_token": token("unknown"), "pad_token": token("padding")}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        chat_template=meta.get("tokenizer.chat_template"),
        **{k: v for k, v in kwargs.items() if v is not None},
    )


def _byte_level_bpe(meta: dict, tokens: list[str], types: list[int]):
    """GPT-2 style byte-level BPE over the file's vocabulary and merges."""
    from tokenizers import models
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = set(ByteLevel.alphabet())
    to_bytes = ByteLevel(add_prefix_space=False, use_regex=False)
    vocab = {}
    for i, t in enumerate(tokens):
        # Ordinary tokens are spelled in the byte alphabet; a few converters store raw UTF-8
        # instead, which BPE could never produce, so respell those via their bytes.
        if types[i] not in (_CONTROL, _USER_DEFINED) and not set(t) <= alphabet:
            t = to_bytes.pre_tokenize_str(t)[0][0]
        vocab.setdefault(t, i)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    # Llama-3 vocabularies look whole words up before merging (HF's `ignore_merges`).
    ignore = _SPLITS.get(meta.get("tokenizer.ggml.pre")) is _LLAMA3_SPLIT
    return models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=ignore)


def _byte_level_pipeline(tok, pre: str) -> None:
    """Pre-tokenizer for the `tokenizer.ggml.pre` family plus the byte-level decoder."""
    from tokenizers import Regex, decoders, pre_tokenizers

    if pre in _SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif pre in _DIGIT_SPLIT:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    else:
        if pre not in ("default", "gpt2", "gpt-2"):
            _LOG.warning("GGUF pre-tokenizer %r unknown; using GPT-2's byte-level regex", pre)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()


def _sentencepiece_bpe(meta: dict, tokens: list[str], types: list[int]):
    """Sentencepiece BPE with byte fallback; merges rebuilt from the token scores.

    Sentencepiece files carry no merge list: a piece's score ranks when it forms, so every split
    of a piece into two vocabulary pieces is a merge, ordered by the merged piece's score.
    """
    from tokenizers import models

    vocab = {t: i for i, t in enumerate(tokens)}
    scores = list(meta.get("tokenizer.ggml.scores") or [-float(i) for i in range(len(tokens))])
    merges = []
    for piece, i in vocab.items():
        if types[i] in (_CONTROL, _BYTE, _UNKNOWN):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-scores[i], vocab[left], vocab[right], left, right))
    merges.sort()
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    return models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], fuse_unk=True,
                      byte_fallback=True, unk_token=tokens[unk] if unk is not None else None)


def _sentencepiece_pipeline(tok, add_space_prefix: bool) -> None:
    """Metaspace (`▁` for spaces, prefix on the first word) and its inverse decoder."""
    from tokenizers import decoders, pre_tokenizers

    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if add_space_prefix else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)


def _set_post_processor(tok, bos: str | None, eos: str | None) -> None:
    """BOS/EOS insertion as the file asks (`tokenizer.ggml.add_bos_token` / `add_eos_token`)."""
    from tokenizers import processors

    if bos is None and eos is None:
        return
    pre = [bos] if bos else []
    post = [eos] if eos else []
    single = " ".join([*pre, "$A", *post])
    pair = " ".join([*pre, "$A", *post, *pre, "$B:1", *post])
    specials = [(t, tok.token_to_id(t)) for t in dict.fromkeys(pre + post)]
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=specials)
