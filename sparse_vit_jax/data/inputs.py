"""``make_inputs(config)``: the train and eval streams a config names, with its recipe."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import tensorflow_datasets as tfds

from sparse_vit_jax.data import deit_augment, small_images
from sparse_vit_jax.data.jpeg_check import is_decodable
from sparse_vit_jax.data.pipeline import (
    DatasetNotPreparedError,
    EvalInput,
    TrainInput,
    load_builder,
    local_batch_size,
    prefetch_to_device,
    to_global,
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a dataset's examples become model inputs."""

    train: Callable  # (features, seed[2]) -> {'image', 'label'}
    eval: Callable  # features -> {'image', 'label'}
    decoders: Mapping[str, Any] | None = None
    is_valid: Callable | None = None  # examples failing it are dropped and counted


def _small_images_recipe(config: Any) -> Recipe:
    """Decoded small images (Fashion-MNIST): padded random crop and flip."""
    data, aug = config.data, config.data.augment
    stats = dict(mean=tuple(data.mean), std=tuple(data.std))
    train = functools.partial(
        small_images.train_preprocess, crop_padding=aug.crop_padding, flip=aug.flip, **stats
    )
    return Recipe(train, functools.partial(small_images.eval_preprocess, **stats))


def _deit_recipe(config: Any) -> Recipe:
    """ImageNet JPEGs with the DeiT augmentation, decoding only the crop; corrupt JPEGs skipped."""
    data, aug = config.data, config.data.augment
    stats = dict(mean=tuple(data.mean), std=tuple(data.std), image_size=config.model.image_size)
    train = functools.partial(
        deit_augment.train_preprocess,
        hflip=0.5 if aug.flip else 0.0,
        randaugment=aug.randaugment or None,
        reprob=aug.reprob,
        **stats,
    )
    evaluate = functools.partial(deit_augment.eval_preprocess, crop_pct=aug.crop_pct, **stats)
    return Recipe(
        train, evaluate, decoders={'image': tfds.decode.SkipDecoding()}, is_valid=is_decodable
    )


RECIPES = {'small_images': _small_images_recipe, 'deit': _deit_recipe}


def make_inputs(config: Any) -> tuple[TrainInput, EvalInput]:
    """The train and eval inputs of a run config (fields `data`, `batch_size`, `seed`)."""
    data = config.data
    if data.recipe not in RECIPES:
        raise ValueError(f'unknown data.recipe {data.recipe!r}; choose one of {sorted(RECIPES)}')
    recipe = RECIPES[data.recipe](config)
    builder = load_builder(data.name, data.data_dir)
    common = dict(decoders=recipe.decoders, is_valid=recipe.is_valid)
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
