"""Run under 8 virtual CPU devices: same loss and parameters on several mesh shapes as on one
device, for a Llama and a BERT reward model (two steps, with dropout off for exactness)."""

import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])

from tests.train.helpers import fixed_batch, load_recipe, tiny_run  # noqa: E402

SHAPES = [
    {"data": 8, "fsdp": 1, "tensor": 1},
    {"data": 2, "fsdp": 4, "tensor": 1},
    {"data": 2, "fsdp": 2, "tensor": 2},
    {"data": 1, "fsdp": 1, "tensor": 1},  # single device (first one only)
]


def run_steps(model_path, shape):
    config = load_recipe()
    config.model.path = model_path
    config.mesh.shape.update(shape)
    ndev = shape["data"] * shape["fsdp"] * shape["tensor"]
    config.mesh.num_devices = ndev
    # A pure BT loss is invariant to a shared reward offset, so the gradient of the last bias is
    # analytically 0 and numerically reduction-order noise, which Adam scales up to lr-sized
    # steps. The centering term pins that direction down and makes the comparison meaningful.
    config.loss.center_coef = 0.01
    with tempfile.TemporaryDirectory() as wd:
        config, run, data = tiny_run(wd, config)
        step = run.train_step(dropout=False)
        state, losses = run.state, []
        for i in range(2):
            b = fixed_batch(run, data, rows=8, start=8 * i)
            state, m = step(state, run.place(b))
            losses.append(float(m["loss"]))
        n_sharded = sum(
            1
            for x in jax.tree.leaves(state.params)
            if len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
        )
        flat = jax.tree_util.tree_leaves_with_path(state.params)
        return losses, [(jax.tree_util.keystr(p), np.asarray(x)) for p, x in flat], n_sharded


def main():
    assert len(jax.devices()) == 8, jax.devices()
    for model in (
        "random:llama?hidden_size=64&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=128",
        "random:bert?hidden_size=64&num_layers=2&num_heads=4&intermediate_size=128",
    ):
        ref_losses, ref_params, _ = run_steps(model, SHAPES[-1])
        for shape in SHAPES[:-1]:
            losses, params, n_sharded = run_steps(model, shape)
            np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=2e-6)
            for (name, a), (_, b) in zip(params, ref_params):
                np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=name)
            if shape["fsdp"] > 1 or shape["tensor"] > 1:
                assert n_sharded > 0, f"{shape}: no parameter is actually sharded"
            print(model.split("?")[0], shape, "losses", losses, "sharded params", n_sharded)
    print("OK")


if __name__ == "__main__":
    main()
