r"""Images/s of the DeiT train preprocessing through tf.data.

Builds a fake ILSVRC2012 manual_dir of N synthetic JPEGs (ImageNet-like
375x500 by default), prepares it with the real TFDS imagenet2012 builder,
then times: SkipDecoding -> JPEG check -> train_preprocess -> batch,
AUTOTUNE, deterministic order. The encoded bytes are cached in memory so the
numbers measure preprocessing, not disk. Reports the median over timed
passes after warm-up.

  python tools/benchmark_input.py --json
  python tools/benchmark_input.py --randaugment=none --reprob=0 --json
"""

import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Run against this checkout even if another one is pip-installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from sparse_vit_jax.data import deit_augment  # pylint: disable=g-import-not-at-top
from sparse_vit_jax.data import imagenet  # pylint: disable=g-import-not-at-top

_NUM_IMAGES = flags.DEFINE_integer('num_images', 512, 'Fake train images.')
_IMAGE_HEIGHT = flags.DEFINE_integer('image_height', 375, 'JPEG height.')
_IMAGE_WIDTH = flags.DEFINE_integer('image_width', 500, 'JPEG width.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Output side.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Batch size.')
_PASSES = flags.DEFINE_integer('passes', 5, 'Timed passes over the data.')
_WARMUP = flags.DEFINE_integer('warmup_passes', 1, 'Untimed passes first.')
_RANDAUGMENT = flags.DEFINE_string(
    'randaugment', 'rand-m9-mstd0.5-inc1', "timm RandAugment spec, or 'none'."
)
_REPROB = flags.DEFINE_float('reprob', 0.25, 'RandomErasing probability.')
_GEOMETRY = flags.DEFINE_enum(
    'geometric_interpolation',
    'bicubic',
    ['bicubic', 'bilinear'],
    'Interpolation of RandAugment rotate/shear/translate.',
)
_CHECK_JPEG = flags.DEFINE_bool('check_jpeg', True, 'Run the undecodable-JPEG check and filter.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where to write the fake data (default: a temp dir).'
)
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object.')


def _cpu_seconds():
    times = os.times()
    return times.user + times.system


def build_dataset(builder, num_images, passes, *, batch_size, check_jpeg, **preprocess_kwargs):
    """Cached encoded examples, `passes` epochs, preprocessed and batched."""
    ds = builder.as_dataset(split='train', decoders={'image': tfds.decode.SkipDecoding()})
    ds = ds.map(lambda f: {'image': f['image'], 'label': f['label']})
    ds = ds.cache().repeat(passes).enumerate()
    # A distinct seed per (epoch, example), as the real pipeline provides.
    ds = ds.map(lambda i, f: (tf.stack([i // num_images, i % num_images]), f))
    if check_jpeg:
        ds = ds.map(
            lambda s, f: (s, deit_augment.with_decodable_flag(f)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        ds = ds.filter(lambda s, f: f['decodable'])
    ds = ds.map(
        lambda s, f: deit_augment.train_preprocess(f, s, **preprocess_kwargs),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def run(
    num_images,
    image_shape,
    *,
    batch_size,
    passes,
    warmup_passes,
    workdir,
    check_jpeg,
    **preprocess_kwargs,
):
    """Prepares the fake data and returns the measurement as a dict."""
    manual_dir = os.path.join(workdir, 'manual')
    wnids = imagenet.imagenet_wnids()[:8]
    per_class = -(-num_images // len(wnids))
    imagenet.write_fake_manual_dir(
        manual_dir, wnids=wnids, images_per_class=per_class, num_val=1, image_shape=image_shape
    )
    builder = imagenet.prepare_imagenet2012(os.path.join(workdir, 'tfds'), manual_dir)
    num_images = builder.info.splits['train'].num_examples
    ds = build_dataset(
        builder,
        num_images,
        warmup_passes + passes,
        batch_size=batch_size,
        check_jpeg=check_jpeg,
        **preprocess_kwargs,
    )
    pass_seconds, pass_cpu_seconds = [], []
    seen = 0
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    for batch in ds:
        seen += int(batch['label'].shape[0])
        if seen >= num_images:  # a pass boundary (batches may straddle it)
            now, cpu_now = time.perf_counter(), _cpu_seconds()
            pass_seconds.append((now - start) * num_images / seen)
            pass_cpu_seconds.append((cpu_now - cpu_start) * num_images / seen)
            seen, start, cpu_start = seen - num_images, now, cpu_now
    rates = [num_images / s for s in pass_seconds[warmup_passes:]]
    cpu_rates = [num_images / s for s in pass_cpu_seconds[warmup_passes:]]
    median = statistics.median(rates)
    cores = os.cpu_count()
    return {
        'images_per_sec': median,
        'images_per_sec_per_core': median / cores,
        # Robust to other load on the machine: images per CPU-second this
        # process used (all tf.data threads included).
        'images_per_cpu_second': statistics.median(cpu_rates),
        'cpu_count': cores,
        'pass_images_per_sec': rates,
        'num_images': num_images,
        'image_shape': list(image_shape),
        'batch_size': batch_size,
        'preprocess': {k: v for k, v in preprocess_kwargs.items()},
        'check_jpeg': check_jpeg,
    }


def main(argv):
    del argv
    randaugment = None if _RANDAUGMENT.value.lower() in ('', 'none') else (_RANDAUGMENT.value)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(
            _NUM_IMAGES.value,
            (_IMAGE_HEIGHT.value, _IMAGE_WIDTH.value),
            batch_size=_BATCH.value,
            passes=_PASSES.value,
            warmup_passes=_WARMUP.value,
            workdir=_WORKDIR.value or tmp,
            check_jpeg=_CHECK_JPEG.value,
            image_size=_IMAGE_SIZE.value,
            randaugment=randaugment,
            reprob=_REPROB.value,
            geometric_interpolation=_GEOMETRY.value,
        )
    if _JSON.value:
        print(json.dumps(result))
    else:
        print(
            f"{result['images_per_sec']:.1f} images/s "
            f"({result['images_per_sec_per_core']:.1f} per core, "
            f"{result['cpu_count']} cores; "
            f"{result['images_per_cpu_second']:.1f} per CPU-second); passes: "
            + ', '.join(f'{r:.1f}' for r in result['pass_images_per_sec'])
        )


if __name__ == '__main__':
    app.run(main)
