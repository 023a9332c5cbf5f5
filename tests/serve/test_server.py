"""The reward server over a tiny bt workdir, in process: rewards equal to the score mode's,
policy templates undone, no compilation under load, and every refusal named."""

import copy
import json
import os
import threading
import time

import jax
import numpy as np
import pytest
from starlette.testclient import TestClient

from rewardjax import modes
from rewardjax.modes.serve import make_server
from rewardjax.serve.app import RewardServer, build_app
from tests.serve.conftest import TEXTS
from tests.serve.test_protocol import chatml, llama3

LONG = ("Summarise this.", " ".join(["word"] * 300))  # over model.max_length: truncated
ALL = TEXTS + [LONG]


def metric(text, name):
    """Sum of a metric's samples in Prometheus text."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def wait_ready(client, limit_s=300):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        r = client.get("/health")
        if r.status_code == 200:
            return r
        assert r.status_code == 503 and r.json() == {"status": "warming"}
        time.sleep(0.1)
    raise AssertionError("the server never became ready")


def offline_scores(config, workdir, tmp_path, texts):
    """Rewards of ``texts`` by --config.mode=score."""
    c = copy.deepcopy(config)
    c.mode = "score"
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in texts))
    c.score.input, c.score.output = str(inp), str(out)
    modes.run(c, workdir)
    return [json.loads(line)["reward"] for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def served(bt_workdir, tmp_path_factory):
    config, workdir = bt_workdir
    server = make_server(config, workdir)
    want = offline_scores(config, workdir, tmp_path_factory.mktemp("score"), ALL)
    with TestClient(build_app(server)) as client:
        wait_ready(client)
        yield server, client, dict(zip(ALL, want))


def items(texts):
    return [{"prompt": p, "response": r} for p, r in texts]


def user(p):
    return [{"role": "user", "content": p}] if p else []


def test_rewards_equal_the_score_mode(served):
    server, client, want = served
    r = client.post("/v1/rewards", json={"items": items(ALL)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"recipe": "bt", "step": 3}
    got = [x["reward"] for x in body["results"]]
    np.testing.assert_allclose(got, [want[t] for t in ALL], atol=1e-5)
    # Conversation messages are the same texts, rendered by the model's template alike.
    msgs = [{"messages": user(p) + [{"role": "assistant", "content": r}]} for p, r in ALL]
    r = client.post("/v1/rewards", json=msgs)  # a bare list of items
    np.testing.assert_allclose([x["reward"] for x in r.json()["results"]], got, atol=1e-5)
    metrics = client.get("/metrics").text
    assert 'rewardjax_truncated_texts_total{part="response"}' in metrics  # LONG was cut


@pytest.mark.parametrize("render", [chatml, llama3], ids=["chatml", "llama3"])
def test_openrlhf_queries_rendered_by_another_template_score_as_trained(served, render):
    """The policy's template (chatml, llama3) differs from the reward model's own: queries are
    taken apart and re-rendered, so the rewards are the score mode's."""
    server, client, want = served
    prompts = [render(user(p)) for p, _ in TEXTS]
    queries = [pr + r + "<|im_end|>" * (render is chatml) for pr, (_, r) in zip(prompts, TEXTS)]
    expected = [want[t] for t in TEXTS]
    for body in ({"query": queries, "prompts": prompts, "labels": [""] * len(TEXTS)},
                 {"query": queries}):
        r = client.post("/get_reward", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        np.testing.assert_allclose(out["rewards"], expected, atol=1e-5)
        assert out["scores"] == out["rewards"] and out["extra_logs"] == {}
    # Scoring the policy's raw text instead (the trap) gives other rewards.
    raw = client.post("/v1/rewards", json=items([("", q) for q in queries])).json()
    assert not np.allclose([x["reward"] for x in raw["results"]], expected, atol=1e-3)


def test_a_burst_of_mixed_requests_compiles_nothing_and_gets_its_own_rewards(served):
    server, client, want = served
    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    before = client.get("/metrics").text
    jax.monitoring.register_event_duration_secs_listener(listen)
    results, errors = {}, []

    def post(k):
        try:
            for j in range(3):
                mine = [ALL[(k + j + i) % len(ALL)] for i in range(1 + (k + j) % 3)]
                r = client.post("/v1/rewards", json=items(mine))
                results[(k, j)] = (mine, [x["reward"] for x in r.json()["results"]])
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    try:
        threads = [threading.Thread(target=post, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert not errors and len(results) == 18
    for mine, got in results.values():
        np.testing.assert_allclose(got, [want[t] for t in mine], atol=1e-5)
    assert compiles == []  # warm-up compiled every shape the batcher can emit
    metrics = client.get("/metrics").text
    assert "rewardjax_batch_fill_bucket" in metrics and "rewardjax_queue_depth 0.0" in metrics
    texts = sum(len(mine) for mine, _ in results.values())
    assert metric(metrics, "rewardjax_items_scored_total") - metric(
        before, "rewardjax_items_scored_total") == texts
    batches = metric(metrics, "rewardjax_batches_total") - metric(before, "rewardjax_batches_total")
    assert batches < texts  # requests were coalesced


def test_bad_requests_are_named_and_leave_the_server_serving(served):
    server, client, want = served
    cases = [
        ("/v1/rewards", b"{not json", 400, "invalid JSON"),
        ("/v1/rewards", json.dumps({"items": [{"prompt": "p", "response": ""}]}), 422,
         "item 0: empty response"),
        ("/v1/rewards", json.dumps([{"prompt": "p", "response": "r"}, {"prompt": 3,
                                                                       "response": "r"}]),
         400, "item 1 prompt is int"),
        ("/get_reward", json.dumps({"query": "text"}), 400, "field 'query' is str"),
        ("/get_reward", json.dumps({"prompts": ["a"]}), 400, "missing field 'query'"),
        ("/get_reward", json.dumps({"query": ["x"] * 2000}), 413, "at most 1024 per request"),
    ]
    for path, body, status, msg in cases:
        r = client.post(path, content=body)
        assert r.status_code == status and msg in r.json()["error"], (path, r.text)
    server.opts["max_request_bytes"] = 100
    try:
        r = client.post("/v1/rewards", json={"items": items([("p", "x" * 200)])})
        assert r.status_code == 413 and "serve.max_request_bytes" in r.json()["error"]
    finally:
        server.opts["max_request_bytes"] = 8 * 2**20
    r = client.post("/v1/rewards", json={"items": items(TEXTS[:1])})
    assert r.status_code == 200
    assert r.json()["results"][0]["reward"] == pytest.approx(want[TEXTS[0]], abs=1e-5)
    metrics = client.get("/metrics").text
    assert 'rewardjax_rejected_requests_total{reason="bad_request"}' in metrics
    assert 'rewardjax_rejected_requests_total{reason="too_large"} 2.0' in metrics


def test_a_full_queue_answers_503_with_retry_after(served):
    server, client, _ = served
    server.batcher.max_queue = 1
    try:
        r = client.post("/v1/rewards", json={"items": items(TEXTS[:2])})
    finally:
        server.batcher.max_queue = 4096
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "queue full" in r.json()["error"]
    assert 'rewardjax_rejected_requests_total{reason="queue_full"} 1.0' in client.get(
        "/metrics").text


def test_bearer_token(served):
    server, client, _ = served
    server.opts["token"] = "s3cret"
    try:
        body = {"items": items(TEXTS[:1])}
        assert client.post("/v1/rewards", json=body).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert client.post("/get_reward", json={"query": ["a"]}, headers=bad).status_code == 401
        ok = client.post("/v1/rewards", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
    finally:
        server.opts["token"] = None


def test_health_says_warming_until_every_shape_is_compiled(served, monkeypatch):
    server, _, want = served
    other = RewardServer(server.scorer, recipe="bt", max_batch_tokens=512)
    with TestClient(build_app(other, warm_up=False)) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "warming"}
        r = client.post("/v1/rewards", json={"items": items(TEXTS[:1])})
        assert r.status_code == 503 and "warming" in r.json()["error"]
        other.warm_up()
        assert client.get("/health").json()["status"] == "ok"
        r = client.post("/v1/rewards", json={"items": items(TEXTS[:1])})
        assert r.json()["results"][0]["reward"] == pytest.approx(want[TEXTS[0]], abs=1e-5)


def test_token_env_must_hold_a_token(bt_workdir, monkeypatch):
    config, workdir = bt_workdir
    c = copy.deepcopy(config)
    c.serve.token_env = "RJ_TEST_TOKEN_UNSET"
    monkeypatch.delenv("RJ_TEST_TOKEN_UNSET", raising=False)
    with pytest.raises(ValueError, match="RJ_TEST_TOKEN_UNSET.*empty"):
        make_server(c, workdir)
    assert not os.environ.get("RJ_TEST_TOKEN_UNSET")
