"""The TFDS pipeline: deterministic, resumable training streams; padded eval counts once."""

import collections

import jax
import numpy as np
import pytest

from sparse_vit_jax import data as data_lib
from sparse_vit_jax.data.pipeline import DatasetNotPreparedError, load_builder


def _batches(stream, n):
    return [next(stream) for _ in range(n)]


@pytest.mark.parametrize('cache', [True, False])
def test_training_stream_is_deterministic_and_resumes_at_any_step(tiny_config, cache):
    train, _ = data_lib.make_inputs(tiny_config(**{'data.cache': cache}))
    assert train.steps_per_epoch == 37 // 4
    first = _batches(train.batches(), 20)  # crosses two epoch boundaries
    again = _batches(train.batches(), 20)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a['image'], b['image'])
    for start in (5, 9, 13):  # mid-epoch, epoch boundary, second epoch
        resumed = _batches(train.batches(start), 20 - start)
        for a, b in zip(first[start:], resumed):
            np.testing.assert_array_equal(a['image'], b['image'])
            np.testing.assert_array_equal(a['label'], b['label'])
    # Different epochs are shuffled and augmented differently.
    assert not np.array_equal(first[0]['image'], first[9]['image'])


def test_seed_changes_order_and_augmentation(tiny_config):
    a, _ = data_lib.make_inputs(tiny_config(seed=0))
    b, _ = data_lib.make_inputs(tiny_config(seed=1))
    assert not np.array_equal(next(a.batches())['image'], next(b.batches())['image'])


def test_repeated_augmentation_repeats_each_image_with_different_crops(tiny_config):
    train, _ = data_lib.make_inputs(tiny_config(**{'data.repeats': 3, 'batch_size': 6}))
    batch = next(train.batches())
    labels = batch['label']
    assert list(labels[:3]) == [labels[0]] * 3 and list(labels[3:]) == [labels[3]] * 3
    assert not np.array_equal(batch['image'][0], batch['image'][1])


def test_eval_counts_every_example_exactly_once(tiny_config, tiny_data_dir):
    _, evaluation = data_lib.make_inputs(tiny_config(**{'data.eval_batch_size': 8}))
    batches = list(evaluation.batches())
    assert len(batches) == evaluation.num_batches == 3  # 23 examples, batches of 8
    mask = np.concatenate([b['mask'] for b in batches])
    labels = np.concatenate([b['label'] for b in batches])[mask]
    assert mask.sum() == 23 and len(mask) == 24
    expected = collections.Counter(np.arange(23) % 10)
    assert collections.Counter(labels.tolist()) == expected


@pytest.mark.parametrize('eval_batch, batches, size', [(768, 1, 23), (10, 3, 8), (23, 1, 23)])
def test_eval_batches_pad_no_more_than_the_split_needs(tiny_config, eval_batch, batches, size):
    """23 examples: one batch of 23 instead of 745 padding images at the default-sized 768;
    batches of at most the configured size spread evenly (3 of 8, not 10 + 10 + 3 padded)."""
    _, evaluation = data_lib.make_inputs(tiny_config(**{'data.eval_batch_size': eval_batch}))
    shapes = [b['image'].shape[0] for b in evaluation.batches()]
    assert shapes == [size] * batches and evaluation.num_batches == batches
    assert batches * size - 23 < batches  # under one padding example per batch (1 device)


def test_eval_counts_once_on_eight_devices(tiny_data_dir, run_with_devices):
    out = run_with_devices(f'''
        import jax
        from sparse_vit_jax import data as data_lib, config as config_lib
        from sparse_vit_jax.models import create_model_from_config
        from sparse_vit_jax.train import evaluation, sharding
        c = config_lib.load('configs/fashion_mnist.py')
        c.model = config_lib.model_config('vit_test')
        c.data.update(dict(name='tiny_images', data_dir={tiny_data_dir!r}, eval_batch_size=16,
                           mean=(0.3,) * 3, std=(0.3,) * 3))
        _, ev = data_lib.make_inputs(c)
        mesh = sharding.make_mesh(c.mesh)
        model = create_model_from_config(c.model)
        params = model.init(jax.random.key(0), jax.numpy.zeros((1, 16, 16, 3)))['params']
        from sparse_vit_jax.data.device_input import DeviceInput
        eval_fn = evaluation.make_eval_fn(model, mesh, DeviceInput.from_config(c))
        r = evaluation.evaluate(eval_fn, params, None, ev, mesh)
        print(jax.device_count(), r['num_examples'], ev.num_batches)
    ''')
    assert out.split() == ['8', '23', '2']


def test_batch_that_does_not_divide_the_devices_is_rejected(monkeypatch):
    monkeypatch.setattr(jax, 'device_count', lambda: 8)  # the arithmetic of an 8-chip host
    assert data_lib.local_batch_size(64) == 64
    with pytest.raises(ValueError, match='does not divide evenly over 8 devices'):
        data_lib.local_batch_size(12)


def test_missing_dataset_names_the_command_that_prepares_it(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match='tools/prepare_data.py fashion_mnist'):
        load_builder('fashion_mnist', str(tmp_path))


def test_two_processes_read_disjoint_shares_that_cover_the_split(tiny_config, monkeypatch):
    """What each of two hosts reads (tfds.even_splits by process index): no overlap, nothing
    missing, for both the training stream and the padded eval stream."""
    seen = {'train': [], 'eval': []}
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    for index in (0, 1):
        monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
        train, evaluation = data_lib.make_inputs(tiny_config(**{'data.cache': True}))
        share = train._in_memory  # this process's examples, before shuffling
        seen['train'].append({img.tobytes() for img in np.asarray(share['image'])})
        batches = list(evaluation.batches())
        images = np.concatenate([b['image'][b['mask']] for b in batches])
        seen['eval'].append({img.tobytes() for img in images})
        assert evaluation.num_batches == 3  # ceil(ceil(23 / 2) / (8 / 2)): the same on every host
    for kind, total in (('train', 37), ('eval', 23)):
        first, second = seen[kind]
        assert not first & second and len(first) + len(second) == total, kind


def test_next_epoch_starts_before_the_current_one_ends(tiny_config, monkeypatch):
    """Each epoch's pipeline (file order, shuffle buffer) is built and starts filling
    `next_epoch_lookahead` batches before the previous epoch's last batch is used, so the
    boundary does not stall training; the stream itself is unchanged (test above)."""
    import dataclasses

    from sparse_vit_jax.data import pipeline

    events = []
    build = pipeline.TrainInput._tfds_epoch

    def recording(self, epoch, skip_batches):
        events.append(('build', epoch))
        return build(self, epoch, skip_batches)

    monkeypatch.setattr(pipeline.TrainInput, '_tfds_epoch', recording)
    train, _ = data_lib.make_inputs(tiny_config(**{'data.cache': False}))
    train = dataclasses.replace(train, next_epoch_lookahead=2)
    steps = train.steps_per_epoch
    stream = train.batches(start_step=3)  # resumed mid-epoch
    for step in range(3, 2 * steps + 1):
        next(stream)
        events.append(('used', step))
    built = {event[1]: events.index(event) for event in events if event[0] == 'build'}
    used = {event[1]: events.index(event) for event in events if event[0] == 'used'}
    for epoch in (1, 2):
        end = epoch * steps  # the first step of `epoch`
        assert used[end - 3] < built[epoch] < used[end - 2], events


def test_resuming_mid_epoch_skips_records_without_preprocessing_them(tiny_config):
    """The skipped records of a resumed epoch are read but never decoded or augmented."""
    import dataclasses

    import tensorflow as tf

    train, _ = data_lib.make_inputs(tiny_config(**{'data.cache': False}))
    calls = tf.Variable(0, dtype=tf.int64)

    def counting(features, seed):
        with tf.control_dependencies([calls.assign_add(1)]):
            return train.preprocess(features, seed)

    counted = dataclasses.replace(train, preprocess=counting)
    batches = list(counted._tfds_epoch(0, 5).as_numpy_iterator())
    assert len(batches) == train.steps_per_epoch - 5
    assert int(calls.numpy()) == 37 - 5 * 4  # every record after the skipped ones, no more
