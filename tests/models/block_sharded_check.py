"""Run under 8 virtual CPU devices: block-skipping attention with one layout per batch shard
(``layers.sharded_block_layout`` / ``sharded_block_attention``, what ``attention=auto`` builds on a
batch-sharded mesh) equals the dense single-device path, outputs and q / k / v gradients, on
packed bidirectional, packed causal grouped-query and shared-prefix rows, on meshes that shard
the batch over ``data``, over ``data`` x ``fsdp`` and that also split heads over ``tensor``."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])

from rewardjax.models import layers  # noqa: E402
from rewardjax.sharding import DEFAULT_RULES, axis_rules, make_mesh  # noqa: E402

B, T, H, KV, HD, BLOCK = 8, 256, 4, 2, 16, 64
MESHES = [
    {"data": 8, "fsdp": 1, "tensor": 1},
    {"data": 2, "fsdp": 2, "tensor": 2},
    {"data": 4, "fsdp": 1, "tensor": 2},
]


def rows(seed, parts):
    """Packed rows: 1-4 segments of random lengths, trailing padding, segment boundaries inside
    tiles; with ``parts`` each segment is split [prompt | chosen | rejected] in thirds."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((B, T), np.int32)
    part = np.zeros((B, T), np.int32)
    for r in range(B):
        used = 0
        for s in range(1, rng.integers(1, 5) + 1):
            n = int(rng.integers(5, 120))
            n = min(n, T - used - (r % 3) * 7)  # some rows end in padding
            if n <= 0:
                break
            seg[r, used:used + n] = s
            part[r, used + n // 3: used + 2 * n // 3] = 1
            part[r, used + 2 * n // 3: used + n] = 2
            used += n
    mask = (seg > 0).astype(np.int32)
    return jnp.asarray(mask), jnp.asarray(seg), jnp.asarray(part) if parts else None


def main():
    assert len(jax.devices()) == 8, jax.devices()
    key = jax.random.PRNGKey(0)
    q = jax.random.normal(key, (B, T, H, HD))
    k = jax.random.normal(jax.random.fold_in(key, 1), (B, T, KV, HD))
    v = jax.random.normal(jax.random.fold_in(key, 2), (B, T, KV, HD))
    w = jax.random.normal(jax.random.fold_in(key, 3), (B, T, H, HD))

    for name, causal, with_parts in (("packed", False, False), ("packed_causal_gqa", True, False),
                                     ("shared_prefix", True, True)):
        mask, seg, parts = rows(len(name), with_parts)

        def dense(q, k, v, mask=mask, seg=seg, parts=parts, causal=causal):
            bias = layers.attention_bias(mask, causal=causal, segment_ids=seg, parts=parts)
            return jnp.sum(layers.softmax_attention(q, k, v, bias) * w)

        ref, ref_grads = jax.jit(jax.value_and_grad(dense, argnums=(0, 1, 2)))(q, k, v)

        for shape in MESHES:
            mesh = make_mesh(shape)
            built = {}

            def blocks(q, k, v, mask=mask, seg=seg, parts=parts, causal=causal, built=built):
                m = layers.make_attention_mask(mask, causal=causal, segment_ids=seg,
                                               impl="auto", parts=parts)
                built["shards"], built["layout"] = m.shards, m.blocks
                assert m.shards is not None and m.blocks is not None, "no per-shard layout"
                return jnp.sum(layers.sharded_block_attention(q, k, v, m.blocks, m.shards) * w)

            batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
            placed = [jax.device_put(x, batch) for x in (q, k, v)]
            with axis_rules(mesh, DEFAULT_RULES):
                got, grads = jax.jit(jax.value_and_grad(blocks, argnums=(0, 1, 2)))(*placed)
            n_shards = shape["data"] * shape["fsdp"]
            layout = built["layout"]
            # One dummy key-block row per shard: the layout really was built per shard.
            assert layout.kblocks.shape[0] == B * (T // BLOCK) + n_shards, layout.kblocks.shape
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4, err_msg=f"{name} {shape}")
            for g, r, label in zip(grads, ref_grads, "qkv"):
                np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{name} {shape} d{label}")
                assert g.sharding.shard_shape(g.shape)[0] == B // n_shards, (name, shape, label)
            print(name, shape, "loss", float(got), "ok")

        # Stacked members (WARM / ensembles run the model under vmap): the shard_map batches.
        mesh = make_mesh(MESHES[-1])

        def members(q2, mask=mask, seg=seg, parts=parts, causal=causal):
            m = layers.make_attention_mask(mask, causal=causal, segment_ids=seg, impl="auto",
                                           parts=parts)
            return jax.vmap(lambda q1: layers.sharded_block_attention(q1, k, v, m.blocks,
                                                                      m.shards))(q2)

        q2 = jnp.stack([q, q * 0.5])
        with axis_rules(mesh, DEFAULT_RULES):
            got = jax.jit(members)(q2)
        for i, scale in enumerate((1.0, 0.5)):
            bias = layers.attention_bias(mask, causal=causal, segment_ids=seg, parts=parts)
            np.testing.assert_allclose(got[i], layers.softmax_attention(q * scale, k, v, bias),
                                       rtol=1e-5, atol=1e-5, err_msg=f"{name} member {i}")
        print(name, "vmapped members ok")
    print("OK")


if __name__ == "__main__":
    main()
