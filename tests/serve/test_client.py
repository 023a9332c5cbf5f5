"""RewardClient against a scripted stdlib HTTP stub: item mapping, retries, failover, errors,
bounded time. The end-to-end check against the real server is tests/serve/test_trl_grpo.py."""

import json
import pickle
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rewardjax.serve.client import (
    RewardClient,
    RewardRequestError,
    RewardServerUnavailable,
    to_item,
)
from tests.conftest import ROOT


class Stub:
    """A local server answering from ``script`` (a list of (status, body, headers, delay) used
    in order, the last one repeated) and recording every request body and header."""

    def __init__(self, script=None, keep_alive=False, drop_after_reply=False):
        self.script = list(script or [])
        self.requests, self.headers = [], []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, body))
                stub.headers.append(dict(self.headers))
                i = min(len(stub.requests) - 1, len(stub.script) - 1)
                status, reply, extra, delay = stub.script[i] if stub.script else (
                    200, None, {}, 0.0)
                time.sleep(delay)
                if reply is None:  # echo: reward = len(response or last message)
                    reply = _echo(self.path, body)
                data = json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)
                # Close without saying so: the client's kept-alive connection goes stale.
                self.close_connection = drop_after_reply or not keep_alive

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _echo(path, body):
    if path == "/get_reward":
        r = [float(len(q)) for q in body["query"]]
        return {"rewards": r, "scores": r, "extra_logs": {}}
    texts = [it["response"] if "response" in it else it["messages"][-1]["content"]
             for it in body["items"]]
    return {"results": [{"reward": float(len(t))} for t in texts], "model": {}}


@pytest.fixture
def stubs():
    made = []

    def make(*args, **kwargs):
        made.append(Stub(*args, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _dead_url():
    """A loopback port nobody listens on (bound then closed): connections are refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def test_items_strings_and_conversations_and_trl_signature(stubs):
    stub = stubs()
    rm = RewardClient(stub.url + "/v1/rewards", batch_size=2, name="my_rm")
    assert rm.__name__ == "my_rm"
    prompts = ["p1", [{"role": "user", "content": "hi"}], "p3"]
    completions = ["abc", [{"role": "assistant", "content": [{"type": "text", "text": "hey!"}]}],
                   "abcdef"]
    got = rm(prompts=prompts, completions=completions, completion_ids=[[1], [2], [3]],
             trainer_state=object(), log_metric=print)
    assert got == [3.0, 4.0, 6.0]
    sent = [it for _, body in stub.requests for it in body["items"]]
    assert [len(body["items"]) for _, body in stub.requests] == [2, 1]  # batch_size chunks
    assert sent[0] == {"prompt": "p1", "response": "abc"}
    assert sent[1] == {"messages": [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "hey!"}]}
    assert to_item([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                   "plain")["messages"][-1] == {"role": "assistant", "content": "plain"}


def test_openrlhf_protocol_and_bearer_token(stubs, monkeypatch):
    stub = stubs()
    monkeypatch.setenv("RJ_TEST_TOKEN", "s3cret")
    rm = RewardClient([stub.url], protocol="openrlhf", token_env="RJ_TEST_TOKEN")
    assert rm(["Q: a ", "Q: b "], ["yes", "no"]) == [8.0, 7.0]
    path, body = stub.requests[0]
    assert path == "/get_reward"
    assert body == {"query": ["Q: a yes", "Q: b no"], "prompts": ["Q: a ", "Q: b "]}
    assert stub.headers[0]["Authorization"] == "Bearer s3cret"
    with pytest.raises(ValueError, match="protocol='v1'"):
        rm([[{"role": "user", "content": "x"}]], [[{"role": "assistant", "content": "y"}]])
    with pytest.raises(ValueError, match="unset or empty"):
        RewardClient(stub.url, token_env="RJ_TEST_TOKEN_UNSET")


def test_503_retry_after_is_honoured(stubs):
    busy = (503, {"error": "queue full"}, {"Retry-After": "0.3"}, 0.0)
    stub = stubs([busy, busy, (200, None, {}, 0.0)])
    rm = RewardClient(stub.url, backoff=0.01, retries=3, timeout=5)
    start = time.monotonic()
    assert rm(["p"], ["xy"]) == [2.0]
    elapsed = time.monotonic() - start
    assert 0.55 < elapsed < 3.0  # two waits of Retry-After, not the 0.01 s backoff
    assert len(stub.requests) == 3
    assert rm.stats["retries"] == 2 and rm.stats["rejected_503"] == 2


def test_failover_past_a_dead_replica_and_round_robin(stubs):
    a, b = stubs(), stubs()
    rm = RewardClient([_dead_url(), a.url], backoff=5.0, retries=2, timeout=5)
    start = time.monotonic()
    for _ in range(4):
        assert rm(["p"], ["abc"]) == [3.0]
    assert time.monotonic() - start < 2.0  # moved on at once, never waited the 5 s backoff
    assert len(a.requests) == 4 and rm.stats["failovers"] == 2  # calls 1 and 3 start dead

    rr = RewardClient([a.url, b.url])
    for _ in range(6):
        rr(["p"], ["x"])
    assert len(a.requests) - 4 == 3 and len(b.requests) == 3


def test_4xx_raises_at_once_with_the_server_message(stubs):
    stub = stubs([(400, {"error": "items[0]: 'response' is missing"}, {}, 0.0)])
    rm = RewardClient(stub.url, retries=5)
    with pytest.raises(RewardRequestError, match="items\\[0\\]: 'response' is missing") as e:
        rm(["p"], ["r"])
    assert e.value.status == 400 and len(stub.requests) == 1
    auth = stubs([(401, {"error": "bad token"}, {}, 0.0)])
    with pytest.raises(RewardRequestError, match="401: bad token"):
        RewardClient(auth.url, token="wrong")(["p"], ["r"])


def test_time_and_attempts_are_bounded(stubs):
    slow = stubs([(200, None, {}, 3.0)])
    rm = RewardClient(slow.url, timeout=0.2, retries=10, backoff=0.05, total_timeout=0.8)
    start = time.monotonic()
    with pytest.raises(RewardServerUnavailable, match="total_timeout 0.8s"):
        rm(["p"], ["r"])
    assert time.monotonic() - start < 1.5

    broken = stubs([(500, {"error": "boom"}, {}, 0.0)])
    rm = RewardClient(broken.url, retries=2, backoff=0.01)
    with pytest.raises(RewardServerUnavailable, match="3 attempt.*500 boom"):
        rm(["p"], ["r"])
    assert len(broken.requests) == 3

    # A Retry-After longer than the time left ends the call now instead of sleeping past it.
    busy = stubs([(503, {"error": "queue full"}, {"Retry-After": "30"}, 0.0)])
    start = time.monotonic()
    with pytest.raises(RewardServerUnavailable, match="would pass the total timeout"):
        RewardClient(busy.url, retries=3, total_timeout=2.0)(["p"], ["r"])
    assert time.monotonic() - start < 1.0


def test_stale_keep_alive_connection_is_reopened_without_a_retry(stubs):
    stub = stubs(keep_alive=True, drop_after_reply=True)
    rm = RewardClient(stub.url, retries=0)
    assert rm(["p"], ["ab"]) == [2.0]
    assert rm(["p"], ["abc"]) == [3.0]  # the kept socket was closed by the server
    assert rm.stats["retries"] == 0
    alive = stubs(keep_alive=True)
    rm = RewardClient(alive.url, retries=0)
    for n in range(3):
        assert rm(["p"], ["x" * n]) == [float(n)]


def test_pickles_and_validates_arguments(stubs):
    stub = stubs()
    rm = pickle.loads(pickle.dumps(RewardClient(stub.url, name="rm")))
    assert rm(["p"], ["ab"]) == [2.0] and rm.__name__ == "rm"
    for bad in ({"urls": []}, {"urls": "ftp://x"}, {"urls": stub.url, "protocol": "grpc"},
                {"urls": stub.url, "batch_size": 0}):
        with pytest.raises(ValueError):
            RewardClient(**bad)
    with pytest.raises(ValueError, match="2 prompts but 1"):
        rm(["a", "b"], ["c"])


def test_client_imports_neither_jax_nor_torch():
    code = ("import sys; import rewardjax.serve.client; "
            "bad = [m for m in ('jax', 'torch', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
