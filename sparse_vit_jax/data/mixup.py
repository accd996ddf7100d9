"""Mixup / CutMix on device, with timm 0.3.2 `Mixup(mode='batch')` semantics.

Per batch (not per sample):

* with probability `prob` the batch is mixed, otherwise lam = 1 (only label
  smoothing applies);
* when both alphas are > 0, CutMix is chosen with probability
  `switch_prob`, else Mixup; lam ~ Beta(alpha, alpha) of the chosen method;
* Mixup: images = lam * x + (1 - lam) * flip(x), where flip reverses the
  batch (sample i is paired with sample B - 1 - i);
* CutMix: cut_h = int(H * sqrt(1 - lam)), cut_w = int(W * sqrt(1 - lam)); a
  centre (cy, cx) uniform over the image; the box [cy - cut_h // 2,
  cy + cut_h // 2) x [cx - cut_w // 2, cx + cut_w // 2), clipped to the
  image, is pasted from flip(x); lam is then corrected to
  1 - box area / (H * W) (`correct_lam=True`);
* targets = lam * smooth(y) + (1 - lam) * smooth(flip(y)) with
  off = smoothing / num_classes and on = 1 - smoothing + off.

Everything is traced (no Python branching on random values) and shapes are
static, so `mixup_cutmix` runs inside a jitted, sharded train step. Under a
data-parallel sharding the batch flip pairs samples across devices (XLA adds
the collective); timm under DDP flips each process's local batch instead,
which pairs different samples but has the same distribution.
"""

import jax
import jax.numpy as jnp


def smooth_labels(labels, num_classes, smoothing=0.1, dtype=jnp.float32):
    """timm one-hot with label smoothing: off = s / C, on = 1 - s + off."""
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=dtype)
    return one_hot * (on_value - off_value) + off_value


def cutmix_box(rng, lam, height, width):
    """timm `rand_bbox`: (top, bottom, left, right) of the box for `lam`."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    rng_y, rng_x = jax.random.split(rng)
    center_y = jax.random.randint(rng_y, (), 0, height)
    center_x = jax.random.randint(rng_x, (), 0, width)
    top = jnp.clip(center_y - cut_h // 2, 0, height)
    bottom = jnp.clip(center_y + cut_h // 2, 0, height)
    left = jnp.clip(center_x - cut_w // 2, 0, width)
    right = jnp.clip(center_x + cut_w // 2, 0, width)
    return top, bottom, left, right


def box_mask(box, height, width):
    """Boolean [H, W] mask of a (top, bottom, left, right) box, via iota."""
    top, bottom, left, right = box
    rows = jax.lax.broadcasted_iota(jnp.int32, (height, width), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (height, width), 1)
    return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def mix_batch(images, lam, use_cutmix, box):
    """Applies Mixup (weight `lam`) or pastes `box` from the flipped batch.

    Returns (mixed images, effective lam): for CutMix lam becomes
    1 - box area / image area, as timm's `correct_lam=True` does.
    """
    height, width = images.shape[1], images.shape[2]
    flipped = images[::-1]
    mask = box_mask(box, height, width)
    top, bottom, left, right = box
    box_lam = 1.0 - ((bottom - top) * (right - left)).astype(jnp.float32) / (height * width)
    lam = jnp.where(use_cutmix, box_lam, lam)
    weight = lam.astype(images.dtype)
    blended = images * weight + flipped * (1 - weight)
    pasted = jnp.where(mask[None, :, :, None], flipped, images)
    return jnp.where(use_cutmix, pasted, blended), lam


def sample_mix_params(rng, *, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5):
    """timm `_params_per_batch`: (lam, use_cutmix) for one batch.

    The method is fixed when only one alpha is positive; with both, CutMix is
    chosen with probability `switch_prob`. When the batch is not mixed
    (probability 1 - prob, or both alphas 0) lam is 1 and use_cutmix False.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return jnp.float32(1.0), jnp.bool_(False)
    rng_apply, rng_switch, rng_mixup, rng_cutmix = jax.random.split(rng, 4)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(rng_switch) < switch_prob
        lam = jnp.where(
            use_cutmix,
            jax.random.beta(rng_cutmix, cutmix_alpha, cutmix_alpha),
            jax.random.beta(rng_mixup, mixup_alpha, mixup_alpha),
        )
    elif cutmix_alpha > 0:
        use_cutmix = jnp.bool_(True)
        lam = jax.random.beta(rng_cutmix, cutmix_alpha, cutmix_alpha)
    else:
        use_cutmix = jnp.bool_(False)
        lam = jax.random.beta(rng_mixup, mixup_alpha, mixup_alpha)
    applied = jax.random.uniform(rng_apply) < prob
    return (jnp.where(applied, lam, 1.0).astype(jnp.float32), use_cutmix & applied)


def mixup_cutmix(
    rng,
    images,
    labels,
    num_classes,
    *,
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    prob=1.0,
    switch_prob=0.5,
    label_smoothing=0.1,
    lam=None,
    use_cutmix=None,
):
    """timm `Mixup(mode='batch', correct_lam=True)` for a NHWC batch.

    Args:
      rng: a JAX PRNG key.
      images: float [B, H, W, C]; B must be even (as timm asserts).
      labels: int [B].
      num_classes: number of classes of the soft targets.
      mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing: timm's
        Mixup arguments (DeiT: 0.8, 1.0, 1.0, 0.5, 0.1).
      lam, use_cutmix: override the sampled lam / method (for tests and
        analysis); the CutMix box is still sampled from `rng`.

    Returns:
      (mixed images, soft targets float32 [B, num_classes]). The targets use
      the sampled lam for Mixup and the box-corrected lam for CutMix.
    """
    if images.ndim != 4:
        raise ValueError(f'images must be [B, H, W, C], got shape {images.shape}')
    if images.shape[0] % 2:
        raise ValueError(f'batch size must be even for batch mixing, got {images.shape[0]}')
    rng_params, rng_box = jax.random.split(rng)
    sampled_lam, sampled_cutmix = sample_mix_params(
        rng_params,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=switch_prob,
    )
    lam = sampled_lam if lam is None else jnp.asarray(lam, jnp.float32)
    use_cutmix = sampled_cutmix if use_cutmix is None else jnp.asarray(use_cutmix, jnp.bool_)
    box = cutmix_box(rng_box, lam, images.shape[1], images.shape[2])
    mixed, lam = mix_batch(images, lam, use_cutmix, box)
    targets = smooth_labels(labels, num_classes, label_smoothing)
    targets = lam * targets + (1.0 - lam) * targets[::-1]
    return mixed, targets
