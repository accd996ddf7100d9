"""Any dataset: an image folder through TFDS's folder builder, any TFDS dataset's features, and
the DeiT recipe on JPEG and PNG files of any size (one or three channels)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import FOLDER_CLASSES
from sparse_vit_jax import data as data_lib
from sparse_vit_jax.data import datasets
from sparse_vit_jax.data.image_folder import ImageFolder

VALID = 18  # write_image_folder: 3 classes x 6 images, plus a truncated PNG and a text file


def _labels(builder, split) -> list[int]:
    ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    return [int(example['label']) for example in ds]


def test_a_folder_of_class_folders_is_one_sliceable_split(image_folder):
    builder = ImageFolder(image_folder)
    assert builder.info.features['label'].names == list(FOLDER_CLASSES)
    assert (
        list(builder.info.splits) == ['train'] and builder.info.splits['train'].num_examples == 20
    )
    head, tail = _labels(builder, 'train[:70%]'), _labels(builder, 'train[70%:]')
    assert (
        len(head) == 14
        and len(tail) == 6
        and sorted(head + tail) == sorted(_labels(builder, 'train'))
    )
    assert set(head) == {0, 1, 2}  # a fixed shuffled order: every class in a slice
    shares = [_labels(builder, s) for s in tfds.even_splits('train', n=2)]  # one per process
    assert sorted(shares[0] + shares[1]) == sorted(head + tail)
    assert datasets.feature_keys(builder.info) == ('image', 'label')


def test_the_split_layout_keeps_its_splits(image_folder, tmp_path):
    root = tmp_path / 'splits'
    for split in ('train', 'val'):
        shutil.copytree(image_folder, root / split)
    builder = ImageFolder(str(root))
    assert sorted(builder.info.splits) == ['train', 'val']
    assert builder.info.features['label'].names == list(FOLDER_CLASSES)


def test_folders_that_are_not_datasets_are_refused_in_one_line(image_folder, tmp_path):
    one = tmp_path / 'one'
    shutil.copytree(os.path.join(image_folder, 'cat'), one / 'cat')
    with pytest.raises(ValueError, match=r"has only \['cat'\]: a classifier needs two classes"):
        ImageFolder(str(one))
    (tmp_path / 'empty' / 'a').mkdir(parents=True)
    with pytest.raises(ValueError, match='holds no .jpg/.jpeg/.png images') as error:
        ImageFolder(str(tmp_path / 'empty'))
    assert '\n' not in str(error.value)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ImageFolder(str(tmp_path / 'missing'))


def _folder_config(tiny_config, folder, **overrides):
    return tiny_config(
        **{
            'data.name': 'folder',
            'data.data_dir': folder,
            'data.recipe': 'deit',
            'data.cache': False,
            'data.augment.randaugment': 'rand-m9-mstd0.5-inc1',
            'data.augment.reprob': 0.25,
            'data.train_split': 'train[:70%]',
            'data.eval_split': 'train',
            'model.num_classes': 3,
            **overrides,
        }
    )


@pytest.mark.parametrize('channels', [3, 1])
def test_the_deit_recipe_reads_jpeg_and_png_and_skips_broken_files(
    tiny_config, image_folder, channels
):
    stats = {'data.mean': (0.5,) * channels, 'data.std': (0.25,) * channels}
    train, evaluation = data_lib.make_inputs(_folder_config(tiny_config, image_folder, **stats))
    batches = list(evaluation.batches())
    real = sum(int(b['mask'].sum()) for b in batches)
    assert real == VALID and int(evaluation.skipped.numpy()) == 2
    assert batches[0]['image'].shape[1:] == (16, 16, channels)
    images = next(train.batches())['image']
    assert images.shape == (4, 16, 16, channels) and np.isfinite(images).all()
    assert data_lib.label_names(_folder_config(tiny_config, image_folder).data) == list(
        FOLDER_CLASSES
    )


def _tfds_dataset(data_dir: str, features: dict) -> None:
    """A real TFDS dataset with the given features and no supervised keys."""
    rng = np.random.default_rng(0)
    values = {
        key: (
            rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
            if isinstance(feature, tfds.features.Image)
            else np.arange(4) % 2
        )
        for key, feature in features.items()
    }
    tfds.dataset_builders.TfDataBuilder(
        name='odd_keys',
        version='1.0.0',
        data_dir=data_dir,
        split_datasets={'train': tf.data.Dataset.from_tensor_slices(values)},
        features=tfds.features.FeaturesDict(features),
    ).download_and_prepare()


def test_any_tfds_dataset_names_its_image_and_label(tmp_path):
    image = lambda: tfds.features.Image(shape=(16, 16, 3))
    label = lambda: tfds.features.ClassLabel(names=['no', 'yes'])
    _tfds_dataset(str(tmp_path / 'a'), {'picture': image(), 'category': label()})
    builder = tfds.builder('odd_keys', data_dir=str(tmp_path / 'a'))
    assert datasets.feature_keys(builder.info) == ('picture', 'category')

    _tfds_dataset(str(tmp_path / 'b'), {'left': image(), 'right': image(), 'category': label()})
    info = tfds.builder('odd_keys', data_dir=str(tmp_path / 'b')).info
    with pytest.raises(ValueError, match=r"Image features: \['left', 'right'\].*image_key"):
        datasets.feature_keys(info)
    assert datasets.feature_keys(info, image_key='right') == ('right', 'category')
    with pytest.raises(ValueError, match='cannot tell which feature is the label'):
        datasets.feature_keys(info, image_key='right', label_key='left')


@pytest.mark.parametrize(
    'overrides, problem',
    [
        ({'model.num_classes': 7}, r'has 10 classes but the model has 7; set .*num_classes=10'),
        (
            {'data.mean': (0.5,), 'data.std': (0.5,)},
            r'has 3-channel images but config.data.mean/std have 1 entries',
        ),
        ({'model.image_size': 32}, r"has 16x16 images but the model takes 32x32; .*recipe='deit'"),
    ],
)
def test_a_dataset_that_does_not_fit_the_model_is_refused_in_one_line(
    tiny_config, overrides, problem
):
    with pytest.raises(ValueError, match=problem) as error:
        data_lib.make_inputs(tiny_config(**overrides))
    assert '\n' not in str(error.value)
