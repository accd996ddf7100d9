"""SViTE+ learnable token selector: Gumbel top-k sampling with a straight-through estimator.

The official selector (docs/reference.md §4.1) is a ``Linear(D, 1)`` scorer over every token
(class token included) followed by::

    logits = log_softmax(s); soft = softmax((logits + g) / tau), g ~ Gumbel(0, 1)
    hard = one-hot of top-k(soft); mask = hard - stop_gradient(soft) + soft   # straight-through
    mask[:, 0] = 1                                                             # cls always kept

so the forward value is the hard 0/1 selection and the gradient is that of the soft relaxation.

Where we differ, and why:

* **Exactly k tokens.** The official top-k runs over all tokens and then forces cls on, so k + 1
  tokens survive whenever cls is not among the top k. Here cls is always kept and the other k − 1
  are the top k − 1 *patch* tokens, so ``keep`` tokens survive, cls included: a static count,
  hence static shapes under ``jit`` in 'drop' mode. When cls is in the official top k both agree.
* **Ranking.** Tokens are ranked by ``logits + g``. softmax((·)/tau) is monotone, so this is the
  official order, but it has no ties where small tau underflows soft values to 0, and tau cannot
  change the selection (it only scales the straight-through gradient, as in the reference).
* **'drop' mode** (the default) gathers the kept tokens instead of zeroing the others: cls first,
  then the kept patches in their original order (ascending index), so that at k = N the gather is
  the identity and 'drop' equals 'zero' exactly. The gathered tokens are still multiplied by their
  (forward value 1) mask entries, so the straight-through gradient reaches the scorer. 'zero' mode
  is the reference: the sequence keeps its length and unselected tokens become zero vectors, which
  after LayerNorm still act as keys and values; hence for k < N the two modes give different
  outputs (the selection itself is identical). The gradients differ too: in 'zero' mode a dropped
  token's mask entry (value 0) still carries ∂L/∂m_i · ∂soft_i, the signal that including it
  would help; 'drop' mode cannot compute ∂L/∂m_i for tokens it no longer carries, so only the
  kept tokens' entries reach the scorer (the softmax still couples every score).
* **'mask' mode** trains with 'drop' mode's function and 'zero' mode's gradient signal: the
  sequence keeps every token, but the unselected ones are masked out of every attention as keys
  (their attention weight is multiplied by the mask entry, 0 forward), so cls and the kept tokens
  compute exactly what 'drop' computes (a dropped token reaches nothing else: LayerNorm and the
  MLP are per token, and only cls is read out), while ∂L/∂m_i still says what attending to a
  dropped token would do. Evaluation gathers the kept tokens ('drop', the same outputs, less
  work). Training costs what 'zero' costs. The model wires it (`VisionTransformer`); it does not
  combine with layer-wise selectors.
* **Evaluation.** ``eval_mode='topk'`` (improved) takes the deterministic top-k of the scores;
  ``'gumbel'`` (reference) draws fresh Gumbel noise at tau = 1.

The kept token indices (B, k), cls first, are sown into the ``'token_selection'`` collection under
``'kept'`` (a no-op unless the caller makes that collection mutable; see ``kept_patches``).
Params live under a module named ``token_selector``, which the sparsifier never prunes.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

MODES = ('drop', 'zero', 'mask')
EVAL_MODES = ('topk', 'gumbel')
# The collection and name under which every selector sows its kept token indices.
SELECTION = 'token_selection'
KEPT = 'kept'


def gumbel_top_k(
    scores: jax.Array, noise: jax.Array, keep: int, tau: float | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Kept token indices and the straight-through mask of one selection.

    Args:
      scores: (B, N) scorer outputs, class token at index 0.
      noise: (B, N) Gumbel noise; zeros give the deterministic top-k of the scores.
      keep: tokens to keep, class token included (1 <= keep <= N).
      tau: softmax temperature of the relaxation; scales the gradient, never the selection.

    Returns:
      indices: (B, keep) int32, 0 (cls) first, then the kept patches in ascending order.
      mask: (B, N) float32 with forward value 1 on kept tokens and 0 elsewhere, and the gradient
        of softmax((log_softmax(scores) + noise) / tau) on the patch tokens (none on cls).
    """
    batch, tokens = scores.shape
    if not 1 <= keep <= tokens:
        raise ValueError(f'keep must be between 1 and the {tokens} tokens, got {keep}')
    perturbed = jax.nn.log_softmax(scores.astype(jnp.float32), axis=-1) + noise
    soft = jax.nn.softmax(perturbed / tau, axis=-1)
    _, top = jax.lax.top_k(jax.lax.stop_gradient(perturbed[:, 1:]), keep - 1)
    indices = jnp.concatenate(
        [jnp.zeros((batch, 1), jnp.int32), jnp.sort(top.astype(jnp.int32) + 1, axis=-1)], axis=-1
    )
    hard = jnp.zeros_like(soft).at[jnp.arange(batch)[:, None], indices].set(1.0)
    mask = hard - jax.lax.stop_gradient(soft) + soft
    return indices, mask.at[:, 0].set(1.0)  # cls: always kept, no gradient (as the reference)


def apply_selection(x: jax.Array, indices: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
    """Tokens x (B, N, D) after a selection: 'zero' masks them (B, N, D), 'drop' gathers the kept
    ones and scales them by their mask entries (B, k, D) so the gradient still flows. 'mask'
    gathers as 'drop' does (its training path lives in the model, see the module doc)."""
    if mode == 'zero':
        return x * mask[..., None].astype(x.dtype)
    if mode in ('drop', 'mask'):
        kept = jnp.take_along_axis(x, indices[..., None], axis=1)
        weights = jnp.take_along_axis(mask, indices, axis=1)
        return kept * weights[..., None].astype(x.dtype)
    raise ValueError(f'token mode must be one of {MODES}, got {mode!r}')


def scaled_keep(keep: int, tokens: int, sequence: int) -> int:
    """Tokens a layer-wise selector keeps of a `sequence`-long input: the input-level fraction
    keep / tokens of it (so exactly `keep` when the sequence has its full length, as the
    reference's `*_data` models, whose sequence never shrinks), at least 1."""
    return max(1, min(sequence, round(keep * sequence / tokens)))


class TokenSelector(nn.Module):
    """Scores tokens with a Dense(1) and keeps `keep` of them (cls always), see the module doc.

    Attributes:
      keep: tokens kept, class token included.
      mode: 'drop' (gather the kept tokens; the sequence becomes `keep` long), 'zero'
        (reference), or 'mask' (gathered as 'drop'; the model calls `select` to train it).
      eval_mode: 'topk' (deterministic) or 'gumbel' (reference: fresh noise at tau = 1).
    """

    keep: int
    mode: str = 'drop'
    eval_mode: str = 'topk'
    kernel_init: Initializer = nn.initializers.normal(stddev=0.02)
    dtype: Any = jnp.float32

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        tau: float | jax.Array = 1.0,
        noise: jax.Array | None = None,
    ) -> jax.Array:
        """x: (B, N, D) tokens, cls first. Random stream 'gumbel' (training, or eval 'gumbel').

        Args:
          tau: training temperature; evaluation always uses 1 (the reference's choice).
          noise: (B, N) Gumbel noise to use instead of a draw (tests, replaying a selection).
        """
        indices, mask = self.select(x, train=train, tau=tau, noise=noise)
        return apply_selection(x, indices, mask, self.mode)

    @nn.compact
    def select(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        tau: float | jax.Array = 1.0,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """The selection alone: kept indices (B, k) and the straight-through mask (B, N)."""
        if self.mode not in MODES or self.eval_mode not in EVAL_MODES:
            raise ValueError(
                f'TokenSelector needs mode in {MODES} and eval_mode in {EVAL_MODES}, got '
                f'{self.mode!r} and {self.eval_mode!r}'
            )
        scores = nn.Dense(1, name='scorer', dtype=self.dtype, kernel_init=self.kernel_init)(x)
        scores = scores[..., 0].astype(jnp.float32)
        if noise is None:
            noise = self._noise(scores.shape, train)
        indices, mask = gumbel_top_k(scores, noise, self.keep, tau if train else 1.0)
        self.sow(SELECTION, KEPT, indices)
        return indices, mask

    def _noise(self, shape: tuple[int, ...], train: bool) -> jax.Array:
        if train or self.eval_mode == 'gumbel':
            return jax.random.gumbel(self.make_rng('gumbel'), shape, jnp.float32)
        return jnp.zeros(shape, jnp.float32)


def kept_patches(
    model: nn.Module,
    params: Any,
    images: jax.Array,
    *,
    masks: Any = None,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Which patches the input-level selector keeps at evaluation: bool (B, num_patches), patches
    in raster order (the class token is always kept and not included).

    `rng` is the noise key for eval_mode 'gumbel' (a fixed key when None); 'topk' ignores it.
    """
    if not getattr(model, 'keep_tokens', None):
        raise ValueError('the model has no token selector (keep_tokens is not set)')
    rng = jax.random.key(0) if rng is None else rng

    @jax.jit  # one compiled forward instead of op-by-op dispatch
    def kept(params, images, masks, rng):
        _, state = model.apply(
            {'params': params},
            images,
            masks=masks,
            train=False,
            rngs={'gumbel': rng},
            mutable=[SELECTION],
        )
        indices = state[SELECTION]['token_selector'][KEPT][0]
        batch = indices.shape[0]
        selected = jnp.zeros((batch, 1 + model.num_patches), bool)
        return selected.at[jnp.arange(batch)[:, None], indices].set(True)[:, 1:]

    return kept(params, images, masks, rng)
