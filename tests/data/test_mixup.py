"""Batch Mixup/CutMix with timm 0.3.2 semantics, eager, jitted and sharded."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_vit_jax.data import mixup

B, H, W, C, K = 4, 8, 10, 3, 5


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(B, H, W, C)), jnp.float32)
    labels = jnp.asarray([0, 1, 2, 4])
    return images, labels


def test_smooth_labels_values():
    targets = mixup.smooth_labels(jnp.asarray([2, 0]), 5, 0.1)
    # off = 0.1 / 5 = 0.02, on = 1 - 0.1 + 0.02 = 0.92
    expected = np.full((2, 5), 0.02)
    expected[0, 2] = expected[1, 0] = 0.92
    np.testing.assert_allclose(targets, expected, rtol=1e-6)
    np.testing.assert_allclose(mixup.smooth_labels(jnp.asarray([1]), 3, 0.0), [[0.0, 1.0, 0.0]])


def test_forced_mixup_lambda_gives_analytic_images_and_targets():
    images, labels = _batch()
    mixed, targets = mixup.mixup_cutmix(
        jax.random.key(0), images, labels, K, lam=0.3, use_cutmix=False
    )
    np.testing.assert_allclose(mixed, 0.3 * images + 0.7 * images[::-1], rtol=1e-5, atol=1e-6)
    # Sample 0 (label 0) is paired with sample 3 (label 4).
    expected0 = np.full(K, 0.02)
    expected0[0] += 0.3 * 0.9
    expected0[4] += 0.7 * 0.9
    np.testing.assert_allclose(targets[0], expected0, rtol=1e-5)
    np.testing.assert_allclose(targets.sum(axis=1), np.ones(B), rtol=1e-6)


@pytest.mark.parametrize('seed', range(4))
def test_forced_cutmix_pastes_flipped_box_and_corrects_lambda(seed):
    images, labels = _batch(seed)
    rng = jax.random.key(seed)
    mixed, targets = mixup.mixup_cutmix(rng, images, labels, K, lam=0.6, use_cutmix=True)
    mixed = np.asarray(mixed)
    from_partner = (mixed == np.asarray(images[::-1])).all(axis=(0, 3))
    unchanged = (mixed == np.asarray(images)).all(axis=(0, 3))
    assert (from_partner ^ unchanged).all()  # every pixel is one or the other
    box = from_partner
    area = box.sum()
    if area:
        rows = np.flatnonzero(box.any(axis=1))
        cols = np.flatnonzero(box.any(axis=0))
        assert area == len(rows) * len(cols)  # a solid rectangle
        # Unclipped size: 2 * (int(H * sqrt(0.4)) // 2) = 4 rows, 6 columns.
        assert len(rows) <= 4 and len(cols) <= 6
    lam = 1.0 - area / (H * W)
    on = np.asarray(mixup.smooth_labels(labels, K, 0.1))
    np.testing.assert_allclose(targets, lam * on + (1 - lam) * on[::-1], rtol=1e-5, atol=1e-7)


def test_cutmix_box_matches_timm_rand_bbox_arithmetic():
    # lam = 0.75: sqrt(1 - lam) = 0.5, cut_h = int(8 * .5) = 4, cut_w =
    # int(10 * .5) = 5; timm spans centre -/+ cut // 2, so an unclipped box is
    # 4 x 4 (not 4 x 5), and clipping only shrinks it.
    boxes = jax.jit(jax.vmap(lambda k: jnp.stack(mixup.cutmix_box(k, jnp.float32(0.75), H, W))))(
        jax.random.split(jax.random.key(0), 200)
    )
    top, bottom, left, right = np.asarray(boxes).T
    assert ((0 <= top) & (top <= bottom) & (bottom <= H)).all()
    assert ((0 <= left) & (left <= right) & (right <= W)).all()
    inside_rows = (top > 0) & (bottom < H)
    inside_cols = (left > 0) & (right < W)
    assert inside_rows.any() and inside_cols.any()
    assert (bottom - top)[inside_rows].tolist() == [4] * inside_rows.sum()
    assert (right - left)[inside_cols].tolist() == [4] * inside_cols.sum()
    assert ((bottom - top) <= 4).all() and ((right - left) <= 4).all()


def test_prob_zero_is_identity_plus_smoothing():
    images, labels = _batch()
    mixed, targets = mixup.mixup_cutmix(jax.random.key(1), images, labels, K, prob=0.0)
    np.testing.assert_array_equal(mixed, images)
    np.testing.assert_allclose(targets, mixup.smooth_labels(labels, K, 0.1), rtol=1e-6)


def test_sampled_method_and_lambda_statistics():
    keys = jax.random.split(jax.random.key(3), 4000)
    lam, use_cutmix = jax.jit(jax.vmap(lambda k: mixup.sample_mix_params(k, prob=0.5)))(keys)
    lam, use_cutmix = np.asarray(lam), np.asarray(use_cutmix)
    skipped = lam == 1.0
    assert 0.45 < skipped.mean() < 0.55  # prob = 0.5
    assert not use_cutmix[skipped].any()
    assert 0.45 < use_cutmix[~skipped].mean() < 0.55  # switch_prob = 0.5
    # Beta(0.8, 0.8) and Beta(1, 1) both have mean 0.5.
    assert 0.47 < lam[~skipped].mean() < 0.53


def test_jit_equals_eager_and_rejects_odd_batches():
    images, labels = _batch()
    fn = lambda rng, x, y: mixup.mixup_cutmix(rng, x, y, K)
    for seed in range(2):
        rng = jax.random.key(seed)
        eager = fn(rng, images, labels)
        jitted = jax.jit(fn)(rng, images, labels)
        for a, b in zip(eager, jitted):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match='even'):
        mixup.mixup_cutmix(jax.random.key(0), images[:3], labels[:3], K)


_SHARDED_SCRIPT = textwrap.dedent('''
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sparse_vit_jax.data import mixup
    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ('data',))
    batch = NamedSharding(mesh, P('data'))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    step = jax.jit(lambda k, x, y: mixup.mixup_cutmix(k, x, y, 10),
                   in_shardings=(None, batch, batch),
                   out_shardings=(batch, batch))
    reference = jax.jit(lambda k, x, y: mixup.mixup_cutmix(k, x, y, 10))
    for seed in range(4):
        key = jax.random.key(seed)
        x = jax.device_put(images, batch)
        y = jax.device_put(labels, batch)
        got = step(key, x, y)
        want = reference(key, images, labels)
        assert got[0].sharding.is_equivalent_to(batch, 4)
        for a, b in zip(got, want):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                       rtol=1e-6, atol=1e-6)
    print('SHARDED_OK')
''')


def test_works_jitted_on_a_batch_sharded_over_8_cpu_devices():
    repo = pathlib.Path(__file__).resolve().parents[2]
    env = dict(
        os.environ,
        XLA_FLAGS='--xla_force_host_platform_device_count=8',
        JAX_PLATFORMS='cpu',
        PYTHONPATH=f'{repo}{os.pathsep}{os.environ.get("PYTHONPATH", "")}',
    )
    result = subprocess.run(
        [sys.executable, '-c', _SHARDED_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 'SHARDED_OK' in result.stdout, result.stderr[-3000:]
