"""``make_inputs(config)``: the train and eval streams a config names, with its recipe."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import tensorflow_datasets as tfds

from sparse_vit_jax.data import datasets, deit_augment, small_images
from sparse_vit_jax.data.jpeg_check import is_decodable_image
from sparse_vit_jax.data.pipeline import EvalInput, TrainInput


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a dataset's examples become model inputs."""

    # Images come out uint8, normalized on device (data/device_input.py).
    train: Callable  # ({'image', 'label'}, seed[2]) -> {'image', 'label'[, 'erase' boxes]}
    eval: Callable  # {'image', 'label'} -> {'image', 'label'}
    decoders: Mapping[str, Any] | None = None  # by role: {'image': ...}
    is_valid: Callable | None = None  # examples failing it are dropped and counted


def _small_images_recipe(config: Any) -> Recipe:
    """Decoded small images (Fashion-MNIST): padded random crop and flip."""
    aug = config.data.augment
    train = functools.partial(
        small_images.train_preprocess, crop_padding=aug.crop_padding, flip=aug.flip
    )
    return Recipe(train, small_images.eval_preprocess)


def _deit_recipe(config: Any) -> Recipe:
    """Encoded images (JPEG, PNG) of any size with the DeiT augmentation, decoding only the crop
    of a JPEG; corrupt or truncated files skipped. One channel per normalization mean."""
    data, aug = config.data, config.data.augment
    size, channels = config.model.image_size, len(data.mean)
    train = functools.partial(
        deit_augment.train_preprocess,
        image_size=size,
        hflip=0.5 if aug.flip else 0.0,
        randaugment=aug.randaugment or None,
        reprob=aug.reprob,
        mean=tuple(data.mean),  # RandAugment's fill colour
        channels=channels,
    )
    evaluate = functools.partial(
        deit_augment.eval_preprocess, image_size=size, crop_pct=aug.crop_pct, channels=channels
    )
    return Recipe(
        train,
        evaluate,
        decoders={'image': tfds.decode.SkipDecoding()},
        is_valid=is_decodable_image,
    )


RECIPES = {'small_images': _small_images_recipe, 'deit': _deit_recipe}


def make_recipe(config: Any) -> Recipe:
    """The preprocessing a config names (config.data.recipe), for training, evaluation and
    prediction alike."""
    if config.data.recipe not in RECIPES:
        raise ValueError(
            f'unknown data.recipe {config.data.recipe!r}; choose one of {sorted(RECIPES)}'
        )
    return RECIPES[config.data.recipe](config)


def make_inputs(config: Any) -> tuple[TrainInput, EvalInput]:
    """The train and eval inputs of a run config (fields `data`, `batch_size`, `seed`)."""
    data = config.data
    recipe = make_recipe(config)
    builder = datasets.open_builder(data)
    image_key, label_key = datasets.feature_keys(builder.info, data.image_key, data.label_key)
    datasets.check_fits(builder.info, image_key, label_key, config)
    roles = {'image': image_key, 'label': label_key}
    common = dict(
        decoders={roles[role]: d for role, d in (recipe.decoders or {}).items()} or None,
        is_valid=recipe.is_valid,
        select=lambda features: {role: features[key] for role, key in roles.items()},
    )
    train = TrainInput(
        builder,
        data.train_split,
        recipe.train,
        config.batch_size,
        config.seed,
        shuffle_buffer=data.shuffle_buffer,
        repeats=data.repeats,
        cache=data.cache,
        **common,
    )
    evaluation = EvalInput(builder, data.eval_split, recipe.eval, data.eval_batch_size, **common)
    return train, evaluation
