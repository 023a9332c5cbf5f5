"""The offline copies of the public evaluation sets load with the expected counts.

Data folder: ``$REWARDJAX_DATA`` or ``<repo>/../shared/data``; skipped when absent.
"""

import collections
import os

import pytest

from rewardjax.data import formats, io
from rewardjax.data.converters import ROLES
from rewardjax.data.records import DataError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("REWARDJAX_DATA") or os.path.join(os.path.dirname(REPO), "shared", "data")

LLMBAR = {"Natural": 100, "Adversarial_Neighbor": 134, "Adversarial_GPTInst": 92,
          "Adversarial_GPTOut": 47, "Adversarial_Manual": 46, "Processed_MT-Bench": 200,
          "Processed_FairEval": 66, "Processed_LLMEval2": 200}


def data_path(*parts):
    path = os.path.join(DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not found at {path} (set REWARDJAX_DATA)")
    return path


def check_pairs(pairs):
    for p in pairs:
        assert p.chosen.strip() and p.rejected.strip()
        assert all(m["role"] in ROLES and isinstance(m["content"], str) for m in p.prompt)
        assert "file" in p.meta and "record" in p.meta


def test_hh_harmless_base_test():
    pairs, stats = formats.load_pairs(data_path("hh-rlhf", "harmless-base-test.jsonl.gz"))
    # 2,312 records: 4 have an empty chosen final turn (dropped, counted); 5 have a run-on turn
    # ("...  Human: ..." with no blank line) so the two prompts differ: repaired from the shared
    # prefix and counted. Nothing vanishes: read == kept + dropped.
    assert stats["read"] == 2312
    assert stats["dropped_empty"] == 4 and stats["repaired_prompt"] == 5
    assert len(pairs) == stats["kept"] == 2308
    assert all(p.source == "hh-rlhf/harmless-base-test" for p in pairs)
    assert all(p.prompt and p.prompt[0]["role"] == "user" for p in pairs)
    check_pairs(pairs)
    # Strict mode turns every odd record into an error naming it; list them all.
    failures = {}
    for index, rec in io.read_records(data_path("hh-rlhf", "harmless-base-test.jsonl.gz")):
        try:
            formats.convert(rec, "hh", strict=True, index=index)
        except DataError as err:
            failures[index] = err.problem.split(" (")[0]
    empty = "empty chosen response"
    differ = "chosen and rejected transcripts have different prompts"
    assert failures == {87: empty, 517: empty, 926: empty, 1104: empty, 1255: differ,
                        1689: differ, 1951: differ, 1953: differ, 2037: differ}


def test_pandalm_testset():
    pairs, stats = formats.load_pairs(data_path("pandalm", "testset-v1.json"))
    assert stats["read"] == 999
    assert stats["dropped_ties"] == 105 and stats["dropped_no_majority"] == 0
    assert stats["coerced"] == 6  # the JSON `true` answers, restored to the text "True".
    assert stats["dropped_empty"] == 52  # a model produced no output; ties counted first.
    assert len(pairs) == stats["kept"] == 999 - 105 - 52
    assert sum(p.chosen == "True" for p in pairs) == 6
    assert pairs[0].source == "pandalm/testset-v1"
    check_pairs(pairs)


def test_llmbar_all_files():
    pairs, stats = formats.load_pairs(data_path("llmbar"))
    read = {v["source"].split("/")[1]: v["read"] for v in stats["files"].values()}
    assert read == LLMBAR
    kept = collections.Counter(p.source.split("/")[1] for p in pairs)
    # Processed_LLMEval2 record 169: output_2 is whitespace only (dropped, counted);
    # record 57 has two identical outputs (dropped, counted as identical).
    assert kept == dict(LLMBAR, Processed_LLMEval2=198)
    assert stats["dropped_empty"] == 1 and stats["dropped_identical"] == 1
    assert {v["format"] for v in stats["files"].values()} == {"llmbar"}
    # The folder's LICENSE is not read, but counted and named like any skipped entry.
    assert stats["skipped_files"] == 1
    assert stats["skipped"] == [{"path": os.path.join(data_path("llmbar"), "LICENSE"),
                                 "reason": "licence/readme file"}]
    check_pairs(pairs)


def test_split_is_stable_on_real_data():
    pairs, _ = formats.load_pairs(data_path("llmbar", "Natural.json"))
    train, held = formats.split_pairs(pairs, 0.2, seed=0)
    assert (len(train), len(held)) == (80, 20)
    _, held_rev = formats.split_pairs(pairs[::-1], 0.2, seed=0)
    assert {p.meta["record"] for p in held} == {p.meta["record"] for p in held_rev}
