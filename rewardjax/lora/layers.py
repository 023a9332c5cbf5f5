"""The LoRA layer: a frozen ``nnx.Linear`` plus a trainable low-rank update.

``LoRALinear`` *takes over* the base layer's ``kernel`` and ``bias`` variables instead of nesting
the base module, so the base parameters keep their exact paths (``.../q_proj/kernel``): HF
weight loading, export and path-regex freezing keep working, and the only change to the state
tree is two new leaves per target, ``lora_a`` and ``lora_b``, of type ``nnx.LoRAParam`` (a
subclass of ``nnx.Param``), so ``nnx.split(model, nnx.LoRAParam, ...)`` separates them.

Stacked layers: when the base kernel has leading axes (``[layers, in, out]`` from
``nnx.vmap``), ``lora_a`` / ``lora_b`` get the same leading axes and are sliced together with the
kernel by ``lax.scan``; inside the scan body the layer sees 2-D matrices again.

Dropout limitation: the backbones call projections as ``q_proj(x)`` without an rng, so LoRA
dropout is only applied when the layer is called with ``rng=`` explicitly; inside the stock
Llama/BERT forward it is inactive (the backbone's own hidden/attention dropout still applies).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rewardjax.models.layers import dropout as dropout_fn

LORA_RANK_AXIS = "lora_rank"


def _sharding_names(var: nnx.Variable) -> tuple | None:
    meta = var.get_metadata()
    for key in ("out_sharding", "sharding_names"):
        names = meta.get(key)
        if names is not None:
            return tuple(names)
    return None


class LoRALinear(nnx.Module):
    """``y = base(x) + dropout(x) @ A @ B * (alpha / rank)`` with ``B = 0`` at init.

    Args:
      base: the ``nnx.Linear`` to adapt; its ``kernel`` ``[*lead, in, out]`` and ``bias`` variables
        are reused (not copied) and stay ``nnx.Param``.
      rank: r, the inner dimension of the update.
      alpha: scaling numerator; the update is multiplied by ``alpha / rank``.
      dropout: LoRA dropout rate on the adapter input (only with an explicit ``rng``; see module
        docstring).
      rngs: rngs with a ``params`` stream for ``A``.
    """

    def __init__(self, base: nnx.Linear, *, rank: int, alpha: float, dropout: float = 0.0,
                 rngs: nnx.Rngs):
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.kernel = base.kernel
        self.bias = base.bias if base.bias is not None else nnx.data(None)
        # The base's static configuration, kept so the forward pass matches nnx.Linear bit for bit
        # and so merging can rebuild an equivalent nnx.Linear.
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.use_bias = base.use_bias
        self.dtype = base.dtype
        self.param_dtype = base.param_dtype
        self.precision = base.precision
        self.dot_general = base.dot_general
        self.promote_dtype = base.promote_dtype
        self.preferred_element_type = base.preferred_element_type
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scale = float(alpha) / int(rank)
        self.dropout = float(dropout)

        shape = tuple(self.kernel.shape)
        lead, (din, dout) = shape[:-2], shape[-2:]
        names = _sharding_names(self.kernel)
        if names is None or len(names) != len(shape):
            names = (None,) * len(shape)
        lead_names, in_name, out_name = tuple(names[:-2]), names[-2], names[-1]
        # Kaiming-uniform with a=sqrt(5) (the PEFT / torch.nn.Linear default): bound 1/sqrt(in).
        # The stacked axes are batch axes so every layer gets fan_in = in, not layers * in.
        init_a = jax.nn.initializers.variance_scaling(
            1.0 / 3.0, "fan_in", "uniform", in_axis=-2, out_axis=-1,
            batch_axis=tuple(range(len(lead))))
        self.lora_a = nnx.LoRAParam(
            init_a(rngs.params(), lead + (din, rank), self.param_dtype),
            out_sharding=lead_names + (in_name, LORA_RANK_AXIS))
        # B = 0 makes the adapted model exactly the base model at init.
        self.lora_b = nnx.LoRAParam(
            jnp.zeros(lead + (rank, dout), self.param_dtype),
            out_sharding=lead_names + (LORA_RANK_AXIS, out_name))

    def base_call(self, x: jax.Array) -> jax.Array:
        """The wrapped ``nnx.Linear`` forward (same ops, so identical results)."""
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        kwargs = {}
        if self.preferred_element_type is not None:
            kwargs["preferred_element_type"] = self.preferred_element_type
        y = self.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                             precision=self.precision, **kwargs)  # [..., out]
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y

    def delta(self, x: jax.Array, *, rng: jax.Array | None = None,
              dropout_rate=None) -> jax.Array:
        """The low-rank update ``dropout(x) @ A @ B * scale`` in the base's compute dtype."""
        dtype = self.dtype or jnp.result_type(x, self.kernel[...])
        h = x.astype(dtype)
        rate = self.dropout if dropout_rate is None else dropout_rate
        # A Python zero rate skips the mask entirely; a traced rate always pays for it.
        if rng is not None and not (isinstance(rate, (int, float)) and rate == 0):
            h = dropout_fn(h, rate, rng)
        a = self.lora_a[...].astype(dtype)
        b = self.lora_b[...].astype(dtype)
        low = jnp.einsum("...i,ir->...r", h, a, precision=self.precision)  # [..., rank]
        up = jnp.einsum("...r,ro->...o", low, b, precision=self.precision)  # [..., out]
        return up * jnp.asarray(self.scale, dtype)

    def __call__(self, x: jax.Array, *, rng: jax.Array | None = None,
                 dropout_rate=None) -> jax.Array:
        """Applies base + adapter to ``x [..., in]``; returns ``[..., out]``.

        Args:
          x: inputs.
          rng: dropout key for the adapter input; ``None`` means no LoRA dropout.
          dropout_rate: overrides the configured rate (may be traced).
        """
        y = self.base_call(x)
        return y + self.delta(x, rng=rng, dropout_rate=dropout_rate).astype(y.dtype)

    def merged_kernel(self) -> jax.Array:
        """``W + A @ B * scale`` in the kernel's dtype (summed in float32)."""
        a = self.lora_a[...].astype(jnp.float32)
        b = self.lora_b[...].astype(jnp.float32)
        update = jnp.einsum("...ir,...ro->...io", a, b) * self.scale  # [*lead, in, out]
        w = self.kernel[...]
        return (w.astype(jnp.float32) + update).astype(w.dtype)

    def to_linear(self) -> nnx.Linear:
        """A plain ``nnx.Linear`` with the update folded in (kernel metadata kept)."""
        kwargs = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision, dot_general=self.dot_general,
                      promote_dtype=self.promote_dtype,
                      preferred_element_type=self.preferred_element_type)
        # Built abstractly: its random kernel would be replaced at once, and the stacked kernel's
        # shape differs from the [in, out] that nnx.Linear would allocate anyway.
        with nnx.use_eager_sharding(False):
            linear = nnx.eval_shape(lambda: nnx.Linear(
                self.in_features, self.out_features, rngs=nnx.Rngs(0), **kwargs))
        linear.kernel = self.kernel.replace(self.merged_kernel())
        linear.bias = self.bias.replace(self.bias[...]) if self.use_bias else nnx.data(None)
        return linear
