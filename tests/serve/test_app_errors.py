"""App failure paths with a stand-in model (fast): a failing batch or a non-finite reward is a
JSON 500 for its request only, and a failed warm-up says so and stops the server."""

import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from rewardjax.data.tokenize import Encoded, TruncationStats
from rewardjax.serve.app import RewardServer, build_app
from tests.serve.test_batcher import FakeScorer
from tests.serve.test_server import wait_ready


class FakeEncoder:
    """Token ids: one per word, the word's length."""

    stats = TruncationStats()

    def encode(self, prompt, response):
        if response == "reject me":
            raise ValueError("Conversation roles must alternate")  # as a Jinja template would
        ids = [len(w) for w in response.split()] or [1]
        return Encoded(np.asarray(ids, np.int32), np.zeros(len(ids), np.int32), 0)


class Model(FakeScorer):
    encoder, labels, step = FakeEncoder(), {"members": ["member_0", "member_1"]}, 7

    def score_encoded(self, seqs):
        out = super().score_encoded(seqs)
        out["reward"] = np.where(out["reward"] == 5, np.nan, out["reward"])  # 'hello' -> NaN
        return out


def items(*responses):
    return {"items": [{"prompt": "p", "response": r} for r in responses]}


def test_failures_are_json_500s_for_their_own_request():
    server = RewardServer(Model(fail_on=13.0), recipe="fake", max_batch_tokens=32,
                          max_wait_ms=1)
    with TestClient(build_app(server)) as client:
        wait_ready(client, 60)
        ok = client.post("/v1/rewards", json=items("ab c"))
        assert ok.json()["results"] == [{"reward": 3.0, "members": [3.0, -3.0], "std": 3.0,
                                         "min": -3.0, "uwo": -9.0 * 0.5}]
        assert ok.json()["model"] == {"recipe": "fake", "step": 7}
        r = client.post("/v1/rewards", json=items("abcdefghijklm"))  # 13: the model raises
        assert r.status_code == 500 and "scoring failed: RuntimeError: boom" in r.json()["error"]
        r = client.post("/get_reward", json={"query": ["ab", "hello"]})
        assert r.status_code == 500 and "non-finite rewards for items [1]" in r.json()["error"]
        assert client.post("/get_reward", json={"query": ["ab"]}).json()["rewards"] == [2.0]
        r = client.post("/v1/rewards", json=items("ab", "reject me"))
        assert r.status_code == 422 and r.json()["error"] == (
            "item 1 cannot be encoded as the model was trained: ValueError: Conversation roles "
            "must alternate")
        r = client.post("/v2/everything", json=items("ab"))  # unknown routes answer JSON too
        assert r.status_code == 404 and r.json() == {"error": "no route POST /v2/everything"}
        r = client.get("/v1/rewards")
        assert r.status_code == 405 and r.json() == {"error": "no route GET /v1/rewards"}


def test_unknown_policy_template_is_refused_at_start():
    with pytest.raises(ValueError, match="unknown serve.policy_template 'mistral'"):
        RewardServer(Model(), policy_template="mistral")


def test_a_failed_warm_up_is_reported_and_stops_the_server():
    server = RewardServer(Model(), combine="mean", max_batch_tokens=32)
    server.scorer.score_encoded = lambda seqs: {"reward": np.zeros(len(seqs), np.float32)}
    stopped = []
    server.on_warm_error = lambda: stopped.append(True)
    with TestClient(build_app(server)) as client:
        for _ in range(100):
            r = client.get("/health")
            if r.status_code != 503:
                break
            time.sleep(0.05)
        assert r.status_code == 500 and "needs members" in r.json()["error"]
    assert stopped == [True]


def test_serve_keys_are_read_by_the_serve_mode_only():
    from rewardjax import modes
    from rewardjax.config import UnreadConfigKeys
    from tests.runtime.helpers import load_recipe

    config = load_recipe("bt")
    config.mode = "serve"
    modes.check_overrides(config, ["serve.port", "serve.policy_template", "eval.batch_size",
                                   "model.path"])
    config.mode = "score"
    with pytest.raises(UnreadConfigKeys, match="serve.port.*--config.mode=serve"):
        modes.check_overrides(config, ["serve.port"])
