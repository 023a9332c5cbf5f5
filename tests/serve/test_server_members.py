"""Breakdowns served: WARM members (per-member rewards, std, min, UWO; a chosen combination)
equal to the score mode, and a native export's reward normalisation applied."""

import copy
import json

import jax
import numpy as np
import pytest
from starlette.testclient import TestClient

from rewardjax import modes
from rewardjax.export import encoding_of, load_native, merged_model, save_native, save_run
from rewardjax.modes.serve import make_server
from rewardjax.runtime.load import checkpoint_scorer
from rewardjax.runtime.scorer import ModelScorer, NativeScorer
from rewardjax.serve.app import RewardServer, build_app
from tests.serve.conftest import TEXTS
from tests.serve.test_server import items, wait_ready


def offline(config, workdir, tmp_path):
    c = copy.deepcopy(config)
    c.mode = "score"
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in TEXTS))
    c.score.input, c.score.output = str(inp), str(out)
    modes.run(c, workdir)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_warm_members_and_their_statistics(warm_workdir, tmp_path):
    config, workdir = warm_workdir
    want = offline(config, workdir, tmp_path)
    members = np.asarray([[w["members"]["member_0"], w["members"]["member_1"]] for w in want])
    server = make_server(config, workdir)
    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    with TestClient(build_app(server)) as client:
        wait_ready(client)
        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            res = client.post("/v1/rewards", json={"items": items(TEXTS)}).json()["results"]
            out = client.post("/get_reward", json={"query": [f"{p} {r}" for p, r in TEXTS],
                                                   "prompts": [p for p, _ in TEXTS]}).json()
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)
        assert compiles == []  # members, weight average and their statistics: all warmed up
        np.testing.assert_allclose([r["reward"] for r in res], [w["reward"] for w in want],
                                   atol=1e-5)  # the weight average (WARM)
        got = np.asarray([r["members"] for r in res])
        np.testing.assert_allclose(got, members, atol=1e-5)
        np.testing.assert_allclose([r["std"] for r in res], members.std(1), atol=1e-5)
        np.testing.assert_allclose([r["min"] for r in res], members.min(1), atol=1e-5)
        np.testing.assert_allclose([r["uwo"] for r in res],
                                   members.mean(1) - 0.5 * members.var(1), atol=1e-5)
        assert set(out["extra_logs"]) == {"member_0", "member_1", "std", "min", "uwo"}
        np.testing.assert_allclose(out["extra_logs"]["member_1"], members[:, 1], atol=1e-5)

    # serve.combine: the reward is a prediction ensemble of the members instead.
    mean = RewardServer(server.scorer, recipe="warm", max_batch_tokens=512, combine="mean")
    with TestClient(build_app(mean)) as client:
        wait_ready(client)
        res = client.post("/v1/rewards", json=items(TEXTS)).json()["results"]
        np.testing.assert_allclose([r["reward"] for r in res], members.mean(1), atol=1e-5)
    with pytest.raises(ValueError, match="unknown serve.combine 'avg'"):
        RewardServer(server.scorer, combine="avg")

    # serve.breakdowns=False: the weight average's reward alone, one forward per text.
    lean_config = copy.deepcopy(config)
    lean_config.serve.breakdowns = False
    lean = make_server(lean_config, workdir)
    forwards = []
    score = lean.scorer.base.with_params

    def counting(params):
        forwards.append(1)
        return score(params)

    lean.scorer.base.with_params = counting
    with TestClient(build_app(lean)) as client:
        wait_ready(client)
        forwards.clear()
        res = client.post("/v1/rewards", json=items(TEXTS[:1])).json()["results"]
        assert len(forwards) == 1  # not members + average
        assert set(res[0]) == {"reward"}
        np.testing.assert_allclose(res[0]["reward"], want[0]["reward"], atol=1e-5)
    lean_config.serve.combine = "mean"
    with pytest.raises(ValueError, match="serve.breakdowns=False leaves out"):
        make_server(lean_config, workdir)


def test_native_export_normalisation_is_applied(bt_workdir, tmp_path):
    config, workdir = bt_workdir
    scorer = checkpoint_scorer(config, workdir)
    run = scorer.run
    norm = {"mean": 0.25, "std": 2.0, "count": 10, "data": "test"}
    native = NativeScorer(load_native(save_run(run, run.state, str(tmp_path / "export"),
                                               normalisation=norm)))
    seqs = [scorer.encoder.encode([{"role": "user", "content": p}] if p else [], r)
            for p, r in TEXTS]
    raw = scorer.rewards(seqs)
    server = RewardServer(native, recipe="bt", max_batch_tokens=512)
    with TestClient(build_app(server)) as client:
        wait_ready(client)
        res = client.post("/v1/rewards", json=items(TEXTS)).json()["results"]
    np.testing.assert_allclose([r["raw_reward"] for r in res], raw, atol=1e-5)
    np.testing.assert_allclose([r["reward"] for r in res], (raw - 0.25) / 2.0, atol=1e-5)


def test_native_ensemble_members_per_text(bt_workdir, tmp_path):
    """A native ensemble export: members come back per text ([N, M]) like WARM's, reward their
    UWO combination, and nothing compiles after warm-up."""
    config, workdir = bt_workdir
    scorer = checkpoint_scorer(config, workdir)
    run = scorer.run
    states = [run.state._replace(params=jax.tree.map(lambda x, i=i: x * (1.0 + 0.3 * i),
                                                     run.state.params)) for i in range(2)]
    out = save_native(str(tmp_path / "ens"), kind="ensemble", spec=run.spec,
                      tokenizer=run.tokenizer, members=[merged_model(run, s) for s in states],
                      combine={"type": "ensemble", "method": "uwo", "lam": 0.5},
                      encoding=encoding_of(config))
    seqs = [scorer.encoder.encode([{"role": "user", "content": p}] if p else [], r)
            for p, r in TEXTS]
    members = np.stack([ModelScorer.of(run, s).rewards(seqs) for s in states], 1)  # [N, M]
    server = RewardServer(NativeScorer(load_native(out)), recipe="ens", max_batch_tokens=512)
    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    with TestClient(build_app(server)) as client:
        wait_ready(client)
        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            res = client.post("/v1/rewards", json=items(TEXTS)).json()["results"]
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    np.testing.assert_allclose([r["members"] for r in res], members, atol=1e-5)
    np.testing.assert_allclose([r["reward"] for r in res],
                               members.mean(1) - 0.5 * members.var(1), atol=1e-5)
