"""DeiT / ViT in Flax linen, laid out like timm so DeiT weights import by transposes alone.

Params (``variables['params']``)::

    patch_embed/{kernel (p, p, C, D) HWIO, bias}
    cls_token (1, 1, D), pos_embed (1, 1 + num_patches, D)
    blocks_{i}/norm1, blocks_{i}/attn/qkv (D, 3·H·hd), blocks_{i}/attn/proj (H·hd, D),
    blocks_{i}/norm2, blocks_{i}/mlp/fc1 (D, hidden), blocks_{i}/mlp/fc2 (hidden, D)
    norm, head (D, num_classes)

The qkv output layout is [q | k | v] × heads × head_dim, exactly timm's, so head h of a block owns
qkv columns {q, k, v}·[h·hd, (h+1)·hd) and neuron j owns fc1 column j and fc2 row j.

Masks are never Flax variables: ``__call__`` takes the masks pytree explicitly. Weight masks are
not applied here (pruned weights are exactly 0 in params, so ``jax.grad`` stays dense, as growth
needs); head and neuron masks, when given, gate the unit outputs so pruned units are silent.

SViTE+ (``keep_tokens``): a ``token_selector`` (see ``token_selector.py``) after the position
embedding keeps ``keep_tokens`` tokens, cls included; with ``layerwise_tokens`` every block's
attention also has one (``blocks_{i}/attn/token_selector``) masking its LayerNorm'd qkv input, as
the official ``*_data`` models. Its random stream is 'gumbel'; ``tau`` is its temperature.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparse_vit_jax.models.token_selector import TokenSelector, scaled_keep

Initializer = Callable[..., jax.Array]

# Names of the intermediate values the structured scores are computed from.
HEAD_OUTPUTS = 'head_outputs'


def _per_layer(value: int | Sequence[int], depth: int, what: str) -> tuple[int, ...]:
    values = (value,) * depth if isinstance(value, int) else tuple(value)
    if len(values) != depth or any(v < 1 for v in values):
        raise ValueError(f'{what} must be a positive int or {depth} positive ints, got {value!r}')
    return values


def _torch_conv_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default Conv2d bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in**-0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def initializers(scheme: str) -> dict[str, Initializer]:
    """Initializers by role. 'timm' reproduces the official DeiT init; 'xavier' suits small data."""
    if scheme == 'timm':
        # timm's trunc_normal_(std=.02) truncates at ±2 in absolute units, i.e. ±100σ: a plain normal.
        normal = nn.initializers.truncated_normal(stddev=0.02, lower=-100.0, upper=100.0)
        return dict(
            dense=normal,
            embedding=normal,
            # The patch conv keeps PyTorch's default kaiming_uniform(a=√5) = U(±1/sqrt(fan_in)).
            conv=nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform'),
        )
    if scheme == 'xavier':
        return dict(
            dense=nn.initializers.xavier_uniform(),
            embedding=nn.initializers.normal(stddev=0.02),
            conv=nn.initializers.lecun_normal(),
        )
    raise ValueError(f"init must be 'timm' or 'xavier', got {scheme!r}")


def layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
    """timm's LayerNorm (eps 1e-6). The two-pass variance keeps precision when token means are
    large next to their spread (E[x²] − E[x]² loses it; logits drift ~1e-4 relative)."""
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name=name, dtype=dtype)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample (rng stream 'dropout')."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        kept = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
        return jnp.where(kept, x / keep, 0.0).astype(x.dtype)


@jax.custom_vjp
def exact_gelu(x: jax.Array) -> jax.Array:
    """GELU with the exact Gaussian CDF, x·Φ(x), in the erf form timm's (PyTorch's) uses:
    XLA CPU evaluates erf ~2.5× faster than the erfc of ``jax.nn.gelu(approximate=False)``,
    and the two agree to ~1e-6.

    Its derivative Φ(x) + x·φ(x) is written out (`_gelu_backward`) rather than left to
    autodiff, which differentiates through the erf and keeps more intermediates: 1.26× faster
    GELU forward + backward on the CPU, same gradients to float32 rounding
    (docs/benchmarks.md).
    """
    return _gelu(x)


def _gelu(x: jax.Array) -> jax.Array:
    return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0**-0.5)).astype(x.dtype))


def _gelu_backward(x: jax.Array, grad: jax.Array) -> tuple[jax.Array]:
    """∂GELU/∂x = Φ(x) + x·φ(x), in float32 whatever the compute dtype."""
    x32 = x.astype(jnp.float32)
    cdf = 0.5 * (1.0 + jax.lax.erf(x32 * (2.0**-0.5)))
    pdf = jnp.exp(-0.5 * x32 * x32) * (2.0 * jnp.pi) ** -0.5
    return ((grad.astype(jnp.float32) * (cdf + x32 * pdf)).astype(grad.dtype),)


exact_gelu.defvjp(lambda x: (_gelu(x), x), _gelu_backward)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None
) -> jax.Array:
    """Scaled dot-product softmax attention of heads-major (B, H, N, hd) q, k, v.

    key_mask (B, N), optional: each key's attention weight is multiplied by it before the
    normalization ('mask' token mode: 0 leaves a key out exactly, and its gradient says what
    attending to it would do).

    The result of ``jax.nn.dot_product_attention``, computed the way XLA CPU runs fastest:
    heads-major batched einsums, and the softmax normalization applied to the (N × hd) output
    rather than the (N × N) weights — 2–4× faster attention on CPU (docs/benchmarks.md). Logits,
    exponentials and their sums stay float32 under bfloat16 compute, as in the jax function.
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum('bhqd,bhkd->bhqk', q * scale, k, preferred_element_type=jnp.float32)
    # Subtracting the row max only guards exp against overflow; its gradient is exactly zero.
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    if key_mask is not None:
        weights = weights * key_mask[:, None, None, :].astype(weights.dtype)
    out = jnp.einsum(
        'bhqk,bhkd->bhqd', weights.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return (out / weights.sum(axis=-1, keepdims=True)).astype(v.dtype)


class HeadsMajorQkv(nn.Module):
    """timm's fused qkv projection, returning q, k, v each heads-major (B, H, N, hd).

    Its params are exactly ``nn.Dense(3·H·hd)``'s — 'kernel' (D, 3·H·hd) with columns
    [q | k | v] × heads × hd, and 'bias' — so checkpoints, timm weights, masks and the slim
    export see the one (D, 3·D) matrix; only the computation views the kernel as (D, 3, H, hd),
    in one einsum whose result is (3, B, H, N, hd). The function is Dense + reshape +
    transpose; what differs is the backward XLA CPU compiles: the q, k and v cotangents go into
    one (3, B, H, N, hd) buffer, where slicing Dense's reshaped output had it write three
    zero-padded buffers of that size and add them (attention forward + backward 1.1–1.2×
    faster, docs/benchmarks.md).
    """

    num_heads: int
    head_dim: int
    kernel_init: Initializer
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        dim, heads, width = x.shape[-1], self.num_heads, self.head_dim
        features = 3 * heads * width
        kernel = self.param('kernel', self.kernel_init, (dim, features), jnp.float32)
        bias = self.param('bias', nn.initializers.zeros_init(), (features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        qkv = jnp.einsum('bnd,dshe->sbhne', x, kernel.reshape(dim, 3, heads, width))
        qkv = qkv + bias.reshape(3, 1, heads, 1, width)
        return qkv[0], qkv[1], qkv[2]


class Attention(nn.Module):
    """Multi-head self-attention with timm's fused qkv and an optional per-head gate.

    token_keep > 0 adds the layer-wise token selector of the official `*_data` models: it zeroes
    all but `token_keep` tokens of the qkv input only (the residual stream keeps every token, so
    this selector always masks, whatever the input-level mode), with its own Gumbel noise.
    """

    num_heads: int
    head_dim: int
    out_dim: int
    kernel_init: Initializer
    dtype: Any = jnp.float32
    token_keep: int = 0
    token_eval: str = 'topk'

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        head_mask: jax.Array | None = None,
        *,
        train: bool = False,
        tau: float | jax.Array = 1.0,
        key_mask: jax.Array | None = None,
    ) -> jax.Array:
        if self.token_keep:
            x = TokenSelector(
                keep=self.token_keep,
                mode='zero',
                eval_mode=self.token_eval,
                kernel_init=self.kernel_init,
                dtype=self.dtype,
                name='token_selector',
            )(x, train=train, tau=tau)
        batch, tokens, _ = x.shape
        inner = self.num_heads * self.head_dim
        q, k, v = HeadsMajorQkv(
            self.num_heads, self.head_dim, self.kernel_init, self.dtype, name='qkv'
        )(x)
        heads = attention(q, k, v, key_mask).transpose(0, 2, 1, 3)  # (B, N, H, hd)
        if head_mask is not None:
            heads = jnp.where(head_mask[:, None], heads, 0.0).astype(heads.dtype)
        # ∂L/∂(head outputs) and the outputs themselves give the S²ViTE head scores; both are
        # no-ops unless the caller passes 'perturbations' and makes 'intermediates' mutable.
        heads = self.perturb(HEAD_OUTPUTS, heads)
        self.sow('intermediates', HEAD_OUTPUTS, heads)
        proj = nn.Dense(self.out_dim, name='proj', dtype=self.dtype, kernel_init=self.kernel_init)
        return proj(heads.reshape(batch, tokens, inner))


class Mlp(nn.Module):
    """fc1 → exact GELU → (neuron gate) → fc2.

    The gate is a bool mask, or float gates (0/1 values) when the caller wants the loss
    gradient at each gate (improved S²ViTE growth scores, computed in float32:
    ∂L/∂gate_j = Σ h_j · ∂L/∂(gated h_j)).
    """

    hidden_dim: int
    out_dim: int
    kernel_init: Initializer
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, neuron_mask: jax.Array | None = None) -> jax.Array:
        h = nn.Dense(self.hidden_dim, name='fc1', dtype=self.dtype, kernel_init=self.kernel_init)(x)
        h = exact_gelu(h)
        if neuron_mask is not None and neuron_mask.dtype == jnp.bool_:
            h = jnp.where(neuron_mask, h, 0.0).astype(h.dtype)
        elif neuron_mask is not None:
            h = (h.astype(jnp.float32) * neuron_mask.astype(jnp.float32)).astype(h.dtype)
        return nn.Dense(self.out_dim, name='fc2', dtype=self.dtype, kernel_init=self.kernel_init)(h)


class Block(nn.Module):
    """Pre-LN transformer block."""

    num_heads: int
    head_dim: int
    mlp_dim: int
    drop_path: float
    kernel_init: Initializer
    dtype: Any = jnp.float32
    token_keep: int = 0  # layer-wise token selection (see Attention)
    token_eval: str = 'topk'

    # Positional (not keyword-only) so that `remat_block` can mark `train` static.
    @nn.compact
    def __call__(
        self, x, head_mask=None, neuron_mask=None, train=False, tau=1.0, key_mask=None
    ):
        dim = x.shape[-1]
        norm = lambda name: layer_norm(name, self.dtype)
        drop_path = DropPath(self.drop_path)
        attn = Attention(
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            out_dim=dim,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            token_keep=self.token_keep,
            token_eval=self.token_eval,
            name='attn',
        )
        attended = attn(norm('norm1')(x), head_mask, train=train, tau=tau, key_mask=key_mask)
        x = x + drop_path(attended, train)
        mlp = Mlp(
            hidden_dim=self.mlp_dim,
            out_dim=dim,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            name='mlp',
        )
        return x + drop_path(mlp(norm('norm2')(x), neuron_mask), train)


# What a rematerialized block keeps for the backward pass (`VisionTransformer.remat`).
REMAT_POLICIES = {
    # Nothing inside the block: only its input is stored, the forward runs twice.
    'block': jax.checkpoint_policies.nothing_saveable,
    # The outputs of the four linear layers (qkv, proj, fc1, fc2); the norms, GELU and the
    # attention (whose B·H·N² weights are the largest activation) are recomputed.
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
REMAT_CHOICES = ('none', *REMAT_POLICIES)


def remat_block(remat: str) -> type[nn.Module]:
    """`Block`, or `Block` rematerialized with one of `REMAT_POLICIES`: the same function and
    gradients, fewer activations held between the forward and the backward pass."""
    if remat == 'none':
        return Block
    if remat not in REMAT_POLICIES:
        raise ValueError(f'remat must be one of {REMAT_CHOICES}, got {remat!r}')
    # static_argnums counts `self`: (self, x, head_mask, neuron_mask, train, tau, key_mask).
    return nn.remat(Block, static_argnums=(4,), policy=REMAT_POLICIES[remat])


class VisionTransformer(nn.Module):
    """DeiT/ViT with class-token pooling; per-layer head counts and MLP widths may differ.

    Attributes:
      num_heads: heads per block (int or one int per block, for slim models).
      head_dim: width of one head; defaults to embed_dim // max(num_heads).
      mlp_dim: hidden width per block (int or one int per block).
      dtype: compute dtype (bfloat16 on TPU/GPU); params are always float32.
      remat: 'none', or recompute each block's activations in the backward pass to save
        memory: 'block' (keep only block inputs) or 'dots' (keep the linear layers' outputs);
        see `REMAT_POLICIES`. Never changes values or gradients.
      keep_tokens: SViTE+ token selection: tokens kept, cls included (None or 0: off).
      token_mode: 'drop' (gather the kept tokens), 'zero' (reference: zero the others) or 'mask'
        (train with the others masked out of attention, evaluate as 'drop'; token_selector.py).
      token_eval: 'topk' (deterministic) or 'gumbel' (reference: fresh noise at tau = 1).
      layerwise_tokens: also a selector in every block (official `*_data` models); each keeps
        the input-level fraction keep_tokens / (1 + num_patches) of the tokens it sees.
    """

    num_classes: int = 1000
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int | Sequence[int] = 3
    head_dim: int | None = None
    mlp_dim: int | Sequence[int] = 768
    drop_path_rate: float = 0.0
    init_scheme: str = 'timm'
    dtype: Any = jnp.float32
    keep_tokens: int | None = None
    token_mode: str = 'drop'
    token_eval: str = 'topk'
    layerwise_tokens: bool = False
    remat: str = 'none'

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def heads_per_layer(self) -> tuple[int, ...]:
        return _per_layer(self.num_heads, self.depth, 'num_heads')

    @property
    def mlp_per_layer(self) -> tuple[int, ...]:
        return _per_layer(self.mlp_dim, self.depth, 'mlp_dim')

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.embed_dim // max(self.heads_per_layer)

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        masks: Mapping[str, Any] | None = None,
        train: bool = False,
        tau: float | jax.Array = 1.0,
    ) -> jax.Array:
        """images: (B, H, W, C) normalized float; masks: {'weights', 'heads', 'neurons'} or None;
        tau: the token selector's Gumbel temperature (training only).

        Returns logits (B, num_classes) in float32.
        """
        if images.shape[1] != self.image_size or images.shape[2] != self.image_size:
            raise ValueError(
                f'expected {self.image_size}x{self.image_size} images, got {images.shape}'
            )
        masks = masks or {}
        head_masks, neuron_masks = masks.get('heads'), masks.get('neurons')
        inits = initializers(self.init_scheme)
        p = self.patch_size
        fan_in = p * p * images.shape[-1]
        x = nn.Conv(
            self.embed_dim,
            (p, p),
            strides=(p, p),
            padding='VALID',
            name='patch_embed',
            dtype=self.dtype,
            kernel_init=inits['conv'],
            bias_init=_torch_conv_bias_init(fan_in)
            if self.init_scheme == 'timm'
            else nn.initializers.zeros,
        )(images.astype(self.dtype))
        batch = x.shape[0]
        x = x.reshape(batch, -1, self.embed_dim)
        cls = self.param('cls_token', inits['embedding'], (1, 1, self.embed_dim))
        pos = self.param('pos_embed', inits['embedding'], (1, 1 + self.num_patches, self.embed_dim))
        x = jnp.concatenate(
            [jnp.broadcast_to(cls, (batch, 1, self.embed_dim)).astype(x.dtype), x], 1
        )
        x = x + pos.astype(x.dtype)
        tokens = x.shape[1]
        if self.layerwise_tokens and not self.keep_tokens:
            raise ValueError('layerwise_tokens needs keep_tokens (the input-level selector)')
        if self.layerwise_tokens and self.token_mode == 'mask':
            raise ValueError("token_mode 'mask' does not combine with layerwise_tokens")
        key_mask = None
        if self.keep_tokens:
            selector = TokenSelector(
                keep=self.keep_tokens,
                mode=self.token_mode,
                eval_mode=self.token_eval,
                kernel_init=inits['dense'],
                dtype=self.dtype,
                name='token_selector',
            )
            if self.token_mode == 'mask' and train:
                key_mask = selector.select(x, train=train, tau=tau)[1]
            else:
                x = selector(x, train=train, tau=tau)
        block_keep = 0
        if self.layerwise_tokens:
            block_keep = scaled_keep(self.keep_tokens, tokens, x.shape[1])

        rates = [self.drop_path_rate * i / max(self.depth - 1, 1) for i in range(self.depth)]
        block_cls = remat_block(self.remat)
        for i, (heads, hidden) in enumerate(zip(self.heads_per_layer, self.mlp_per_layer)):
            # The call's arguments stay positional: remat marks `train` static by position.
            x = block_cls(
                num_heads=heads,
                head_dim=self.resolved_head_dim,
                mlp_dim=hidden,
                drop_path=rates[i],
                kernel_init=inits['dense'],
                dtype=self.dtype,
                token_keep=block_keep,
                token_eval=self.token_eval,
                name=f'blocks_{i}',
            )(
                x,
                None if head_masks is None else head_masks[i],
                None if neuron_masks is None else neuron_masks[i],
                train,
                tau,
                key_mask,
            )
        x = layer_norm('norm', self.dtype)(x)
        logits = nn.Dense(
            self.num_classes, name='head', dtype=self.dtype, kernel_init=inits['dense']
        )(x[:, 0])
        return logits.astype(jnp.float32)
