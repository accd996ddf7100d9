"""TFDS → tf.data → global jax.Arrays, for one process or many.

Every process reads its own slice of a split (``tfds.even_splits``), batches
``global_batch / process_count`` examples, and the slices are assembled into global arrays
sharded over the mesh's data axis.

Training input is a pure function of (seed, epoch, position): each epoch's file order, shuffle
and augmentation seeds derive from (seed, epoch, process index), and augmentation is stateless per
example. A restarted run therefore rebuilds the stream at its step and continues bit for bit.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sparse_vit_jax import paths
from sparse_vit_jax.errors import DatasetNotPreparedError
from sparse_vit_jax.train.sharding import local_batch_size

# TensorFlow only feeds the input pipeline; the accelerators belong to JAX.
tf.config.set_visible_devices([], 'GPU')

Features = Mapping[str, tf.Tensor]
TrainPreprocess = Callable[[Features, tf.Tensor], dict[str, tf.Tensor]]  # (features, seed[2])
EvalPreprocess = Callable[[Features], dict[str, tf.Tensor]]


# Datasets tools/prepare_data.py knows how to prepare, and the flags it needs for each.
PREPARE_FLAGS = {
    'fashion_mnist': '',
    'imagenet2012': ' --manual_dir FOLDER_WITH_THE_ILSVRC2012_TARS',
}


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether TFDS finished preparing the builder's dataset (it writes dataset_info.json last).

    Unlike `builder.is_prepared()`, it does not log TFDS's warning that the version folder of a
    dataset not prepared yet "has no dataset_info.json".
    """
    return paths.resolve(paths.join(builder.data_dir, 'dataset_info.json')).exists()


def prepare_hint(name: str, data_dir: str | None) -> str:
    """The command that prepares `name` where the config reads it ('' if we cannot)."""
    if name not in PREPARE_FLAGS:
        return ''
    flag = f' --data_dir {data_dir}' if data_dir else ''
    command = f'python tools/prepare_data.py {name}{PREPARE_FLAGS[name]}{flag}'
    if name == 'imagenet2012':
        command += (
            '\n(the folder holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from '
            'image-net.org; README "Smoke-test the ImageNet path" tries everything on a tiny '
            'synthetic stand-in first)'
        )
    return f'Prepare it with:\n  {command}'


def load_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of a prepared dataset, or a clear error that says how to prepare it."""
    how = prepare_hint(name, data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:  # not a TFDS name, nothing in data_dir
        where = data_dir or 'the TFDS data dir'
        raise DatasetNotPreparedError(
            f'TFDS dataset {name!r} is not registered and not prepared in {where}. Check '
            'config.data.name and config.data.data_dir.' + (f' {how}' if how else '')
        ) from None
    if not is_prepared(builder):
        raise DatasetNotPreparedError(
            f'TFDS dataset {name!r} is not prepared in {builder.data_dir}. {how}'
        )
    return builder


def process_split(builder: tfds.core.DatasetBuilder, split: str) -> tuple[str, int]:
    """This process's even share of `split` and its number of examples."""
    share = tfds.even_splits(split, n=jax.process_count())[jax.process_index()]
    return share, builder.info.splits[share].num_examples


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.inject_prefetch = False  # keeps host RAM bounded
    return options


def _process_seed(seed: int, *purpose: int) -> int:
    """A 31-bit seed for this process and `purpose` (tf.data seeds are int64; keep them small)."""
    entropy = [seed, jax.process_index(), *purpose]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)


def drop_invalid(
    ds: tf.data.Dataset, is_valid: Callable[[Features], tf.Tensor], counter: tf.Variable
) -> tf.data.Dataset:
    """Drops examples `is_valid` rejects (e.g. corrupt JPEGs) and counts them in `counter`.

    The check runs in a parallel map; only the cheap flag test runs in the (single-threaded)
    filter. Dropping is deterministic, so resumed runs still see the same stream.
    """
    ds = ds.map(lambda f: (f, is_valid(f)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def keep(features, ok):
        with tf.control_dependencies([counter.assign_add(tf.cast(tf.logical_not(ok), tf.int64))]):
            return tf.identity(ok)

    return ds.filter(keep).map(lambda features, ok: features)


class _Started:
    """Iterates a tf.data pipeline whose first element is being fetched in a background thread
    from the moment it is created (tf.data starts its work on the first request)."""

    _executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='epoch')

    def __init__(self, dataset: tf.data.Dataset):
        self._iterator = dataset.as_numpy_iterator()
        self._first = self._executor.submit(next, self._iterator, None)

    def __iter__(self) -> Iterator[Any]:
        first = self._first.result()
        if first is not None:
            yield first
            yield from self._iterator


@dataclasses.dataclass(frozen=True)
class TrainInput:
    """Where a training stream comes from and how it is shaped."""

    builder: tfds.core.DatasetBuilder
    split: str
    preprocess: TrainPreprocess
    global_batch: int
    seed: int
    shuffle_buffer: int = 10_000
    repeats: int = 1  # repeated augmentation (DeiT's RASampler uses 3)
    # Hold the decoded split in host memory (small datasets only): epochs are then stateless
    # permutations instead of re-reading, re-decoding and refilling a shuffle buffer.
    cache: bool = False
    decoders: Mapping[str, Any] | None = None
    is_valid: Callable[[Features], tf.Tensor] | None = None  # e.g. the JPEG structure check
    # The dataset's features -> {'image', 'label'}, what `is_valid` and `preprocess` read.
    select: Callable[[Features], Features] | None = None
    # How many examples `is_valid` dropped (a running total over epochs; not fatal).
    skipped: tf.Variable = dataclasses.field(
        default_factory=lambda: tf.Variable(0, dtype=tf.int64, trainable=False)
    )
    # Batches before an epoch's end at which the next epoch's pipeline starts (see `batches`).
    next_epoch_lookahead: int = 64

    @property
    def local_batch(self) -> int:
        return local_batch_size(self.global_batch)

    @property
    def steps_per_epoch(self) -> int:
        _, examples = process_split(self.builder, self.split)
        steps = examples // self.local_batch
        if steps == 0:
            raise ValueError(
                f'split {self.split!r} has {examples} examples per process, fewer than '
                f'one local batch of {self.local_batch}'
            )
        return steps

    def _examples(self, seed: int) -> tf.data.Dataset:
        """This process's valid examples, files in an order seeded by `seed` (fixed if cached)."""
        share, _ = process_split(self.builder, self.split)
        ds = self.builder.as_dataset(
            split=share,
            shuffle_files=not self.cache,
            decoders=self.decoders,
            read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
        )
        if self.select is not None:
            ds = ds.map(self.select)
        if self.is_valid is not None:
            ds = drop_invalid(ds, self.is_valid, self.skipped)
        return ds

    @functools.cached_property
    def _in_memory(self) -> dict[str, tf.Tensor]:
        """Every valid example of this process's share, decoded, as stacked tensors."""
        chunks = list(tfds.as_numpy(self._examples(seed=0).batch(8192)))
        return {key: tf.constant(np.concatenate([c[key] for c in chunks])) for key in chunks[0]}

    def _epoch_batches(self, ds: tf.data.Dataset, seed: tf.Tensor, skip_batches) -> tf.data.Dataset:
        """One epoch of shuffled examples -> local batches, `skip_batches` in (the shared tail).

        Example i of the epoch is augmented with the stateless seed (seed, i).
        """
        if self.repeats > 1:
            # Every image appears `repeats` times in a row (in the same global batch, as the DeiT
            # sampler spreads copies over the ranks of one step) and the epoch keeps its length.
            _, examples = process_split(self.builder, self.split)
            ds = ds.flat_map(lambda x: tf.data.Dataset.from_tensors(x).repeat(self.repeats))
            ds = ds.take(examples)
        ds = ds.enumerate().skip(tf.cast(skip_batches, tf.int64) * self.local_batch)
        preprocess = self.preprocess

        def example(index, features):
            out = preprocess(features, tf.stack([seed, index]))  # uint8 image[, erase boxes]
            return {**out, 'label': tf.cast(out['label'], tf.int32)}

        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(self.local_batch, drop_remainder=True)

    def _tfds_epoch(self, epoch: int, skip_batches: int) -> tf.data.Dataset:
        """An epoch read from the TFDS files: seeded file order and shuffle buffer."""
        seed = _process_seed(self.seed, 0, epoch)
        ds = self._examples(seed).shuffle(
            self.shuffle_buffer, seed=seed, reshuffle_each_iteration=False
        )
        ds = self._epoch_batches(ds, tf.constant(seed, tf.int64), skip_batches)
        return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())

    def _in_memory_stream(self, start_epoch: int, skip_batches: int) -> tf.data.Dataset:
        """All epochs from `start_epoch` as ONE pipeline over the in-memory split.

        Each epoch is a stateless whole-split permutation keyed by (seed, process, epoch). One
        pipeline for the run matters: building a new tf.data pipeline per epoch while training
        stalls the run for seconds on a busy CPU.
        """
        arrays = self._in_memory
        count = int(next(iter(arrays.values())).shape[0])
        base = _process_seed(self.seed, 1)

        def epoch(e):
            seed = tf.random.stateless_uniform(
                [], tf.stack([tf.constant(base, tf.int64), e]), maxval=2**31 - 1, dtype=tf.int64
            )
            order = tf.random.experimental.stateless_shuffle(
                tf.range(count, dtype=tf.int64), tf.stack([seed, tf.constant(0, tf.int64)])
            )
            ds = tf.data.Dataset.from_tensor_slices(order)
            ds = ds.map(lambda i: {k: tf.gather(v, i) for k, v in arrays.items()})
            return self._epoch_batches(ds, seed, tf.where(e == start_epoch, skip_batches, 0))

        ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch)
        return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())

    def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Local batches forever, starting at global step `start_step`.

        Read from the TFDS files, each epoch is its own pipeline (its file order and shuffle
        are seeded by the epoch); the next one is started `next_epoch_lookahead` batches
        before the current one ends and fetches its first batch in the background, so filling
        its shuffle buffer overlaps training instead of stalling it at the epoch boundary.
        """
        steps = self.steps_per_epoch
        epoch, offset = divmod(start_step, steps)
        if self.cache:
            yield from self._in_memory_stream(epoch, offset).as_numpy_iterator()
        lookahead = min(max(self.next_epoch_lookahead, 1), steps)
        upcoming = _Started(self._tfds_epoch(epoch, offset))
        while True:
            current, upcoming = upcoming, None
            for index, batch in enumerate(current, start=offset):
                if upcoming is None and index >= steps - lookahead:
                    upcoming = _Started(self._tfds_epoch(epoch + 1, 0))
                yield batch
            if upcoming is None:  # an epoch with fewer batches than expected
                upcoming = _Started(self._tfds_epoch(epoch + 1, 0))
            epoch, offset = epoch + 1, 0


@dataclasses.dataclass(frozen=True)
class EvalInput:
    """A padded evaluation stream: every example counted exactly once (``mask`` marks padding)."""

    builder: tfds.core.DatasetBuilder
    split: str
    preprocess: EvalPreprocess
    global_batch: int
    decoders: Mapping[str, Any] | None = None
    is_valid: Callable[[Features], tf.Tensor] | None = None
    select: Callable[[Features], Features] | None = None
    skipped: tf.Variable = dataclasses.field(
        default_factory=lambda: tf.Variable(0, dtype=tf.int64, trainable=False)
    )

    @property
    def num_examples(self) -> int:
        """Examples in the split (an upper bound on those counted when invalid ones are dropped)."""
        return self.builder.info.splits[self.split].num_examples

    @property
    def num_batches(self) -> int:
        """The same on every process: enough batches of at most the configured size for the
        largest share."""
        return math.ceil(self._largest_share / local_batch_size(self.global_batch))

    @property
    def local_batch(self) -> int:
        """Examples per process and batch: the configured batch, shrunk to spread the largest
        share evenly over `num_batches` (a multiple of this process's devices), so padding stays
        under one example per device and batch: 12 images are not padded to a batch of 768."""
        devices = jax.local_device_count()
        even = math.ceil(self._largest_share / self.num_batches)
        return math.ceil(even / devices) * devices

    @property
    def _largest_share(self) -> int:
        return math.ceil(self.num_examples / jax.process_count())

    def dataset(self) -> tf.data.Dataset:
        share, _ = process_split(self.builder, self.split)
        ds = self.builder.as_dataset(split=share, shuffle_files=False, decoders=self.decoders)
        if self.select is not None:
            ds = ds.map(self.select)
        if self.is_valid is not None:
            ds = drop_invalid(ds, self.is_valid, self.skipped)
        preprocess = self.preprocess

        def example(features):
            out = preprocess(features)
            return {
                'image': out['image'],  # uint8: the eval step normalizes it on device
                'label': tf.cast(out['label'], tf.int32),
                'mask': tf.constant(True),
            }

        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        padding = ds.take(1).map(lambda x: tf.nest.map_structure(tf.zeros_like, x)).repeat()
        ds = ds.concatenate(padding).batch(self.local_batch)
        return ds.take(self.num_batches).prefetch(tf.data.AUTOTUNE).with_options(_options())

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        return self.dataset().as_numpy_iterator()


def to_global(
    batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
    """Assembles each process's local batch into global arrays sharded like `sharding`."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_device(
    batches: Iterator[Mapping[str, np.ndarray]], sharding: jax.sharding.Sharding, size: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Keeps `size` batches in flight to the devices (transfers are asynchronous)."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(to_global(batch, sharding))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
