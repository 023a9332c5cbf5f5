"""Request parsing and response shaping for the reward server (no HTTP here).

Two protocols:

* OpenRLHF's ``POST /get_reward``: ``{"query": [full texts], "prompts": [...], "labels": [...]}``.
  Each query is what the *policy* saw and wrote, rendered by the policy's chat template. The
  reward model was trained on its own rendering, so the texts are taken apart again
  (:func:`split_policy_text`) into chat messages and a response and re-encoded exactly as at
  training time; a policy template that differs from the reward model's is the common case, not
  an edge case.
* rewardjax's ``POST /v1/rewards``: ``{"items": [{"prompt", "response"} | {"messages"}]}`` (or a
  bare list), read like the score mode's ``response`` records.

Every problem is a :class:`BadRequest` naming the field and item, turned into a 4xx by the app.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

ROLES = ("system", "user", "assistant")
POLICY_TEMPLATES = ("none", "auto", "chatml", "llama3", "zephyr", "gemma", "simple")


class BadRequest(ValueError):
    """A request the server refuses: ``status`` (400, 413, 422) and a message naming the problem."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------- policy chat templates
# Each: (regex of one complete turn with groups role and content, the generation prompt that
# opens the assistant's turn, end-of-turn markers a generated response may carry). The policy's
# special tokens are only stripped, never interpreted: the reward model sees clean messages and
# renders them its own way.
_TEMPLATES = {
    "chatml": (re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\s*", re.S),
               "<|im_start|>assistant\n", ("<|im_end|>", "<|endoftext|>")),
    "llama3": (re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
                          re.S),
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
               ("<|eot_id|>", "<|end_of_text|>")),
    # Zephyr; Phi-3 closes turns with <|end|> instead of </s>.
    "zephyr": (re.compile(r"<\|(system|user|assistant)\|>\n(.*?)(?:</s>|<\|end\|>)\s*", re.S),
               "<|assistant|>\n", ("</s>", "<|end|>", "<|endoftext|>")),
    # Gemma: the assistant is "model"; a system prompt is part of the first user turn.
    "gemma": (re.compile(r"<start_of_turn>(user|model)\n(.*?)<end_of_turn>\s*", re.S),
              "<start_of_turn>model\n", ("<end_of_turn>", "<eos>")),
    "simple": (re.compile(r"<\|(system|user|assistant)\|> (.*?) <\|end\|> ", re.S),
               "<|assistant|> ", ("<|end|>",)),
}
_LEADING = ("<|begin_of_text|>", "<s>", "<bos>", "[BOS]")  # BOS tokens a text may start with
_ROLE_NAMES = {"model": "assistant"}  # a template's role name -> the chat role
_MARKERS = {"chatml": "<|im_start|>", "llama3": "<|start_header_id|>", "simple": " <|end|> ",
            "zephyr": "<|user|>\n", "gemma": "<start_of_turn>"}
# End-of-sequence markers a plain-text ("none") response may still carry from the policy.
_PLAIN_ENDS = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<eos>")


def detect_template(text: str) -> str:
    """The policy template whose markers ``text`` holds (``none`` when it holds none)."""
    for name, marker in _MARKERS.items():
        if marker in text:
            return name
    return "none"


def _strip_leading(text: str) -> str:
    for tok in _LEADING:
        if text.startswith(tok):
            return text[len(tok):]
    return text


def _strip_end(response: str, ends: Sequence[str]) -> str:
    changed = True
    while changed:  # e.g. "...<|im_end|>\n<|endoftext|>"
        changed = False
        stripped = response.rstrip()
        for end in ends:
            if stripped.endswith(end):
                response, changed = stripped[: -len(end)], True
    return response


def _turns(text: str, template: str, what: str) -> tuple[list[dict], str]:
    """Complete turns at the start of ``text`` as messages, and the text after them."""
    turn, _, _ = _TEMPLATES[template]
    msgs, pos = [], 0
    text = _strip_leading(text)
    while True:
        m = turn.match(text, pos)
        if m is None:
            break
        role = _ROLE_NAMES.get(m.group(1), m.group(1))
        if role not in ROLES:
            raise BadRequest(f"{what}: unknown role {role!r} in the {template} template "
                             f"(known roles: {', '.join(ROLES)})", 422)
        msgs.append({"role": role, "content": m.group(2).strip()})
        pos = m.end()
    return msgs, text[pos:]


def split_policy_text(query: str, prompt: str | None, template: str,
                      what: str) -> tuple[list[dict], str]:
    """``(prompt messages, response)`` of one OpenRLHF query.

    Args:
      query: the full text the policy produced (its rendered prompt followed by its response).
      prompt: the rendered prompt, when the client sent ``prompts``; the response is the query
        after it. Without it the response is the query's last (unfinished) assistant turn.
      template: the policy's chat template (:data:`POLICY_TEMPLATES`; ``auto`` detects it).
      what: names the item in errors (``"query 3"``).
    """
    if template not in POLICY_TEMPLATES:
        raise ValueError(f"unknown serve.policy_template {template!r}; choose from "
                         f"{', '.join(POLICY_TEMPLATES)}")
    if template == "auto":
        template = detect_template(prompt if prompt is not None else query)
    if prompt is not None:
        if not query.startswith(prompt):
            raise BadRequest(f"{what} does not start with its prompt (prompts[i] must be the "
                             "start of query[i], as OpenRLHF sends them)", 422)
        response = query[len(prompt):]
        if template == "none":
            prompt = _strip_leading(prompt).strip()
            msgs = [{"role": "user", "content": prompt}] if prompt else []
            return msgs, _strip_end(response, _PLAIN_ENDS).strip()
        msgs, rest = _turns(prompt, template, what)
        gen = _TEMPLATES[template][1].strip()
        if rest.strip() not in ("", gen):
            raise BadRequest(f"{what}: the prompt is not a {template} conversation ending with "
                             "the assistant's generation prompt (set serve.policy_template to "
                             "the policy's template)", 422)
        return msgs, _strip_end(response, _TEMPLATES[template][2]).strip()
    if template == "none":
        return [], _strip_end(_strip_leading(query), _PLAIN_ENDS).strip()
    msgs, rest = _turns(query, template, what)
    gen, rest = _TEMPLATES[template][1].strip(), rest.lstrip()
    if rest.startswith(gen):  # the generated turn is still open: the response follows it
        return msgs, _strip_end(rest[len(gen):], _TEMPLATES[template][2]).strip()
    closed = not _strip_end(rest, _TEMPLATES[template][2]).strip()  # e.g. a trailing <eos>
    if not closed or not msgs or msgs[-1]["role"] != "assistant":
        raise BadRequest(f"{what}: no assistant response found in the {template} rendering; "
                         "send 'prompts' too, or set serve.policy_template", 422)
    return msgs[:-1], msgs[-1]["content"]


# --------------------------------------------------------------------------- validation
def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} is {type(value).__name__}, expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRequest(f"{what} holds a lone surrogate at character {err.start}, which is not "
                         "valid Unicode") from None
    return value


def _list(body: dict, key: str, limit: int, *, required: bool = True) -> list | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"missing field {key!r}")
        return None
    if not isinstance(value, list):
        raise BadRequest(f"field {key!r} is {type(value).__name__}, expected a list")
    if len(value) > limit:
        raise BadRequest(f"field {key!r} has {len(value)} items; at most {limit} per request "
                         "(serve.max_items_per_request)", 413)
    return value


def parse_get_reward(body, template: str, limit: int) -> list[tuple[list[dict], str]]:
    """OpenRLHF's body -> ``[(prompt messages, response)]``, one per query."""
    if not isinstance(body, dict):
        raise BadRequest(f"body is a JSON {type(body).__name__}, expected an object with 'query'")
    queries = _list(body, "query", limit)
    prompts = _list(body, "prompts", limit, required=False)
    labels = _list(body, "labels", limit, required=False)
    if not queries:
        raise BadRequest("field 'query' is empty")
    for name, other in (("prompts", prompts), ("labels", labels)):
        if other is not None and len(other) != len(queries):
            raise BadRequest(f"field {name!r} has {len(other)} items but 'query' has "
                             f"{len(queries)}; they must match")
    out = []
    for i, q in enumerate(queries):
        q = _text(q, f"query {i}")
        p = None if prompts is None else _text(prompts[i], f"prompts {i}")
        msgs, response = split_policy_text(q, p, template, f"query {i}")
        if not response.strip():
            raise BadRequest(f"query {i}: empty response", 422)
        out.append((msgs, response))
    return out


def _messages(value, what: str) -> list[dict]:
    if not isinstance(value, list):
        raise BadRequest(f"{what} is {type(value).__name__}, expected a list of messages")
    out = []
    for j, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise BadRequest(f"{what} message {j} is not an object with 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise BadRequest(f"{what} message {j}: unknown role {msg['role']!r} "
                             f"(known roles: {', '.join(ROLES)})")
        out.append({"role": msg["role"], "content": _text(msg["content"],
                                                          f"{what} message {j} content")})
    return out


def parse_items(body, limit: int) -> list[tuple[list[dict], str]]:
    """rewardjax's body -> ``[(prompt messages, response)]``, read like the score mode's
    ``response`` records (a string prompt is one user message; ``messages`` end with the
    assistant's response)."""
    if isinstance(body, dict):
        items = _list(body, "items", limit)
    elif isinstance(body, list):
        items = body
        if len(items) > limit:
            raise BadRequest(f"{len(items)} items; at most {limit} per request "
                             "(serve.max_items_per_request)", 413)
    else:
        raise BadRequest(f"body is a JSON {type(body).__name__}, expected {{'items': [...]}}")
    if not items:
        raise BadRequest("no items to score")
    out = []
    for i, item in enumerate(items):
        what = f"item {i}"
        if not isinstance(item, dict):
            raise BadRequest(f"{what} is {type(item).__name__}, expected an object")
        if "messages" in item:
            msgs = _messages(item["messages"], f"{what} messages")
            if not msgs or msgs[-1]["role"] != "assistant":
                raise BadRequest(f"{what} messages do not end with an assistant turn", 422)
            prompt, response = msgs[:-1], msgs[-1]["content"]
        elif "response" in item:
            response = _text(item["response"], f"{what} response")
            raw = item.get("prompt", "")
            if isinstance(raw, list):
                prompt = _messages(raw, f"{what} prompt")
            else:
                raw = _text(raw, f"{what} prompt")
                prompt = [{"role": "user", "content": raw}] if raw.strip() else []
        else:
            raise BadRequest(f"{what} has neither 'response' (with 'prompt') nor 'messages'")
        if not response.strip():
            raise BadRequest(f"{what}: empty response", 422)
        out.append((prompt, response))
    return out


# ------------------------------------------------------------------------ responses
def item_result(row: dict[str, np.ndarray], labels: dict[str, list[str]]) -> dict:
    """One item's JSON: ``reward`` plus its breakdowns (``members`` list, ``std``, ``min``,
    ``uwo``, ``objectives`` by name, other keys as lists)."""
    out = {"reward": float(row["reward"])}
    for key, value in row.items():
        if key == "reward":
            continue
        v = np.asarray(value)
        if key in labels and key != "members" and v.ndim == 1:
            out[key] = {n: float(x) for n, x in zip(labels[key], v)}
        elif v.ndim == 0:
            out[key] = float(v)
        else:
            out[key] = v.astype(float).tolist()
    return out


def extra_logs(results: list[dict]) -> dict[str, list[float]]:
    """OpenRLHF's ``extra_logs``: one list per scalar breakdown (``member_0``, ``std``,
    objective names, ...), aligned with the queries."""
    logs: dict[str, list[float]] = {}
    for r in results:
        for key, value in r.items():
            if key == "reward":
                continue
            if key == "members":
                for j, v in enumerate(value):
                    logs.setdefault(f"member_{j}", []).append(v)
            elif isinstance(value, dict):
                for name, v in value.items():
                    logs.setdefault(name, []).append(v)
            elif isinstance(value, float):
                logs.setdefault(key, []).append(value)
    return logs
