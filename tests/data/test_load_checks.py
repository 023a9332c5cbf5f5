"""Loading never loses data silently: skipped directory entries are counted and named, a TRL
``margin`` reaches ``Pair.margin``, and a lone surrogate is an error naming file, record, field."""

import json
import logging

import numpy as np
import pytest

from rewardjax.data import formats, io, sources
from rewardjax.data.batching import collate_pairs
from rewardjax.data.records import DataError, Pair
from rewardjax.data.tokenize import SequenceEncoder, build_wordlevel_tokenizer, encode_pairs

TRL = {"prompt": "Which is better?", "chosen": "the good answer", "rejected": "a bad one"}


def write_jsonl(path, records):
    # json.dumps escapes a lone surrogate as "\ud800", exactly what the probe's files hold.
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------- 1. directories


def _mixed_directory(root):
    d = root / "d"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [TRL])
    (d / "b.csv").write_text("prompt,chosen,rejected\nq,good,bad\n")
    (d / "sub").mkdir()
    write_jsonl(d / "sub" / "c.jsonl", [TRL, TRL])
    (d / ".gitattributes").write_text("*.jsonl filter=lfs\n")
    (d / "LICENSE").write_text("CC-BY\n")
    (d / "README.md").write_text("# data\n")
    write_jsonl(d / "e.ndjson", [TRL])
    return d


def test_directory_load_counts_and_names_every_skipped_entry(tmp_path, caplog):
    d = _mixed_directory(tmp_path)
    with caplog.at_level(logging.INFO, logger="rewardjax.data.io"):
        pairs, stats = formats.load_pairs(str(d))
    assert len(pairs) == 2 and list(stats["files"]) == [str(d / "a.jsonl"), str(d / "e.ndjson")]
    assert stats["skipped_files"] == 5
    assert stats["skipped"] == [
        {"path": str(d / ".gitattributes"), "reason": "hidden file"},
        {"path": str(d / "LICENSE"), "reason": "licence/readme file"},
        {"path": str(d / "README.md"), "reason": "licence/readme file"},
        {"path": str(d / "b.csv"), "reason": "not a .json/.jsonl(.gz) file"},
        {"path": str(d / "sub"), "reason": "sub-folder (not read; name it explicitly)"},
    ]
    lines = [r for r in caplog.records if r.name == "rewardjax.data.io"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    message = lines[0].getMessage()
    for part in (str(d), "read 2 record file(s), skipped 5", "b.csv (not a .json/.jsonl(.gz) file)",
                 "sub/ (sub-folder (not read; name it explicitly))", "LICENSE", ".gitattributes"):
        assert part in message, (part, message)
    # The count reaches the per-set log line and bt's summary.json (sources.summary_stats).
    assert "skipped_files 5" in sources.describe_stats("d", stats)
    assert sources.summary_stats(stats)["skipped_files"] == 5
    # Naming the sub-folder reads it.
    assert len(formats.load_pairs(str(d / "sub"))[0]) == 2


def test_only_licence_files_skipped_is_info_not_warning(tmp_path, caplog):
    write_jsonl(tmp_path / "a.jsonl", [TRL])
    (tmp_path / "LICENSE").write_text("MIT\n")
    with caplog.at_level(logging.INFO, logger="rewardjax.data.io"):
        _, stats = formats.load_pairs(str(tmp_path))
    assert stats["skipped_files"] == 1
    lines = [r for r in caplog.records if r.name == "rewardjax.data.io"]
    assert [r.levelno for r in lines] == [logging.INFO] and "LICENSE" in lines[0].getMessage()


def test_single_file_load_reports_zero_skipped(tmp_path):
    _, stats = formats.load_pairs(write_jsonl(tmp_path / "a.jsonl", [TRL]))
    assert stats["skipped_files"] == 0 and stats["skipped"] == []


def test_directory_without_record_files_names_what_it_holds(tmp_path):
    d = tmp_path / "only_csv"
    d.mkdir()
    (d / "train.csv").write_text("a,b\n")
    (d / "nested").mkdir()
    message = error_of(formats.load_pairs, str(d))
    for part in (str(d), "no .json/.jsonl(.gz) record file",
                 "train.csv (not a .json/.jsonl(.gz) file)",
                 "nested/ (sub-folder (not read; name it explicitly))"):
        assert part in message, (part, message)
    (tmp_path / "empty").mkdir()
    assert "nothing (empty directory)" in error_of(formats.load_pairs, str(tmp_path / "empty"))
    assert io.list_record_files(d) == []


# ----------------------------------------------------------------------------- 2. TRL margin


def test_trl_margin_is_read_into_pair_margin(tmp_path):
    msgs = [{"role": "user", "content": "hi"}]
    records = [dict(TRL, margin=1.5), dict(TRL, chosen="another good one", margin=2), TRL,
               {"chosen": msgs + [{"role": "assistant", "content": "hello"}],
                "rejected": msgs + [{"role": "assistant", "content": "go away"}], "margin": 0.25},
               {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "margin": 3.0,
                "rejected": "\n\nHuman: hi\n\nAssistant: bye"}]
    pairs, stats = formats.load_pairs(write_jsonl(tmp_path / "m.jsonl", records), fmt="trl")
    assert [p.margin for p in pairs] == [1.5, 2.0, 0.0, 0.25, 3.0]
    assert stats["with_margin"] == 4
    # ... and reaches the batch the loss reads when loss.use_data_margin is set.
    tok = build_wordlevel_tokenizer(["the good answer a bad one hi hello go away"])
    data = encode_pairs(pairs, SequenceEncoder(tok, 32))
    batch = collate_pairs(data, np.arange(5), 32, 6, tok.pad_token_id)
    np.testing.assert_array_equal(batch["margin"], [1.5, 2.0, 0.0, 0.25, 3.0, 0.0])
    # An HH-format record (auto-detected) carries its margin too.
    hh, _ = formats.load_pairs(write_jsonl(tmp_path / "hh.jsonl", records[-1:]))
    assert [p.margin for p in hh] == [3.0]


@pytest.mark.parametrize("raw,shown", [('"big"', 'str "big"'), ("true", "bool true"),
                                       ("null", "NoneType null"), ("NaN", "float NaN"),
                                       ("1e999", "float Infinity"), ("[1]", "list [1]")])
def test_bad_margin_is_an_error_naming_file_record_field(tmp_path, raw, shown):
    good = json.dumps(TRL)
    bad = good[:-1] + f', "margin": {raw}}}'
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + bad + "\n", encoding="utf-8")
    message = error_of(formats.load_pairs, str(path))
    for part in (str(path), "record 2", f"field 'margin' is {shown}", "expected a finite number"):
        assert part in message, (part, message)


# ----------------------------------------------------------------------------- 3. surrogates


LLMBAR = {"input": "x", "output_1": "a", "output_2": "b", "label": 1}
RANKING = {"prompt": "p", "responses": ["a", "b"], "scores": [1, 2]}


@pytest.mark.parametrize("good,record,field,position", [
    (TRL, dict(TRL, chosen="ok \ud800 there"), "field 'chosen'", 3),
    (TRL, dict(TRL, prompt="\udfff"), "field 'prompt'", 0),
    (TRL, {"chosen": [{"role": "user", "content": "q\ud83d"},
                      {"role": "assistant", "content": "a"}],
           "rejected": [{"role": "user", "content": "q\ud83d"},
                        {"role": "assistant", "content": "b"}]},
     "chosen message 0 content", 1),
    (LLMBAR, dict(LLMBAR, output_1="a\ud800"), "field 'output_1'", 1),
    (RANKING, dict(RANKING, responses=["a", "b\udc00"]), "responses[1]", 1),
])
def test_lone_surrogate_is_an_error_naming_file_record_field(tmp_path, good, record, field,
                                                             position):
    path = write_jsonl(tmp_path / "s.jsonl", [good, record])
    assert "\\ud" in open(path, encoding="utf-8").read()  # the file holds an escape, not bytes
    message = error_of(formats.load_pairs, path)
    for part in (path, "record 2", f"{field} holds a lone surrogate at character {position}",
                 "fix the file"):
        assert part in message, (part, message)
    message.encode("utf-8")  # the message itself prints on any terminal


def test_surrogate_pair_and_non_ascii_text_load(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", [dict(TRL, chosen="smile \ud83d\ude00 café")])
    assert formats.load_pairs(path)[0][0].chosen == "smile \U0001F600 café"


def test_encoder_names_pair_provenance_for_a_lone_surrogate():
    """Python callers that build pairs themselves get a ValueError naming the pair, not the
    tokenizer's TypeError / UnicodeEncodeError."""
    tok = build_wordlevel_tokenizer(["a b c"])
    pair = Pair([{"role": "user", "content": "q"}], "good", "bad \ud800",
                meta={"file": "mine.jsonl", "record": 7})
    for mode in ("chat", "plain"):
        with pytest.raises(ValueError) as info:
            encode_pairs([pair], SequenceEncoder(tok, 32, mode=mode))
        message = str(info.value)
        for part in ("mine.jsonl, record 7, rejected", "response holds a lone surrogate \\ud800",
                     "character 4"):
            assert part in message, (part, message)
    with pytest.raises(ValueError, match=r"^prompt message 0 content holds a lone surrogate"):
        SequenceEncoder(tok, 32).encode([{"role": "user", "content": "\udc00"}], "x")
