import pytest

from rewardjax.data.corruption import corrupt_labels
from rewardjax.data.records import Pair


def _pairs(n):
    return [Pair([{"role": "user", "content": f"q{i}"}], f"good {i}", f"bad {i}",
                 meta={"gold_chosen": 1.0, "gold_rejected": 0.0, "id": i}) for i in range(n)]


def test_flips_exact_fraction_records_it_and_moves_side_metadata():
    pairs = _pairs(40)
    out = corrupt_labels(pairs, 0.25, seed=3)
    flipped = [p for p in out if p.meta["corrupted"]]
    assert len(flipped) == 10 and len(out) == 40
    for p in flipped:
        assert p.chosen.startswith("bad") and p.rejected.startswith("good")
        assert p.meta["gold_chosen"] == 0.0 and p.meta["gold_rejected"] == 1.0
    for p in out:
        if not p.meta["corrupted"]:
            assert p.chosen.startswith("good") and p.meta["gold_chosen"] == 1.0
    assert "corrupted" not in pairs[0].meta  # inputs untouched
    assert [p.meta["corrupted"] for p in corrupt_labels(pairs, 0.25, seed=3)] == \
        [p.meta["corrupted"] for p in out]  # deterministic


def test_rate_bounds():
    assert not any(p.meta["corrupted"] for p in corrupt_labels(_pairs(5), 0.0))
    assert all(p.meta["corrupted"] for p in corrupt_labels(_pairs(5), 1.0))
    with pytest.raises(ValueError, match="rate"):
        corrupt_labels(_pairs(5), 1.5)
