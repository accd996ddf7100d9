"""Which dataset a config names, and which of its features are the image and the label.

``config.data.name`` is any TFDS dataset name (prepared in ``config.data.data_dir``), or
``folder`` for an image folder at ``config.data.data_dir`` (see image_folder.py). The image and
label features are the dataset's supervised keys, else its only Image and ClassLabel features;
``config.data.image_key`` / ``label_key`` choose others.
"""

from __future__ import annotations

from typing import Any

import tensorflow_datasets as tfds

from sparse_vit_jax.data.image_folder import ImageFolder
from sparse_vit_jax.data.pipeline import load_builder

FOLDER = 'folder'


def open_builder(data: Any) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `config.data`: a prepared TFDS dataset, or an image folder."""
    if data.name == FOLDER:
        if not data.data_dir:
            raise ValueError(
                "config.data.name='folder' reads the images in config.data.data_dir; set it to "
                'the folder (one subfolder per class)'
            )
        return ImageFolder(data.data_dir)
    return load_builder(data.name, data.data_dir)


def _of_type(info: tfds.core.DatasetInfo, kind: type) -> list[str]:
    return [key for key, feature in info.features.items() if isinstance(feature, kind)]


def feature_keys(info: tfds.core.DatasetInfo, image_key: str = '', label_key: str = ''):
    """(image key, label key) of a dataset: given, its supervised keys, or its only Image and
    ClassLabel features. Raises ValueError (one line) naming the candidates when unclear."""
    supervised = info.supervised_keys
    if isinstance(supervised, (tuple, list)) and all(isinstance(k, str) for k in supervised):
        auto = {'image': supervised[0], 'label': supervised[1]}
    else:
        auto = {}
    chosen = {}
    for role, given, kind in (
        ('image', image_key, tfds.features.Image),
        ('label', label_key, tfds.features.ClassLabel),
    ):
        candidates = sorted(_of_type(info, kind))
        key = given or auto.get(role) or (candidates[0] if len(candidates) == 1 else '')
        if key not in candidates:
            what = 'Image' if role == 'image' else 'ClassLabel'
            raise ValueError(
                f'dataset {info.name!r}: cannot tell which feature is the {role} (its {what} '
                f'features: {candidates or "none"}; all features: {sorted(info.features)}); set '
                f'config.data.{role}_key'
            )
        chosen[role] = key
    return chosen['image'], chosen['label']


def check_fits(info: tfds.core.DatasetInfo, image_key: str, label_key: str, config: Any) -> None:
    """Refuses, in one line naming the config field to set, a dataset whose class count (or, for
    the small-image recipe, which feeds decoded images as they are: image size and channels)
    differs from the model's. The DeiT recipe decodes to the model's channels and resizes."""
    where = f'dataset {info.name!r}'
    classes = getattr(info.features[label_key], 'num_classes', None)
    if classes is not None and classes != config.model.num_classes:
        raise ValueError(
            f'{where} has {classes} classes but the model has {config.model.num_classes}; set '
            f'config.model.num_classes={classes}'
        )
    if config.data.recipe != 'small_images':
        return
    shape = tuple(info.features[image_key].shape)
    size, channels = config.model.image_size, len(config.data.mean)
    if shape[-1] is not None and shape[-1] != channels:
        raise ValueError(
            f'{where} has {shape[-1]}-channel images but config.data.mean/std have {channels} '
            f'entries; give one mean and std per channel ({shape[-1]})'
        )
    if None not in shape[:2] and shape[:2] != (size, size):
        raise ValueError(
            f'{where} has {shape[0]}x{shape[1]} images but the model takes {size}x{size}; set '
            f"config.model.image_size={shape[0]}, or config.data.recipe='deit' (which resizes)"
        )


def label_names(data: Any) -> list[str] | None:
    """The class names of `config.data`'s dataset (TFDS label names), or None when the dataset
    is not known here. For a TFDS dataset only its metadata is needed, not its files."""
    try:
        builder = (
            open_builder(data)
            if data.name == FOLDER
            else tfds.builder(data.name, data_dir=data.data_dir)
        )
        _, label = feature_keys(builder.info, data.get('image_key', ''), data.get('label_key', ''))
    except (tfds.core.registered.DatasetNotFoundError, OSError, ValueError):
        return None
    return list(builder.info.features[label].names)
