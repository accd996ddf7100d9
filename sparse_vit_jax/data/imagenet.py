"""Preparing TFDS `imagenet2012` from the ILSVRC tar files, with checks first.

TFDS's real `imagenet2012` builder reads a manual_dir holding

* ``ILSVRC2012_img_train.tar``: an outer tar of 1000 ``<wnid>.tar`` members
  (the label is the member name minus ``.tar``; it must be one of TFDS's
  `labels.txt` wnids), each an inner tar of ``<wnid>_<k>.JPEG`` files;
* ``ILSVRC2012_img_val.tar``: a flat tar of ``ILSVRC2012_val_%08d.JPEG``.
  TFDS labels these by *position*: the i-th name in sorted order gets line i
  of its `validation_labels.txt`. So the names must be exactly 1..N with no
  directory entries or ``./`` prefixes, or labels silently shift (or the
  builder fails with a KeyError halfway through).

The builder only finds out about problems after minutes to hours of work,
with unhelpful errors; `check_manual_dir` reads just the tar headers and
says what is wrong and how to fix it. `write_fake_manual_dir` writes a small
synthetic manual_dir in the same format (tests, benchmarks), and
`prepare_fake_imagenet2012` prepares one whose validation labels are its own
classes (`tools/prepare_data.py imagenet2012 --fake N`, a smoke test).
"""

import contextlib
import io
import logging
import os
import re
import tarfile
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sparse_vit_jax import paths
from sparse_vit_jax.data import pipeline

TRAIN_TAR = 'ILSVRC2012_img_train.tar'
VAL_TAR = 'ILSVRC2012_img_val.tar'
NUM_VAL_IMAGES = 50_000

_WNID_TAR = re.compile(r'(n\d{8})\.tar')
_VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG')
_HOW_TO_GET = (
    'Download the ILSVRC2012 train and validation tars from '
    'https://image-net.org/download-images and put them, unmodified, in the '
    'manual_dir.'
)


def imagenet_wnids():
    """The 1000 wnids of TFDS's imagenet2012 `labels.txt`, in label order."""
    path = tfds.core.tfds_path('datasets/imagenet2012/labels.txt')
    return path.read_text().split()


@contextlib.contextmanager
def _open_tar(path, what):
    """The tar at `path`, read through the path layer (the tars may sit in a bucket)."""
    with paths.resolve(path).open('rb') as f:
        try:
            tar = tarfile.open(fileobj=f, mode='r:*')
        except tarfile.TarError as e:
            raise ValueError(f'{path} is not a readable tar archive ({e}). {what}') from e
        with tar:
            yield tar


def _check_train_tar(path, known_wnids, check_inner_members):
    """Outer tar of <wnid>.tar members, each a non-empty tar."""
    fix = (
        f'{TRAIN_TAR} must contain one <wnid>.tar per class (e.g. '
        'n01440764.tar) at its top level. ' + _HOW_TO_GET
    )
    seen = set()
    with _open_tar(path, fix) as outer:
        for member in outer:
            if member.isdir():
                continue  # TFDS skips directory entries.
            name = os.path.normpath(member.name)  # TFDS normalises './x' to 'x'.
            match = _WNID_TAR.fullmatch(name)
            if not member.isfile() or not match:
                raise ValueError(f'{path}: member {member.name!r} is not a <wnid>.tar file. {fix}')
            wnid = match.group(1)
            if wnid not in known_wnids:
                raise ValueError(
                    f'{path}: {member.name!r} names wnid {wnid!r}, which is not one '
                    f'of the 1000 ILSVRC2012 classes in TFDS labels.txt '
                    f'({tfds.core.tfds_path("datasets/imagenet2012/labels.txt")}). '
                    f'{fix}'
                )
            if wnid in seen:
                raise ValueError(f'{path}: class {wnid} appears twice. {fix}')
            seen.add(wnid)
            _check_inner_tar(path, outer, member, wnid, check_inner_members)
    if not seen:
        raise ValueError(f'{path} contains no <wnid>.tar members. {fix}')


def _check_inner_tar(path, outer, member, wnid, check_all_members):
    """The first header (or all headers) of one per-class tar."""
    where = f'{path}: member {member.name!r}'
    try:
        with tarfile.open(fileobj=outer.extractfile(member), mode='r:*') as inner:
            images = 0
            for image in inner:
                if not image.isfile():
                    continue
                if not image.name.startswith(wnid + '_'):
                    raise ValueError(
                        f'{where} holds {image.name!r}; its images must be named '
                        f'{wnid}_<k>.JPEG. {_HOW_TO_GET}'
                    )
                images += 1
                if not check_all_members:
                    break
    except tarfile.TarError as e:
        raise ValueError(
            f'{where} is not a tar archive ({e}); each class must be '
            f'a tar of its JPEGs. {_HOW_TO_GET}'
        ) from e
    if not images:
        raise ValueError(f'{where} contains no images. {_HOW_TO_GET}')


def _check_val_tar(path):
    """Flat tar of ILSVRC2012_val_%08d.JPEG numbered exactly 1..N."""
    fix = (
        f'{VAL_TAR} must be a flat tar of ILSVRC2012_val_%08d.JPEG files '
        'numbered from 1 without gaps (TFDS assigns validation labels by '
        'sorted position). ' + _HOW_TO_GET
    )
    numbers = []
    with _open_tar(path, fix) as tar:
        for member in tar:
            match = _VAL_NAME.fullmatch(member.name)
            if not member.isfile() or not match:
                raise ValueError(
                    f'{path}: member {member.name!r} is not a file named '
                    f'ILSVRC2012_val_%08d.JPEG. {fix}'
                )
            numbers.append(int(match.group(1)))
    if not numbers:
        raise ValueError(f'{path} contains no images. {fix}')
    if len(numbers) > NUM_VAL_IMAGES:
        raise ValueError(
            f'{path} holds {len(numbers)} images; ILSVRC2012 has {NUM_VAL_IMAGES}. {fix}'
        )
    expected = set(range(1, len(numbers) + 1))
    if set(numbers) != expected or len(set(numbers)) != len(numbers):
        missing = sorted(expected - set(numbers))[:5]
        raise ValueError(
            f'{path}: validation images are not numbered 1..{len(numbers)} '
            f'(first missing numbers: {missing}, largest: {max(numbers)}); '
            f'TFDS would give them shifted labels. {fix}'
        )


def check_manual_dir(manual_dir, *, check_inner_members=False):
    """Checks an ILSVRC2012 manual_dir from tar headers, without decoding.

    Args:
      manual_dir: directory holding ILSVRC2012_img_train.tar and
        ILSVRC2012_img_val.tar.
      check_inner_members: also read every header of every per-class tar (for
        real ImageNet, 1.28M headers: slower, but catches misnamed files);
        by default only the first image of each class is looked at.

    Raises:
      FileNotFoundError: the directory or one of the two tars is missing.
      ValueError: a tar is malformed; the message says what and how to fix it.
    """
    manual_dir = os.fspath(manual_dir)
    folder = paths.resolve(manual_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f'ImageNet manual_dir {manual_dir!r} does not exist. {_HOW_TO_GET}')
    missing = [name for name in (TRAIN_TAR, VAL_TAR) if not (folder / name).is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir())[:10]
        raise FileNotFoundError(
            f'ImageNet manual_dir {manual_dir!r} lacks {missing} (it contains '
            f'{present}). {_HOW_TO_GET}'
        )
    _check_train_tar(paths.join(manual_dir, TRAIN_TAR), set(imagenet_wnids()), check_inner_members)
    _check_val_tar(paths.join(manual_dir, VAL_TAR))


class _NoTestSplitWarning(logging.Filter):
    """Drops the builder's warning that ILSVRC2012_img_test.tar is missing: the test split has
    no labels, training never reads it, and the ILSVRC download is two tars without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            str(record.msg).startswith('ImageNet 2012 Challenge %s split not found')
            and record.args
            and record.args[0] == 'test'
        )


def prepare_imagenet2012(data_dir, manual_dir, *, log=None):
    """Builds TFDS `imagenet2012` in `data_dir` from `manual_dir` once.

    A no-op (apart from the log line) when the dataset is already prepared;
    otherwise checks `manual_dir` first, then runs the real TFDS builder on
    the train and validation tars.
    Run it in one process only (e.g. process 0) and let the others wait.

    Args:
      data_dir: TFDS data directory.
      manual_dir: directory with the ILSVRC2012 tars (see `check_manual_dir`).
      log: optional callable taking one string (e.g. `logging.info`).

    Returns:
      The prepared `tfds` builder.
    """
    log = log or (lambda message: None)
    builder = tfds.builder(
        'imagenet2012', data_dir=None if data_dir is None else os.fspath(data_dir)
    )
    if pipeline.is_prepared(builder):
        log(f'imagenet2012 already prepared in {builder.data_dir}')
        return builder
    check_manual_dir(manual_dir)
    log(f'preparing imagenet2012 (train and validation) from {manual_dir} into {builder.data_dir}')
    quiet = _NoTestSplitWarning()
    absl_logger = logging.getLogger('absl')
    absl_logger.addFilter(quiet)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
        )
    finally:
        absl_logger.removeFilter(quiet)
    log(f'prepared imagenet2012: {builder.info.splits}')
    return builder


def validation_wnids():
    """The wnid of every ILSVRC2012 validation image, in file-name order (TFDS's
    `validation_labels.txt`: TFDS labels the i-th validation image by its line i)."""
    path = tfds.core.tfds_path('datasets/imagenet2012/validation_labels.txt')
    return path.read_text().split()


def fake_classes(num_classes):
    """Classes and validation count for a fake manual_dir whose validation split is consistent.

    TFDS labels validation image i by position, so a fake with some classes and validation
    images 1..n evaluates against the real labels of images 1..n: with arbitrary classes
    nearly all of those lie outside the trained ones and accuracy is ~0 by construction.
    Taking the classes of the first validation images instead, every validation label is a
    trained class.

    Returns:
      (wnids, num_val): the wnids of validation images 1..num_val, `num_classes` of them
      (first-appearance order), and the longest such prefix.
    """
    if num_classes < 1:
        raise ValueError(f'num_classes must be >= 1, got {num_classes}')
    labels = validation_wnids()
    wnids = []
    for count, wnid in enumerate(labels):
        if wnid not in wnids:
            if len(wnids) == num_classes:
                return wnids, count
            wnids.append(wnid)
    if len(wnids) < num_classes:
        raise ValueError(f'ILSVRC2012 has {len(wnids)} classes; asked for {num_classes}')
    return wnids, len(labels)


def prepare_fake_imagenet2012(data_dir, num_classes, *, images_per_class=10, seed=0, log=None):
    """Prepares a tiny synthetic `imagenet2012` (ILSVRC tars written by `write_fake_manual_dir`,
    then the real TFDS builder, as for the real tars): `num_classes` classes of
    `images_per_class` train images, and the validation images whose labels are those classes.

    For smoke-testing the ImageNet path (the images carry no class signal: accuracy stays at
    chance). The tars are written to a temporary folder, removed afterwards.
    Returns the prepared builder.
    """
    log = log or (lambda message: None)
    builder = tfds.builder('imagenet2012', data_dir=os.fspath(data_dir))
    if pipeline.is_prepared(builder):
        log(f'imagenet2012 already prepared in {builder.data_dir}')
        return builder
    wnids, num_val = fake_classes(num_classes)
    with tempfile.TemporaryDirectory() as manual_dir:
        log(
            f'writing fake ILSVRC2012 tars to {manual_dir}: {num_classes} classes × '
            f'{images_per_class} train images, {num_val} validation images'
        )
        write_fake_manual_dir(
            manual_dir, wnids=wnids, images_per_class=images_per_class, num_val=num_val, seed=seed
        )
        return prepare_imagenet2012(data_dir, manual_dir, log=log)


def synthetic_image(rng, shape):
    """A textured uint8 RGB image (waves, gradient, noise), not constant."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fy, fx = rng.uniform(0.01, 0.2, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(fx * xx + fy * yy + phase) * rng.uniform(40, 90)
        ramp = (xx / width - 0.5) * rng.uniform(-80, 80)
        channels.append(128 + wave + ramp)
    image = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible archives
    tar.addfile(info, io.BytesIO(data))


def write_fake_manual_dir(
    path,
    *,
    wnids=('n01440764', 'n01443537', 'n01484850'),
    images_per_class=4,
    num_val=6,
    image_shape=(375, 500),
    seed=0,
    corrupt=0,
):
    """Writes a small ILSVRC2012-format manual_dir of synthetic JPEGs.

    Args:
      path: directory to create (or reuse); returns it.
      wnids: classes of the train tar (must be ILSVRC2012 wnids; the default
        ones are TFDS labels 0, 1, 2).
      images_per_class: train JPEGs per class, named <wnid>_<k>.JPEG.
      num_val: validation JPEGs, ILSVRC2012_val_00000001.JPEG onwards (their
        labels come from TFDS validation_labels.txt, by position).
      image_shape: (height, width) of every image.
      seed: numpy seed of the image content.
      corrupt: how many train JPEGs (the first ones, class by class) are made
        undecodable: alternately truncated to half their bytes and replaced by
        random bytes.

    Returns:
      `path`.
    """
    if corrupt > len(wnids) * images_per_class:
        raise ValueError(f'corrupt={corrupt} exceeds the number of train images')
    folder = paths.resolve(path)  # local or a bucket
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def jpeg():
        return tf.io.encode_jpeg(synthetic_image(rng, image_shape), quality=90).numpy()

    broken = 0
    with (folder / TRAIN_TAR).open('wb') as f, tarfile.open(fileobj=f, mode='w') as outer:
        for wnid in wnids:
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode='w') as inner:
                for k in range(images_per_class):
                    data = jpeg()
                    if broken < corrupt:
                        data = data[: len(data) // 2] if broken % 2 == 0 else rng.bytes(len(data))
                        broken += 1
                    _add_bytes(inner, f'{wnid}_{k}.JPEG', data)
            _add_bytes(outer, f'{wnid}.tar', inner_bytes.getvalue())
    with (folder / VAL_TAR).open('wb') as f, tarfile.open(fileobj=f, mode='w') as val:
        for i in range(1, num_val + 1):
            _add_bytes(val, f'ILSVRC2012_val_{i:08d}.JPEG', jpeg())
    return path
