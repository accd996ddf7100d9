"""manual_dir checks, preparation with the real TFDS builder, fake data."""

import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from sparse_vit_jax.data import deit_augment as da
from sparse_vit_jax.data import imagenet, pipeline

SHAPE = (24, 32)  # tiny images keep the builder fast


def _fake(path, **kwargs):
    kwargs.setdefault('image_shape', SHAPE)
    return imagenet.write_fake_manual_dir(str(path), **kwargs)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp('imagenet')
    manual_dir = _fake(root / 'manual', corrupt=2)
    messages = []
    builder = imagenet.prepare_imagenet2012(root / 'tfds', manual_dir, log=messages.append)
    return builder, root, manual_dir, messages


def _examples(builder, split):
    ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    return list(ds.as_numpy_iterator())


def test_fake_manual_dir_prepares_with_the_real_builder(prepared):
    builder, _, _, messages = prepared
    # The real registered builder, not a stand-in (TfDataBuilder etc.).
    assert type(builder).__module__.endswith('imagenet2012_dataset_builder')
    assert builder.info.splits['train'].num_examples == 3 * 4
    assert builder.info.splits['validation'].num_examples == 6
    train = _examples(builder, 'train')
    # The default wnids are TFDS labels 0, 1, 2, four images each.
    counts = np.bincount([int(e['label']) for e in train], minlength=3)
    np.testing.assert_array_equal(counts, [4, 4, 4])
    for e in train:
        wnid = imagenet.imagenet_wnids()[int(e['label'])]
        assert e['file_name'].decode().startswith(wnid + '_')
    # Validation labels come from TFDS validation_labels.txt by position.
    val = {e['file_name'].decode(): int(e['label']) for e in _examples(builder, 'validation')}
    assert val['ILSVRC2012_val_00000001.JPEG'] == 65
    assert val['ILSVRC2012_val_00000002.JPEG'] == 970
    assert val['ILSVRC2012_val_00000004.JPEG'] == 809
    assert any('preparing' in m for m in messages)


def test_fake_images_are_textured_jpegs(prepared):
    builder = prepared[0]
    image = tf.io.decode_jpeg(_examples(builder, 'validation')[0]['image'])
    assert image.shape == (*SHAPE, 3)
    assert float(tf.math.reduce_std(tf.cast(image, tf.float32))) > 10.0


def test_corrupt_train_images_are_skipped_and_counted(prepared):
    builder = prepared[0]
    ds = builder.as_dataset(split='train', decoders={'image': tfds.decode.SkipDecoding()})
    skipped = tf.Variable(0, dtype=tf.int64)
    ds = pipeline.drop_invalid(ds, da.is_decodable, skipped)
    # Everything that passes must decode (RandAugment is covered elsewhere).
    ds = ds.enumerate().map(
        lambda i, f: da.train_preprocess(
            f, tf.stack([tf.cast(i, tf.int64), 0]), image_size=16, randaugment=None
        )
    )
    images = list(ds.as_numpy_iterator())
    assert len(images) == 12 - 2 and int(skipped.numpy()) == 2


def test_preparing_twice_is_a_no_op(prepared, monkeypatch):
    _, root, manual_dir, _ = prepared

    def fail(*args, **kwargs):
        raise AssertionError('must not check or build again')

    monkeypatch.setattr(imagenet, 'check_manual_dir', fail)
    monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', fail)
    messages = []
    builder = imagenet.prepare_imagenet2012(root / 'tfds', manual_dir, log=messages.append)
    assert builder.info.splits['train'].num_examples == 12
    assert messages == [f'imagenet2012 already prepared in {builder.data_dir}']


# --- malformed manual_dirs ------------------------------------------------


def _add(tar, name, data=b'x', directory=False):
    info = tarfile.TarInfo(name)
    if directory:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _rewrite(path, members):
    """Replaces a tar with `members`: list of (name, bytes or None=dir)."""
    with tarfile.open(path, 'w') as tar:
        for name, data in members:
            _add(tar, name, data or b'', directory=data is None)


def _inner_tar(names):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w') as tar:
        for name in names:
            _add(tar, name, b'\xff\xd8 not decoded by the check')
    return buffer.getvalue()


@pytest.fixture
def manual_dir(tmp_path):
    return _fake(tmp_path / 'manual', images_per_class=1, num_val=3, image_shape=(8, 8))


def test_valid_fake_dir_passes_thorough_check(manual_dir):
    imagenet.check_manual_dir(manual_dir, check_inner_members=True)


def test_missing_directory_and_tars(tmp_path, manual_dir):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        imagenet.check_manual_dir(tmp_path / 'nowhere')
    os.remove(os.path.join(manual_dir, imagenet.VAL_TAR))
    with pytest.raises(FileNotFoundError, match='ILSVRC2012_img_val.tar'):
        imagenet.check_manual_dir(manual_dir)
    os.remove(os.path.join(manual_dir, imagenet.TRAIN_TAR))
    with pytest.raises(FileNotFoundError, match='ILSVRC2012_img_train.tar'):
        imagenet.check_manual_dir(manual_dir)


TRAIN_CASES = {
    'not a tar': (b'garbage' * 100, 'not a readable tar'),
    'non-tar member': ([('n01440764.txt', b'x')], 'not a <wnid>.tar'),
    'nested member': (
        [('train/n01440764.tar', _inner_tar(['n01440764_1.JPEG']))],
        'not a <wnid>.tar',
    ),
    'unknown wnid': (
        [('n99999999.tar', _inner_tar(['n99999999_1.JPEG']))],
        "'n99999999', which is not one of the 1000",
    ),
    'inner not a tar': ([('n01440764.tar', b'\x00garbage' * 200)], 'is not a tar archive'),
    'empty inner tar': ([('n01440764.tar', _inner_tar([]))], 'contains no images'),
    'misnamed image': (
        [('n01440764.tar', _inner_tar(['cat.JPEG']))],
        'must be named n01440764_<k>.JPEG',
    ),
    'duplicate class': (
        [
            ('n01440764.tar', _inner_tar(['n01440764_1.JPEG'])),
            ('./n01440764.tar', _inner_tar(['n01440764_2.JPEG'])),
        ],
        'appears twice',
    ),
    'empty outer tar': ([], 'contains no <wnid>.tar'),
}


@pytest.mark.parametrize('case', sorted(TRAIN_CASES))
def test_malformed_train_tar_is_named(manual_dir, case):
    content, message = TRAIN_CASES[case]
    path = os.path.join(manual_dir, imagenet.TRAIN_TAR)
    if isinstance(content, bytes):
        with open(path, 'wb') as f:
            f.write(content)
    else:
        _rewrite(path, content)
    with pytest.raises(ValueError, match=message) as error:
        imagenet.check_manual_dir(manual_dir)
    assert 'image-net.org' in str(error.value)  # says how to fix it


VAL_CASES = {
    'wrong name': ([('val_1.JPEG', b'x')], 'ILSVRC2012_val_%08d.JPEG'),
    './ prefix': ([('./ILSVRC2012_val_00000001.JPEG', b'x')], 'ILSVRC2012_val_%08d.JPEG'),
    'directory entry': ([('val', None)], 'is not a file named'),
    'gap': (
        [(f'ILSVRC2012_val_{i:08d}.JPEG', b'x') for i in (1, 2, 4)],
        r'not numbered 1..3 \(first missing numbers: \[3\]',
    ),
    'empty': ([], 'contains no images'),
}


@pytest.mark.parametrize('case', sorted(VAL_CASES))
def test_malformed_val_tar_is_named(manual_dir, case):
    content, message = VAL_CASES[case]
    _rewrite(os.path.join(manual_dir, imagenet.VAL_TAR), content)
    with pytest.raises(ValueError, match=message):
        imagenet.check_manual_dir(manual_dir)


def test_corrupt_argument_is_bounded(tmp_path):
    with pytest.raises(ValueError, match='corrupt'):
        _fake(tmp_path, images_per_class=1, corrupt=4)
