"""Record reading and format conversion: every error names file, record and problem."""

import gzip
import json
import sys
import types

import pytest

from rewardjax.data import formats, io
from rewardjax.data.converters import Ranking
from rewardjax.data.records import DataError, Pair

HH_C = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Why did..."
HH_R = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No."
HH_PROMPT = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Tell me a joke"}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def write_json(path, records):
    path.write_text(json.dumps(records), encoding="utf-8")
    return str(path)


def assert_error(match_parts, fn, *args, **kwargs):
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for part in match_parts:
        assert part in message, f"{part!r} not in {message!r}"
    return info.value


# ----------------------------------------------------------------------------- reading


def test_invalid_utf8_names_line_and_byte(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"chosen": "a", "rejected": "b", "prompt": "p"}).encode() + b"\n"
    path.write_bytes(good + b'{"chosen": "caf\xe9", "rejected": "b"}\n')
    err = assert_error(["bad.jsonl", "record 2", "line 2", "byte offset 15", "0xe9", "UTF-8"],
                       formats.load_pairs, str(path))
    assert err.record == 2


def test_invalid_utf8_in_json_list(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'[\n{"input": "x",\n "output_1": "\xff"}]')
    assert_error(["bad.json", "line 3", "byte offset 14", "0xff"], list, io.read_records(path))


def test_malformed_json_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n\n{"prompt": "p",, }\n')
    assert_error(["broken.jsonl", "record 3", "malformed JSON", "Expecting"],
                 formats.load_pairs, str(path))


def test_malformed_json_document(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"a": 1},\n {"a": 2]')
    assert_error(["broken.json", "line 2", "malformed JSON"], list, io.read_records(path))


def test_record_not_object_missing_and_empty_files(tmp_path):
    assert_error(["list.json", "record 1", "expected an object"], list,
                 io.read_records(write_json(tmp_path / "list.json", [{"a": 1}, [1, 2]])))
    assert_error(["nums.jsonl", "record 2", "expected an object"], list,
                 io.read_records(write_jsonl(tmp_path / "nums.jsonl", [{"a": 1}, 5])))
    assert_error(["nope.jsonl", "file not found"], formats.load_pairs, str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    assert_error(["empty.jsonl", "empty"], formats.load_pairs, str(tmp_path / "empty.jsonl"))
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    assert_error(["blank.jsonl", "empty"], list, io.read_records(tmp_path / "blank.jsonl"))
    assert_error(["lst.json", "empty list"], list,
                 io.read_records(write_json(tmp_path / "lst.json", [])))


def test_json_container_and_index_conventions(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "data": [{"a": 1}, {"a": 2}]}))
    assert list(io.read_records(path)) == [(0, {"a": 1}), (1, {"a": 2})]
    path = tmp_path / "lines.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(io.read_records(path)) == [(1, {"a": 1}), (3, {"a": 2})]  # 1-based lines.
    path = tmp_path / "misnamed.json"  # JSON Lines under a .json name is read as JSON Lines.
    path.write_text('{"a": 1}\n{"a": 2}\n')
    assert list(io.read_records(path)) == [(1, {"a": 1}), (2, {"a": 2})]


@pytest.mark.parametrize("name", ["pairs.jsonl.gz", "pairs.json.gz", "pairs.gz", "pairs.dat"])
def test_gzip_round_trip_and_content_detection(tmp_path, name):
    records = [{"prompt": "p", "chosen": "a", "rejected": "b"},
               {"prompt": "q", "chosen": "c é", "rejected": "d"}]
    path = tmp_path / name
    if name.endswith("pairs.gz"):  # ambiguous name, JSON Lines content.
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    elif name.endswith(".dat"):  # ambiguous, uncompressed JSON list.
        path.write_text(json.dumps(records, indent=2))
    else:
        io.write_records(path, records)
    assert [r for _, r in io.read_records(path)] == records
    pairs, stats = formats.load_pairs(str(path))
    assert [p.chosen for p in pairs] == ["a", "c é"]
    assert stats["read"] == stats["kept"] == 2


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n' * 100)[:30])
    assert_error(["cut.jsonl.gz", "gzip"], list, io.read_records(path))


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("record, problem", [
    ({"prompt": "p", "rejected": "b"}, "missing field 'chosen'"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "field 'chosen' is int"),
    ({"prompt": "p", "chosen": "  \n", "rejected": "b"}, "empty chosen response"),
    ({"prompt": 1.5, "chosen": "a", "rejected": "b"}, "field 'prompt' is float"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}],
      "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]},
     "unknown role 'bot'"),
    ({"chosen": [{"role": "user", "content": "q"}],
      "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]},
     "does not end with an assistant turn"),
    ({"input": "q", "output_1": "a", "output_2": "b", "label": 3}, "bad label label=3"),
    ({"input": "q", "output_1": "a", "output_2": "b", "label": True}, "bad label"),
    ({"instruction": "i", "input": "", "response1": "a", "response2": "b", "annotator1": 1,
      "annotator2": "1", "annotator3": 1}, "bad label annotator2"),
    ({"instruction": "i", "input": "", "response1": 7, "response2": "b", "annotator1": 1,
      "annotator2": 1, "annotator3": 1}, "field 'response1' is int"),
    # The format is detected once per file (from its first record), so a stray record is
    # reported against that format.
    ({"prompt": "p", "answer": "a"}, "missing field 'chosen' (keys present: ['answer', 'prompt'])"),
])
def test_validation_errors_name_file_record_problem(tmp_path, record, problem):
    ok = {"prompt": "p", "chosen": "a", "rejected": "b"}
    if "output_1" in record:
        ok = {"input": "q", "output_1": "a", "output_2": "b", "label": 1}
    elif "instruction" in record:
        ok = dict(record, response1="a", annotator2=1)
    path = write_jsonl(tmp_path / "data.jsonl", [ok, ok, record])
    err = assert_error(["data.jsonl", "record 3", problem], formats.load_pairs, path,
                       fmt="auto" if "answer" in record else formats.detect_format(ok))
    assert err.file == path and err.record == 3


def test_detect_format_lists_keys_and_formats(tmp_path):
    err = assert_error(["'foo'", "known formats", "pandalm", "llmbar"], formats.detect_format,
                       {"foo": 1})
    assert err.record is None
    path = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "p", "answer": "a"}])
    assert_error(["odd.jsonl", "record 1", "unrecognised record format", "['answer', 'prompt']"],
                 formats.load_pairs, path)
    assert formats.detect_format({"chosen": HH_C, "rejected": HH_R}) == "hh"
    assert formats.detect_format({"chosen": "a b", "rejected": "a c"}) == "trl"
    assert formats.detect_format({"prompt": "p", "responses": [], "ranks": []}) == "ranking"
    assert formats.detect_format({"messages": []}) == "response"


def test_unknown_fmt_and_hub_offline_error(tmp_path, monkeypatch):
    assert_error(["unknown format 'xml'"], formats.load_pairs, str(tmp_path), fmt="xml")
    fake = types.ModuleType("datasets")

    def offline(name, split):
        raise ConnectionError(f"Couldn't reach {name} on the Hub")

    fake.load_dataset = offline
    monkeypatch.setitem(sys.modules, "datasets", fake)
    assert_error(["hf:org/set:test", "network", "local"], formats.load_pairs, "hf:org/set:test")
    assert_error(["Anthropic/hh-rlhf", "not a local path"], formats.load_pairs,
                 "Anthropic/hh-rlhf")
    fake.load_dataset = lambda name, split: [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    pairs, _ = formats.load_pairs("hf:org/set")
    assert pairs[0].source == "org/set/train" and pairs[0].meta["file"] == "hf:org/set:train"


# ----------------------------------------------------------------------------- conversions


def convert(records, tmp_path, **kwargs):
    pairs, stats = formats.load_pairs(write_jsonl(tmp_path / "x.jsonl", records), **kwargs)
    return pairs, stats


def test_trl_strings_and_conversational(tmp_path):
    user = {"role": "user", "content": "What is 2+2?"}
    records = [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
        {"chosen": [user, {"role": "assistant", "content": "4"}],
         "rejected": [user, {"role": "assistant", "content": "5"}]},
        {"prompt": [{"role": "system", "content": "Be brief."}, user],
         "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5", "name": "x"}]},
    ]
    pairs, stats = convert(records, tmp_path)
    file = str(tmp_path / "x.jsonl")
    assert pairs[0] == Pair([user], "4", "5", f"{tmp_path.name}/x",
                            meta={"file": file, "record": 1, "format": "trl"})
    assert pairs[1].prompt == [user] and (pairs[1].chosen, pairs[1].rejected) == ("4", "5")
    assert pairs[2].prompt == [{"role": "system", "content": "Be brief."}, user]
    assert stats["files"][file]["format"] == "trl"
    repeated = {"prompt": [user], "chosen": [user, {"role": "assistant", "content": "4"}],
                "rejected": [user, {"role": "assistant", "content": "5"}]}
    assert formats.convert(repeated)[0].prompt == [user]  # prompt not duplicated.
    assert_error(["unknown format 'csv'"], formats.convert, repeated, "csv")
    assert [p.meta["record"] for p in pairs] == [1, 2, 3]
    bad = {"chosen": [user, {"role": "assistant", "content": "4"}],
           "rejected": [{"role": "user", "content": "other"},
                        {"role": "assistant", "content": "5"}]}
    assert_error(["record 1", "different prompts"], convert, [bad], tmp_path)


def test_implicit_prompt(tmp_path):
    records = [{"chosen": "Q: capital of France? A: Paris.", "rejected": "Q: capital of France? "
                "A: Parma is not it."},
               {"chosen": "Sure thing", "rejected": "No"},
               {"chosen": HH_C, "rejected": HH_R}]
    pairs, _ = convert(records, tmp_path)
    assert pairs[0].prompt == [{"role": "user", "content": "Q: capital of France? A:"}]
    assert (pairs[0].chosen, pairs[0].rejected) == ("Paris.", "Parma is not it.")
    assert pairs[1].prompt == [] and pairs[1].chosen == "Sure thing"
    assert pairs[2].prompt == HH_PROMPT and pairs[2].chosen == "Why did..."  # HH transcripts.
    assert_error(["record 1", "implicit prompt", "rejected response is empty"], convert,
                 [{"chosen": "Answer: yes indeed", "rejected": "Answer: yes "}], tmp_path)


def test_hh_parsing_and_prompt_mismatch(tmp_path):
    stray = "Human:  Hi there \n\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:  No. "
    pairs, stats = convert([{"chosen": HH_C, "rejected": stray}], tmp_path)
    assert pairs[0].prompt == HH_PROMPT and (pairs[0].chosen, pairs[0].rejected) == ("Why did...",
                                                                                     "No.")
    other = "\n\nHuman: Something else\n\nAssistant: ok"
    assert_error(["x.jsonl", "record 1", "different prompts"], convert,
                 [{"chosen": HH_C, "rejected": other}], tmp_path)
    # A run-on turn ("  Human:" without a blank line) shifts one side's final turn: repaired from
    # the shared prefix by default and counted, an error when strict.
    runon = HH_R.replace("No.", "No.  Human: why?\n\nAssistant: Because.")
    pairs, stats = convert([{"chosen": HH_C, "rejected": runon}], tmp_path)
    assert pairs[0].prompt == HH_PROMPT and pairs[0].rejected.startswith("No.  Human: why?")
    assert stats["repaired_prompt"] == 1 and pairs[0].meta["repaired_prompt"]
    assert_error(["record 1", "different prompts"], convert,
                 [{"chosen": HH_C, "rejected": runon}], tmp_path, strict=True)
    assert_error(["record 1", "text before its first"], convert,
                 [{"chosen": "hello" + HH_C, "rejected": HH_R}], tmp_path, fmt="hh")


def test_empty_response_policy(tmp_path):
    empty = HH_R.replace("No.", "  ")
    pairs, stats = convert([{"chosen": empty, "rejected": HH_R}, {"chosen": HH_C,
                                                                  "rejected": HH_R}], tmp_path)
    assert len(pairs) == 1 and stats["dropped_empty"] == 1 and stats["kept"] == 1
    assert_error(["record 1", "empty chosen response"], convert,
                 [{"chosen": empty, "rejected": HH_R}], tmp_path, strict=True)


def pandalm(votes, r1="one", r2="two", extra=""):
    return {"idx": 0, "instruction": "Do it.", "input": extra, "response1": r1, "response2": r2,
            **{f"annotator{i + 1}": v for i, v in enumerate(votes)}}


def test_pandalm_majority_ties_and_booleans(tmp_path):
    records = [pandalm([1, 1, 2]), pandalm([2, 0, 2], extra="ctx"), pandalm([0, 0, 1]),
               pandalm([0, 1, 2]), pandalm([1, 1, 1], r1=True), pandalm([2, 2, 0], r2=False)]
    pairs, stats = convert(records, tmp_path)
    assert [(p.chosen, p.rejected) for p in pairs] == [("one", "two"), ("two", "one"),
                                                       ("True", "two"), ("False", "one")]
    assert pairs[0].prompt == [{"role": "user", "content": "Do it."}]
    assert pairs[1].prompt == [{"role": "user", "content": "Do it.\n\nctx"}]
    assert (stats["read"], stats["kept"], stats["dropped_ties"], stats["dropped_no_majority"],
            stats["coerced"]) == (6, 4, 1, 1, 2)
    assert pairs[1].meta["votes"] == [2, 0, 2]


def test_llmbar_labels(tmp_path):
    records = [{"input": "q", "output_1": "a", "output_2": "b", "label": 1},
               {"input": "q", "output_1": "a", "output_2": "b", "label": 2}]
    pairs, _ = formats.load_pairs(write_json(tmp_path / "Natural.json", records))
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "b"), ("b", "a")]
    assert pairs[0].source == f"{tmp_path.name}/Natural" and pairs[0].meta["record"] == 0


def test_ranking_to_pairs_and_directory(tmp_path):
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "b.jsonl",
                [{"prompt": "p", "responses": ["x", "y", "z"], "scores": [1.0, 3.0, 1.0]},
                 {"prompt": "p", "responses": ["u", "v"], "ranks": [2, 1]}])
    write_json(tmp_path / "d" / "a.json", [{"input": "q", "output_1": "a", "output_2": "b",
                                            "label": 1}])
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    pairs, stats = formats.load_pairs(str(tmp_path / "d"))
    assert [p.source for p in pairs] == ["d/a"] + ["d/b"] * 3
    assert [(p.chosen, p.rejected) for p in pairs[1:]] == [("y", "x"), ("y", "z"), ("v", "u")]
    assert list(stats["files"]) == [str(tmp_path / "d" / n) for n in ("a.json", "b.jsonl")]
    assert stats["files"][str(tmp_path / "d" / "b.jsonl")]["kept"] == 3
    ranking = Ranking([], ["a", "b"], [0.0, 0.0])
    assert formats.ranking_to_pairs(ranking) == []
    assert len(formats.load_rankings(str(tmp_path / "d" / "b.jsonl"))) == 2


def test_load_responses(tmp_path):
    records = [{"prompt": "p", "response": "r"},
               {"messages": [{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "hey"}]}]
    out = formats.load_responses(write_jsonl(tmp_path / "r.jsonl", records))
    assert [(o.prompt, o.response) for o in out] == [
        ([{"role": "user", "content": "p"}], "r"), ([{"role": "user", "content": "hi"}], "hey")]
    out = formats.load_responses(write_jsonl(tmp_path / "p.jsonl",
                                             [{"prompt": "p", "chosen": "a", "rejected": "b"}]))
    assert [(o.response, o.meta["label"]) for o in out] == [("a", "chosen"), ("b", "rejected")]
    bad = write_jsonl(tmp_path / "r2.jsonl", [{"prompt": "p", "response": "x"},
                                               {"prompt": "p", "response": 3}])
    assert_error(["r2.jsonl", "record 2", "field 'response' is int"], formats.load_responses, bad)


def test_split_pairs_deterministic_and_order_free():
    pairs = [Pair([{"role": "user", "content": f"q{i % 7}"}], f"a{i}", f"b{i}") for i in range(50)]
    train, held = formats.split_pairs(pairs, 0.2, seed=3)
    assert len(held) == 10 and len(train) == 40
    _, held2 = formats.split_pairs(pairs[::-1], 0.2, seed=3)
    assert sorted(p.chosen for p in held2) == sorted(p.chosen for p in held)
    assert formats.split_pairs(pairs, 0.2, seed=4)[1] != held
    dup = pairs + [Pair(list(held[0].prompt), held[0].chosen, held[0].rejected)]
    assert sum(p.chosen == held[0].chosen for p in formats.split_pairs(dup, 0.2, seed=3)[1]) == 2
    _, by_prompt = formats.split_pairs(pairs, 0.3, seed=3, key="prompt")
    held_prompts = {p.prompt[0]["content"] for p in by_prompt}
    assert all(p.prompt[0]["content"] not in held_prompts
               for p in formats.split_pairs(pairs, 0.3, seed=3, key="prompt")[0])


def test_ranking_identical_responses_follow_the_pair_policy(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl",
                       [{"prompt": "p", "responses": ["x", "y", "x"], "scores": [1, 2, 3]},
                        {"prompt": "p", "responses": ["z", "z"], "ranks": [1, 2]}])
    assert_error(["r.jsonl", "record 1", "responses[0] and responses[2] are identical",
                  "odd_records=drop"], formats.load_pairs, path)
    pairs, stats = formats.load_pairs(path, strict=False)
    assert [(p.chosen, p.rejected) for p in pairs] == [("y", "x"), ("x", "y")]
    assert stats["dropped_identical"] == 2 and stats["dropped_ties"] == 0
    assert formats.ranking_to_pairs(Ranking([], ["a", "a"], [0.0, 1.0])) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 10 ** 400],
                         ids=["nan", "inf", "-inf", "huge-int"])
def test_ranking_non_finite_score_is_refused(tmp_path, bad):
    path = write_jsonl(tmp_path / "r.jsonl",
                       [{"prompt": "p", "responses": ["x", "y"], "ranks": [1, 2]},
                        {"prompt": "p", "responses": ["x", "y"], "scores": [1.0, bad]}])
    for load in (formats.load_pairs, formats.load_rankings, formats.load_responses):
        assert_error(["r.jsonl", "record 2", "field 'scores'", "scores[1]", "finite"],
                     load, path, strict=False)
