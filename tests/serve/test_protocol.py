"""Request parsing: policy chat templates taken apart again, and bad input named precisely."""

import pytest

from rewardjax.serve.protocol import (
    BadRequest,
    detect_template,
    extra_logs,
    item_result,
    parse_get_reward,
    parse_items,
    split_policy_text,
)

USER = {"role": "user", "content": "What is 2+2?"}


def chatml(msgs, gen=True):
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    return out + ("<|im_start|>assistant\n" if gen else "")


def llama3(msgs, gen=True):
    out = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
        for m in msgs)
    return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if gen else "")


def zephyr(msgs, gen=True):
    out = "".join(f"<|{m['role']}|>\n{m['content']}</s>\n" for m in msgs)
    return out + ("<|assistant|>\n" if gen else "")


def gemma(msgs, gen=True):
    names = {"assistant": "model"}
    out = "<bos>" + "".join(
        f"<start_of_turn>{names.get(m['role'], m['role'])}\n{m['content']}<end_of_turn>\n"
        for m in msgs)
    return out + ("<start_of_turn>model\n" if gen else "")


def simple(msgs, gen=True):  # rewardjax's SIMPLE_CHAT_TEMPLATE
    out = "".join(f"<|{m['role']}|> {m['content']} <|end|> " for m in msgs)
    return out + ("<|assistant|> " if gen else "")


ENDS = {"chatml": "<|im_end|>\n", "llama3": "<|eot_id|>", "zephyr": "</s>", "simple": " <|end|> ",
        "gemma": "<end_of_turn>\n<eos>"}
RENDER = {"chatml": chatml, "llama3": llama3, "zephyr": zephyr, "simple": simple, "gemma": gemma}


@pytest.mark.parametrize("name", sorted(RENDER))
@pytest.mark.parametrize("template", ["auto", "named"])
def test_every_policy_template_gives_back_messages_and_response(name, template):
    msgs = [{"role": "system", "content": "Be brief."}] * (name != "gemma") + [
        USER, {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]
    prompt = RENDER[name](msgs)
    query = prompt + "It is 6." + ENDS[name]
    t = name if template == "named" else "auto"
    assert detect_template(prompt) == name
    # With prompts (OpenRLHF sends them): the response is the query after the prompt.
    assert split_policy_text(query, prompt, t, "query 0") == (msgs, "It is 6.")
    # Without: the open assistant turn at the end of the query is the response.
    assert split_policy_text(query, None, t, "query 0") == (msgs, "It is 6.")
    # A query whose last assistant turn is closed: that turn is the response.
    closed = RENDER[name](msgs + [{"role": "assistant", "content": "It is 6."}], gen=False)
    assert split_policy_text(closed, None, t, "query 0") == (msgs, "It is 6.")


def test_plain_text_prompts_and_mismatches():
    assert split_policy_text("What?  Paris.", "What?", "none", "q") == (
        [{"role": "user", "content": "What?"}], "Paris.")
    assert split_policy_text("Paris.", "", "none", "q") == ([], "Paris.")
    assert split_policy_text("no markers at all", None, "auto", "q") == ([], "no markers at all")
    # BOS / EOS tokens around plain text are the policy's, not the text's.
    assert split_policy_text("<s>What? Paris.</s>", "<s>What?", "none", "q") == (
        [{"role": "user", "content": "What?"}], "Paris.")
    # Phi-3 closes turns the zephyr way but with <|end|>.
    phi3 = "<|user|>\nWhat?<|end|>\n<|assistant|>\n"
    assert split_policy_text(phi3 + "Paris.<|end|>", phi3, "auto", "q") == (
        [{"role": "user", "content": "What?"}], "Paris.")
    with pytest.raises(BadRequest, match="query 2 does not start with its prompt"):
        split_policy_text("abc", "xyz", "none", "query 2")
    with pytest.raises(BadRequest, match="not a llama3 conversation"):
        split_policy_text(chatml([USER]) + "4", chatml([USER]), "llama3", "query 0")
    with pytest.raises(ValueError, match="unknown serve.policy_template"):
        split_policy_text("a", None, "mistral", "q")


def test_get_reward_body_errors_name_the_field():
    ok = {"query": ["a b", "c d"], "prompts": ["a", "c"], "labels": [1, 2]}
    assert parse_get_reward(ok, "none", 8) == [([{"role": "user", "content": "a"}], "b"),
                                               ([{"role": "user", "content": "c"}], "d")]
    cases = [
        ([], 400, "expected an object"),
        ({}, 400, "missing field 'query'"),
        ({"query": "a"}, 400, "field 'query' is str, expected a list"),
        ({"query": []}, 400, "field 'query' is empty"),
        ({"query": ["a", 3]}, 400, "query 1 is int, expected a string"),
        ({"query": ["a"], "prompts": ["a", "b"]}, 400, "'prompts' has 2 items but 'query' has 1"),
        ({"query": ["a"], "labels": [1, 2]}, 400, "'labels' has 2 items"),
        ({"query": ["a x", "b "], "prompts": ["a", "b"]}, 422, "query 1: empty response"),
        ({"query": ["x"] * 9}, 413, "at most 8 per request"),
        ({"query": ["\ud800"]}, 400, "query 0 holds a lone surrogate"),
    ]
    for body, status, msg in cases:
        with pytest.raises(BadRequest, match=msg) as err:
            parse_get_reward(body, "none", 8)
        assert err.value.status == status, body


def test_items_body_reads_like_score_records():
    items = [{"prompt": "q", "response": "r"}, {"prompt": "", "response": "r2"},
             {"prompt": [USER], "response": "4"},
             {"messages": [USER, {"role": "assistant", "content": "4"}]}]
    want = [([{"role": "user", "content": "q"}], "r"), ([], "r2"), ([USER], "4"), ([USER], "4")]
    assert parse_items({"items": items}, 8) == want
    assert parse_items(items, 8) == want  # a bare list
    cases = [
        ("x", 400, "expected {'items'"),
        ({"items": []}, 400, "no items"),
        ([1], 400, "item 0 is int, expected an object"),
        ([{"prompt": "q"}], 400, "item 0 has neither 'response'"),
        ([{"prompt": "q", "response": 5}], 400, "item 0 response is int"),
        ([{"prompt": "q", "response": "  "}], 422, "item 0: empty response"),
        ([{"messages": [USER]}], 422, "item 0 messages do not end with an assistant turn"),
        ([{"messages": [{"role": "bot", "content": "x"}]}], 400, "unknown role 'bot'"),
        ([{"messages": [{"role": "user"}]}], 400, "message 0 is not an object with 'role'"),
        ([{"response": "r"}] * 9, 413, "at most 8 per request"),
    ]
    for body, status, msg in cases:
        with pytest.raises(BadRequest, match=msg) as err:
            parse_items(body, 8)
        assert err.value.status == status, body


def test_results_and_extra_logs_carry_the_breakdowns():
    import numpy as np

    row = {"reward": np.float32(1.5), "members": np.asarray([1.0, 2.0]), "std": np.float32(0.5),
           "objectives": np.asarray([0.1, 0.2])}
    r = item_result(row, {"members": ["member_0", "member_1"], "objectives": ["help", "safe"]})
    assert r == {"reward": 1.5, "members": [1.0, 2.0], "std": 0.5,
                 "objectives": {"help": pytest.approx(0.1), "safe": pytest.approx(0.2)}}
    logs = extra_logs([r, r])
    assert logs["member_1"] == [2.0, 2.0] and logs["std"] == [0.5, 0.5]
    assert logs["help"] == [pytest.approx(0.1)] * 2 and "reward" not in logs
