"""Speed of the production ImageNet input pipeline, on fake data of ImageNet's size.

The pipeline is exactly what training runs: `data.make_inputs(config)` over the real TFDS
imagenet2012 builder, prepared from a hand-made ILSVRC manual_dir of 375×500 JPEGs (ImageNet's
most common size), each batch assembled onto the devices as the Trainer does. A pass is one
epoch of the fake split, pipeline start-up included (the production stream starts a new tf.data
pipeline every epoch).

`vs_float32` times, in alternating passes of the same run, the pipeline as it was before images
crossed to the device as uint8: each example normalized to float32 on the host (ToTensor +
Normalize in the tf.data map). Random erasing's noise is not drawn on the host in that emulation
(the old host drew it for about 1 pixel in 20), so it is a little faster than the old pipeline
was, and the measured speedup of uint8 a lower bound.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from sparse_vit_jax import data as data_lib
from sparse_vit_jax.benchmark import jax_bench, timing
from sparse_vit_jax.data import imagenet
from sparse_vit_jax.train import sharding as sharding_lib

AUGMENTS = ('full', 'light')
IMAGE_SHAPE = (375, 500)


def write_fake_imagenet(root: str, num_images: int, image_shape=IMAGE_SHAPE) -> str:
    """Prepares TFDS imagenet2012 with `num_images` synthetic train JPEGs under `root`; returns
    the TFDS data dir. Up to 8 classes, as many images in each."""
    if num_images < 1:
        raise ValueError(f'num_images must be >= 1, got {num_images}')
    classes = next(c for c in (8, 4, 2, 1) if num_images % c == 0)
    manual = imagenet.write_fake_manual_dir(
        os.path.join(root, 'manual'),
        wnids=imagenet.imagenet_wnids()[:classes],
        images_per_class=num_images // classes,
        num_val=1,
        image_shape=tuple(image_shape),
    )
    data_dir = os.path.join(root, 'tfds')
    # TFDS announces the preparation on stdout, which belongs to the benchmark's result (--json).
    with contextlib.redirect_stdout(sys.stderr):
        imagenet.prepare_imagenet2012(data_dir, manual)
    return data_dir


def input_config(
    config: ml_collections.ConfigDict, data_dir: str, batch: int, augment: str
) -> ml_collections.ConfigDict:
    """`config` reading the fake data at `batch`; augment 'light' turns RandAugment and random
    erasing off (crop, flip and repeated augmentation stay)."""
    if augment not in AUGMENTS:
        raise ValueError(f'augment must be one of {AUGMENTS}, got {augment!r}')
    if config.data.name != 'imagenet2012':
        raise ValueError(
            f'the input benchmark reads fake imagenet2012; this config reads {config.data.name!r}'
        )
    c = config.copy_and_resolve_references()
    c.data.data_dir = data_dir
    c.batch_size = batch
    if augment == 'light':
        c.data.augment.randaugment = ''
        c.data.augment.reprob = 0.0
    return c


def host_float32(preprocess, mean, std):
    """`preprocess` followed by the host-side normalization of the float32 pipeline (before
    images crossed to the device as uint8): (x / 255 - mean) / std per example, boxes dropped."""

    def normalized(features, seed):
        out = preprocess(features, seed)
        image = tf.cast(out['image'], tf.float32) / 255.0
        image = (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
        return {'image': image, 'label': out['label']}

    return normalized


class InputPasses:
    """One call = one pass (epoch) of the config's train stream, each batch placed on the
    devices as the Trainer places it. Records how long each pass waited for its first batch
    (the epoch's pipeline start-up: file reads, filling the shuffle buffer) and the bytes each
    batch sends from host to device.

    float32: normalize on the host instead (`host_float32`), as the pipeline did before."""

    def __init__(
        self, config: ml_collections.ConfigDict, step_seconds: float = 0.0, float32: bool = False
    ):
        train_input, _ = data_lib.make_inputs(config)
        if float32:
            preprocess = host_float32(train_input.preprocess, config.data.mean, config.data.std)
            train_input = dataclasses.replace(train_input, preprocess=preprocess)
        self.name = 'input_float32' if float32 else 'input'
        self.step_seconds = step_seconds  # a consumer's time per batch (an accelerator's step)
        self.steps = train_input.steps_per_epoch
        self.images = self.steps * config.batch_size
        self.stream = train_input.batches()
        self.sharding = sharding_lib.batch_sharding(sharding_lib.make_mesh(config.mesh))
        self.first_batch_seconds: list[float] = []
        self.bytes_per_batch = 0

    def __call__(self) -> None:
        start = time.perf_counter()
        for step in range(self.steps):
            batch = next(self.stream)
            self.bytes_per_batch = sum(v.nbytes for v in batch.values())
            jax.block_until_ready(data_lib.to_global(batch, self.sharding))
            if step == 0:
                self.first_batch_seconds.append(time.perf_counter() - start)
            time.sleep(self.step_seconds)  # the host is free while the accelerator computes

    def runner(self, warmup: int) -> timing.Runner:
        return timing.Runner(self.name, self, self.images, 1, warmup)


def pass_speeds(passes: InputPasses, timings: timing.Timings, warmup: int) -> dict[str, Any]:
    """Rates of the timed passes: whole passes, per CPU-second, and without each pass's wait for
    its first batch (steady: what a long real epoch sees once its pipeline is running)."""
    seconds, cpu = timings.seconds[passes.name], timings.cpu_seconds[passes.name]
    rate = passes.images / float(np.median(seconds))
    first = passes.first_batch_seconds[warmup:]
    rest = passes.images - passes.images // passes.steps
    steady = [rest / (s - f) for s, f in zip(seconds, first) if s > f]
    return {
        'images_per_sec': rate,
        'images_per_cpu_second': passes.images / float(np.median(cpu)),
        'images_per_sec_per_core': rate / os.cpu_count(),
        'steady_images_per_sec': float(np.median(steady)) if steady and passes.steps > 1 else None,
        'first_batch_seconds': float(np.median(first)),
        'pass_images_per_sec': [passes.images / s for s in seconds],
        'images_per_pass': passes.images,
        'bytes_per_batch': passes.bytes_per_batch,
        'cpu_count': os.cpu_count(),
    }


def input_speed(
    config: ml_collections.ConfigDict,
    *,
    num_images: int,
    batch: int,
    augment: str = 'full',
    passes: int = 3,
    warmup_passes: int = 1,
    train_demand_model: str | None = None,
    train_steps: int = 10,
    dtype: str = 'float32',
    workdir: str | None = None,
    step_seconds: float = 0.0,
    vs_float32: bool = False,
) -> dict[str, Any]:
    """images/s of the config's train input pipeline (median over `passes` passes after
    `warmup_passes`), per CPU-second this process used and per core; see `pass_speeds`.

    train_demand_model: also time that model's dense train step at `batch` on random inputs
    (blocks of steps alternating with the passes). ratio = steady input images/s (whole passes
    when a pass has one batch) / train images/s: how many times over the pipeline feeds the
    step, each measured with the machine to itself.

    step_seconds: consume the batches at this pace, as an accelerator's train step would (the
    host idle meanwhile); first_batch_seconds is then the stall at each epoch boundary.

    vs_float32: also the pipeline normalizing on the host (module docstring), in alternating
    passes; 'float32' holds its speeds and bytes, 'uint8_vs_float32' the ratios (bytes per
    batch, images/s).
    """
    with tempfile.TemporaryDirectory(dir=workdir) as root:
        config = input_config(config, write_fake_imagenet(root, num_images), batch, augment)
        input_passes = InputPasses(config, step_seconds)
        runners = [input_passes.runner(warmup_passes)]
        if vs_float32:
            float_passes = InputPasses(config, step_seconds, float32=True)
            runners.append(float_passes.runner(warmup_passes))
        if train_demand_model:
            bench = jax_bench.TrainBench(
                jax_bench.model_bench_config(train_demand_model, batch, dtype)
            )
            runners.append(bench.runner('train', per_block=-(-train_steps // passes), warmup=2))
        timings = timing.alternate(runners, passes)
    aug = config.data.augment
    result = {
        'mode': 'input',
        **pass_speeds(input_passes, timings, warmup_passes),
        'num_images': num_images,
        'image_shape': list(IMAGE_SHAPE),
        'batch': batch,
        'augment': augment,
        'pipeline': {
            'randaugment': aug.randaugment,
            'reprob': aug.reprob,
            'repeats': config.data.repeats,
            'image_size': config.model.image_size,
        },
        'passes': passes,
        'warmup_passes': warmup_passes,
        'step_seconds': step_seconds,
        'epoch_start_seconds': input_passes.first_batch_seconds,
    }
    if vs_float32:
        before = pass_speeds(float_passes, timings, warmup_passes)
        result['float32'] = before
        speed = lambda r: r['steady_images_per_sec'] or r['images_per_sec']
        result['uint8_vs_float32'] = {
            'bytes_per_batch': result['bytes_per_batch'] / before['bytes_per_batch'],
            'images_per_sec': speed(result) / speed(before),
        }
    if train_demand_model:
        train = timing.summarize(timings.seconds['train'], batch)
        supply = result['steady_images_per_sec'] or result['images_per_sec']
        result.update(
            train_demand_model=train_demand_model,
            train_demand_images_per_sec=train['images_per_sec'],
            train_demand_step_time_ms=train['step_time_ms'],
            ratio=supply / train['images_per_sec'],
        )
    return timing.finish(result, timings)
