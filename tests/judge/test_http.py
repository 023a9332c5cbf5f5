"""Tests for rewardjax.judge.http against a stub chat-completions server on 127.0.0.1."""

import http.server
import json
import logging
import threading
import time
import traceback

import pytest

from rewardjax.data.records import Pair
from rewardjax.judge import JudgeError, label_pairs
from rewardjax.judge.http import HTTPJudge, Secret, endpoint

KEY = "sk-test-0123456789-SECRET"


def _completion(text):
    return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


class Stub:
    """A scripted server: each POST takes the next (status, json body, headers, delay) step.

    ``status`` is a code or ``(code, reason phrase)``; a bytes body is sent as it is.
    """

    def __init__(self):
        self.script = []
        self.requests = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.requests.append((self.path, dict(self.headers), json.loads(body)))
                step = stub.script.pop(0) if len(stub.script) > 1 else stub.script[0]
                status, payload, headers, delay = tuple(step) + ({}, 0.0)[len(step) - 2:]
                if callable(payload):
                    payload = payload(stub.requests[-1])
                time.sleep(delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                code, phrase = status if isinstance(status, tuple) else (status, None)
                try:
                    self.send_response(code, phrase)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def judge(self, **kwargs):
        self.sleeps = []
        defaults = dict(url=self.url, model="judge-model", key=KEY, timeout=5.0, retries=2,
                        sleep=self.sleeps.append, env={})
        return HTTPJudge(**{**defaults, **kwargs})


@pytest.fixture
def stub():
    s = Stub()
    s.thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


def test_success_sends_an_openai_request(stub):
    stub.script = [_completion("A")]
    judge = stub.judge(temperature=0.0, max_tokens=3, extra_body={"seed": 7})
    assert judge.compare(PROMPT, "4", "5", "correctness") == "A"
    (path, headers, body), = stub.requests
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["Content-Type"] == "application/json"
    assert body["model"] == "judge-model" and body["seed"] == 7
    assert body["temperature"] == 0.0 and body["max_tokens"] == 3
    assert body["messages"][0]["role"] == "system"
    assert "[Response A]\n4" in body["messages"][1]["content"]
    assert "correctness" in body["messages"][1]["content"]
    assert stub.sleeps == []


def test_retry_after_500_then_success(stub, caplog):
    stub.script = [(500, {"error": "overloaded"}), (503, {"error": "again"}), _completion("B")]
    judge = stub.judge(backoff=0.5)
    with caplog.at_level(logging.WARNING):
        assert judge.compare(PROMPT, "5", "4", "correctness") == "B"
    assert len(stub.requests) == 3
    assert stub.sleeps == [0.5, 1.0]  # exponential backoff
    assert "HTTP 500" in caplog.text and "retry 1/2" in caplog.text


def test_429_honours_retry_after_capped(stub):
    stub.script = [(429, {"error": "slow down"}, {"Retry-After": "3"}),
                   (429, {"error": "slow down"}, {"Retry-After": "999"}), _completion("A")]
    judge = stub.judge(max_backoff=10.0)
    assert judge.compare(PROMPT, "4", "5", "c") == "A"
    assert stub.sleeps == [3.0, 10.0]


def test_retries_exhausted_is_a_clear_error(stub):
    stub.script = [(502, {"error": "bad gateway"})]
    with pytest.raises(JudgeError, match=r"failed after 3 attempt\(s\); last error: HTTP 502"):
        stub.judge().compare(PROMPT, "a", "b", "c")
    assert len(stub.requests) == 3


def test_timeout_is_retried_then_a_clear_error(stub):
    stub.script = [(200, _completion("A")[1], {}, 1.0)]  # slower than the client waits
    judge = stub.judge(timeout=0.2, retries=1)
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"after 2 attempt\(s\); last error: timed out after 0.2"):
        judge.compare(PROMPT, "a", "b", "c")
    assert time.monotonic() - start < 3.0
    assert len(stub.requests) == 2 and stub.sleeps == [1.0]


def test_client_error_is_not_retried(stub):
    stub.script = [(400, {"error": {"message": "unknown model"}})]
    with pytest.raises(JudgeError, match="HTTP 400.*unknown model"):
        stub.judge().compare(PROMPT, "a", "b", "c")
    assert len(stub.requests) == 1


def test_reply_that_is_not_a_completion_is_an_error(stub):
    stub.script = [(200, {"object": "list", "data": []})]
    with pytest.raises(JudgeError, match="not a chat completion"):
        stub.judge().compare(PROMPT, "a", "b", "c")
    stub.script = [(200, b"<html>proxy error</html>")]
    with pytest.raises(JudgeError, match="not JSON"):
        stub.judge().compare(PROMPT, "a", "b", "c")


def test_malformed_answers_count_as_invalid(stub):
    # Pair 0: a chatty answer in one order -> invalid. Pair 1: consistent -> kept (orient B).
    # Pair 2: "A" in both orders (position bias) -> disagreement.
    answers = iter(["I think A is better", "B", "B", "A", "A", "A"])
    stub.script = [(200, lambda req: _completion(next(answers))[1])]
    pairs = [Pair(PROMPT, f"c{i}", f"r{i}") for i in range(3)]
    out = label_pairs(stub.judge(), pairs, ["correctness"])
    assert out.counts["correctness"].as_dict() == dict(kept=1, dropped_disagree=1, dropped_tie=0,
                                                       dropped_invalid=1, errors=0)
    assert out.pairs["correctness"][0].chosen == "r1"
    contents = [body["messages"][1]["content"] for _, _, body in stub.requests]
    assert "[Response A]\nc1" in contents[2] and "[Response A]\nr1" in contents[3]


def test_key_never_leaks(stub, caplog):
    judge = stub.judge()
    for text in (repr(judge), str(judge), repr(vars(judge)), f"{judge._key}", str(judge._key)):
        assert KEY not in text
    assert "key=***" in repr(judge)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(judge)
    # A server echoing the Authorization header in its errors, retried and then fatal.
    echo = lambda req: {"error": f"denied: {req[1]['Authorization']}"}  # noqa: E731
    stub.script = [(500, echo), (401, echo)]
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(JudgeError) as info:
            judge.compare(PROMPT, "a", "b", "c")
    assert len(stub.requests) == 2
    assert "HTTP 401" in str(info.value) and "Bearer ***" in str(info.value)
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert KEY not in "".join(traceback.format_exception(info.value))  # chained errors too
    assert "Bearer ***" in caplog.text and KEY not in caplog.text
    # The key also stays out of the invalid-answer debug log when a model parrots it.
    stub.script = [_completion(f"my key is {KEY}")]
    with caplog.at_level(logging.DEBUG):
        assert judge.compare(PROMPT, "a", "b", "c") is None
    assert KEY not in caplog.text


def test_configuration_from_environment(stub):
    env = {"REWARDJAX_JUDGE_URL": stub.url + "/", "REWARDJAX_JUDGE_KEY": KEY,
           "REWARDJAX_JUDGE_MODEL": "env-model", "REWARDJAX_JUDGE_TIMEOUT": "7.5"}
    judge = HTTPJudge(env=env, sleep=lambda s: None)
    assert judge.url == stub.url + "/chat/completions"
    assert judge.model == "env-model" and judge.timeout == 7.5
    stub.script = [_completion("tie")]
    assert judge.compare(PROMPT, "a", "b", "c") == "tie"
    assert stub.requests[0][1]["Authorization"] == f"Bearer {KEY}"
    # No key: no Authorization header at all.
    HTTPJudge(url=stub.url, env={}).compare(PROMPT, "a", "b", "c")
    assert "Authorization" not in stub.requests[1][1]
    with pytest.raises(ValueError, match="REWARDJAX_JUDGE_URL"):
        HTTPJudge(env={})


def test_endpoint_normalisation():
    assert endpoint("http://h:1/v1") == "http://h:1/v1/chat/completions"
    assert endpoint("http://h:1") == "http://h:1/v1/chat/completions"
    assert endpoint("https://api.x.com/v1/chat/completions/") == \
        "https://api.x.com/v1/chat/completions"
    assert endpoint("http://h/openai/v1") == "http://h/openai/v1/chat/completions"
    with pytest.raises(ValueError, match="http"):
        endpoint("ftp://h/v1")
    assert repr(Secret(None)) == "None" and not Secret("")


# -- the key never reaches another origin, a log or an exception ------------------------------


class Recorder:
    """A second server (another port: another origin) recording every request it gets."""

    def __init__(self):
        self.requests = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.requests.append((self.command, self.path, dict(self.headers), body))
                data = json.dumps(_completion("A")[1]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)


@pytest.fixture
def recorder():
    r = Recorder()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def _key_pieces(text, n=6):
    """Every ``n``-character substring of the key found in ``text`` (should be none)."""
    return sorted({KEY[i:i + n] for i in range(len(KEY) - n + 1) if KEY[i:i + n] in text})


def _fails_without_the_key(judge, caplog):
    """The JudgeError of one ``compare``, after checking no part of the key was shown."""
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(JudgeError) as info:
            judge.compare(PROMPT, "a", "b", "c")
    shown = "".join(traceback.format_exception(info.value)) + repr(info.value) + caplog.text
    assert _key_pieces(shown) == []
    return str(info.value)


def test_cross_origin_redirect_is_refused_not_followed(stub, recorder, caplog):
    # urllib would follow a 302 to another port with the Authorization header on it.
    target = f"{recorder.url}/v1/chat/completions?stolen={KEY}"
    stub.script = [(302, b"", {"Location": target})]
    message = _fails_without_the_key(stub.judge(), caplog)
    assert recorder.requests == []  # the other origin never saw a request, let alone the key
    assert len(stub.requests) == 1  # a refusal, not a retryable failure
    assert "redirected (HTTP 302) to another origin" in message
    assert f"{recorder.url}/v1/chat/completions?stolen=***" in message
    assert "refusing to follow it" in message


def test_redirect_origins():
    from rewardjax.judge.http import _origin

    assert _origin("http://h/v1") == _origin("HTTP://h:80/other")
    assert _origin("https://h/v1") == _origin("https://h:443/v1")
    for other in ("https://h/v1", "http://h:8080/v1", "http://g/v1", "http://h:bad/v1"):
        assert _origin(other) != _origin("http://h/v1"), other


def test_reason_phrase_with_the_key_is_scrubbed(stub, caplog):
    # A retried 500 (warning log) then a fatal 401, both echoing the key in the status line.
    stub.script = [((500, f"Overloaded {KEY}"), {"error": "x"}),
                   ((401, f"Denied Bearer {KEY}"), {"error": "y"})]
    message = _fails_without_the_key(stub.judge(), caplog)
    assert "HTTP 401 Denied Bearer ***" in message
    assert "HTTP 500 Overloaded ***" in caplog.text
    # Retries exhausted: the last reason ends up in the final error.
    stub.script = [((503, f"Busy {KEY}"), {"error": "z"})]
    message = _fails_without_the_key(stub.judge(retries=1), caplog)
    assert "after 2 attempt(s); last error: HTTP 503 Busy ***" in message


@pytest.mark.parametrize("status", [500, 400, 200])
def test_key_straddling_the_quote_cut_is_scrubbed(stub, caplog, status):
    # The key spans characters 290-315: cutting the body at 300 before scrubbing left its
    # first 10 characters in the message.
    body = ("x" * 290 + KEY + "y" * 400).encode()
    stub.script = [(status, body)]
    message = _fails_without_the_key(stub.judge(retries=0), caplog)
    assert "x" * 290 + "***" in message
    # A well-formed reply that is not a completion is quoted (as JSON) through the same cut.
    stub.script = [(200, {"error": "x" * 280 + KEY + "y" * 400})]
    message = _fails_without_the_key(stub.judge(retries=0), caplog)
    assert "not a chat completion" in message and "***" in message


def test_clip_masks_a_key_prefix_left_at_a_cut(stub):
    judge = stub.judge()
    for k in range(1, len(KEY) + 1):
        # Scrub first, then cut: a whole key anywhere is masked before the cut can split it.
        assert judge._clip("a" * 10 + KEY + "b" * 50, limit=10 + k) == \
            ("a" * 10 + "***" + "b" * 50)[:10 + k]
        # Text that ends inside a copy (a read limit cut it) loses the partial key too.
        clipped = judge._clip("a" * 10 + KEY[:k], limit=300)
        assert clipped == ("a" * 10 + "***" if 4 <= k < len(KEY) else
                           "a" * 10 + ("***" if k == len(KEY) else KEY[:k]))


def test_key_with_surrounding_whitespace_is_stripped(stub):
    # A key from a file or $(...) ends with a newline; http.client refused the header and
    # quoted it, key included, in a ValueError.
    stub.script = [_completion("A")]
    judge = HTTPJudge(url=stub.url, env={"REWARDJAX_JUDGE_KEY": f" {KEY}\r\n"},
                      sleep=lambda s: None)
    assert judge.compare(PROMPT, "a", "b", "c") == "A"
    assert stub.requests[0][1]["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("bad", [f"{KEY}\nX-Evil: 1", f"sk-\r{KEY}", f"{KEY}\x00", f"{KEY}\u2013"])
def test_unsendable_key_is_refused_without_quoting_it(bad):
    with pytest.raises(JudgeError, match="judge API key") as info:
        HTTPJudge(url="http://127.0.0.1:9/v1", key=bad, env={})
    assert KEY not in "".join(traceback.format_exception(info.value))


def test_header_refused_by_http_client_is_a_scrubbed_judge_error(stub):
    judge = stub.judge()
    for bad in (f"{KEY}\n", f"{KEY}\u2013"):  # past the constructor's check
        judge._key = Secret(bad)
        with pytest.raises(JudgeError, match="http.client refused") as info:
            judge.compare(PROMPT, "a", "b", "c")
        assert KEY not in "".join(traceback.format_exception(info.value))
    assert stub.requests == []
