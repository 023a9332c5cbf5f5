"""The ArmoRM feature store's cache key: what it covers (the backbone pass is tests/runtime)."""

import pytest

from rewardjax.data.features import backbone_fingerprint, feature_key
from tests.runtime.helpers import load_recipe


def test_feature_key_covers_texts_order_and_fingerprint():
    from rewardjax.data.tokenize import build_wordlevel_tokenizer

    config = load_recipe("armorm", "runlocal")
    tok = build_wordlevel_tokenizer(["a b c", "q1 q2"])
    fp = backbone_fingerprint(config, tok)
    p = [[{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]]
    base = feature_key(fp, p, ["a", "b"])
    assert base == feature_key(dict(fp), p, ["a", "b"])
    assert base != feature_key(fp, p, ["b", "a"])
    assert base != feature_key(fp, p[::-1], ["a", "b"])
    assert base != feature_key(dict(fp, overrides="x=1"), p, ["a", "b"])
    # random backbones: the seed makes the weights, so it is part of the key
    other = config.copy_and_resolve_references()
    other.seed = 1
    assert backbone_fingerprint(other, tok) != fp
    # ... and so is the tokenizer, which random backbones fit on the training texts
    assert backbone_fingerprint(config, build_wordlevel_tokenizer(["a b d"])) != fp
    with pytest.raises(ValueError, match="prompts for"):
        feature_key(fp, p, ["a"])
