"""Run under 8 virtual CPU devices: same loss and parameters on several mesh shapes as on one
device, for a Llama and a BERT reward model (two steps, with dropout off for exactness), on
ordinary ``[B, 2, L]`` batches and on packed ``[R, L]`` batches (several sequences per row, pairs
picked back out by ``(row, slot)`` indices that may point at rows held by other devices; see
``main`` for which shapes run packed)."""

import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])

from rewardjax.data.packing import collate_packed_pairs  # noqa: E402
from rewardjax.models import layers  # noqa: E402
from rewardjax.runtime.step import batch_axis_size  # noqa: E402
from tests.runtime.helpers import fixed_batch, load_recipe, tiny_run  # noqa: E402

SHAPES = [
    {"data": 8, "fsdp": 1, "tensor": 1},
    {"data": 2, "fsdp": 4, "tensor": 1},
    {"data": 2, "fsdp": 2, "tensor": 2},
    {"data": 1, "fsdp": 1, "tensor": 1},  # single device (first one only)
]

# Packed batches: 12 real pairs + 4 filler pairs (weight 0), 24 simulator sequences of ~50-128
# tokens packed 3 to a row into exactly 8 rows of 384 tokens, so the rows divide by every
# shape's data * fsdp (8 or 4) and every device's shard holds real, multi-sequence rows.
PACK_PAIRS, PACK_BATCH, PACK_ROWS, PACK_LENGTH, PACK_SEGMENTS = 12, 16, 8, 384, 3


def packed_batch(run, data, start):
    idx = np.arange(start, start + PACK_PAIRS)
    b = collate_packed_pairs(data, idx, PACK_BATCH, PACK_LENGTH, PACK_SEGMENTS,
                             run.tokenizer.pad_token_id, rows=PACK_ROWS)
    # Guard against a trivial pass: every row holds sequences of at least two different pairs
    # (no row is empty or one unpacked pair), and some pairs have their two sides in different
    # rows, so on the data=8 mesh they are gathered from two devices.
    chosen, rejected = b["chosen_index"][:PACK_PAIRS, 0], b["rejected_index"][:PACK_PAIRS, 0]
    pairs_per_row = [len({*np.flatnonzero(chosen == r), *np.flatnonzero(rejected == r)})
                     for r in range(PACK_ROWS)]
    assert min(pairs_per_row) >= 2, pairs_per_row
    assert (chosen != rejected).any()
    return b


# Per-shard block layouts traced (``attention=auto`` on a batch-sharded mesh): counted so the
# packed comparison is known to run block-skipping attention on the mesh, not the dense path.
PER_SHARD_LAYOUTS = []
_per_shard = layers.sharded_block_layout


def _counted(*args, **kwargs):
    PER_SHARD_LAYOUTS.append(1)
    return _per_shard(*args, **kwargs)


layers.sharded_block_layout = _counted


def run_steps(model_path, shape, packed):
    """Two steps on unpacked batches and, with ``packed``, two on packed batches from the same
    initial state.

    Returns ``{"unpacked" | "packed": (losses, [(name, params)], n_sharded_params)}``.
    """
    config = load_recipe()
    config.model.path = model_path
    config.mesh.shape.update(shape)
    ndev = shape["data"] * shape["fsdp"] * shape["tensor"]
    config.mesh.num_devices = ndev
    # A pure BT loss is invariant to a shared reward offset, so the gradient of the last bias is
    # analytically 0 and numerically reduction-order noise, which Adam scales up to lr-sized
    # steps. The centering term pins that direction down and makes the comparison meaningful.
    config.loss.center_coef = 0.01
    # Adam's step is lr * g / (|g| + eps): on an element whose gradient nearly cancels (|g| ~ 1e-7,
    # e.g. a rare token's embedding) float32 reduction-order noise (~1e-8 absolute on O(1)
    # gradients) moves the step by percents of lr, beyond the atol below. A larger eps keeps such
    # elements in the linear regime; a real sharding error still moves steps by O(lr).
    config.train.eps = 1e-6
    out = {}
    with tempfile.TemporaryDirectory() as wd:
        config, run, data = tiny_run(wd, config)
        step = run.train_step(dropout=False)
        split = batch_axis_size(run.mesh, run.rules)
        assert split == shape["data"] * shape["fsdp"], (split, shape)
        runs = [("unpacked", [fixed_batch(run, data, rows=8, start=8 * i) for i in range(2)])]
        if packed:
            assert PACK_ROWS % split == 0, (PACK_ROWS, split)
            runs.append(("packed", [packed_batch(run, data, PACK_PAIRS * i) for i in range(2)]))
        # The step donates its state: each run starts from its own copy of the initial state.
        init = run.state
        for kind, batches in runs:
            state, losses = jax.tree.map(lambda x: x.copy(), init), []
            PER_SHARD_LAYOUTS.clear()
            for b in batches:
                placed = run.place(b)
                x = placed["input_ids"]
                assert x.sharding.shard_shape(x.shape)[0] == x.shape[0] // split, (kind, shape)
                state, m = step(state, placed)
                losses.append(float(m["loss"]))
            if kind == "packed":
                # 384-token rows split into 64-token blocks; several devices hold batch shards.
                assert bool(PER_SHARD_LAYOUTS) == (ndev > 1), (shape, len(PER_SHARD_LAYOUTS))
            n_sharded = sum(
                1
                for x in jax.tree.leaves(state.params)
                if len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
            )
            flat = jax.tree_util.tree_leaves_with_path(state.params)
            params = [(jax.tree_util.keystr(p), np.asarray(x)) for p, x in flat]
            out[kind] = losses, params, n_sharded
    return out


def main():
    assert len(jax.devices()) == 8, jax.devices()
    # Each (shape, batch kind) is one more XLA compile, the bulk of this check's time. Packed
    # batches run on every shape for the Llama; for the BERT, whose packed path differs only in
    # the bidirectional segment mask and learned positions, on the shape sharding every axis.
    for model, packed_shapes in (
        (
            "random:llama?hidden_size=64&num_layers=2&num_heads=4&num_kv_heads=2"
            "&intermediate_size=128",
            SHAPES[:-1],
        ),
        ("random:bert?hidden_size=64&num_layers=2&num_heads=4&intermediate_size=128", SHAPES[2:3]),
    ):
        ref = run_steps(model, SHAPES[-1], packed=True)
        for shape in SHAPES[:-1]:
            got = run_steps(model, shape, packed=shape in packed_shapes)
            for kind, (losses, params, n_sharded) in got.items():
                ref_losses, ref_params, _ = ref[kind]
                np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=2e-6,
                                           err_msg=kind)
                assert len(params) == len(ref_params) > 0
                worst = 0.0  # largest |difference| / tolerance, printed to show the margin
                for (name, a), (_, b) in zip(params, ref_params):
                    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=f"{kind} {name}")
                    worst = max(worst, float(np.max(np.abs(a - b) / (2e-6 + 2e-4 * np.abs(b)))))
                if shape["fsdp"] > 1 or shape["tensor"] > 1:
                    assert n_sharded > 0, f"{shape}: no parameter is actually sharded"
                print(model.split("?")[0], shape, kind, "losses", losses, "sharded", n_sharded,
                      f"worst param diff {worst:.2f} x tol")
    print("OK")


if __name__ == "__main__":
    main()
