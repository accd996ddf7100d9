"""Input pipelines: ``make_inputs(config)`` builds the train and eval streams a config names."""

from __future__ import annotations

import functools
from typing import Any

from sparse_vit_jax.data import small_images
from sparse_vit_jax.data.pipeline import (
    DatasetNotPreparedError,
    EvalInput,
    TrainInput,
    load_builder,
    local_batch_size,
    prefetch_to_device,
    to_global,
)


def _small_images_recipe(data: Any):
    aug = data.augment
    stats = dict(mean=tuple(data.mean), std=tuple(data.std))
    train = functools.partial(
        small_images.train_preprocess, crop_padding=aug.crop_padding, flip=aug.flip, **stats
    )
    return train, functools.partial(small_images.eval_preprocess, **stats), None, None


RECIPES = {'small_images': _small_images_recipe}


def make_inputs(config: Any) -> tuple[TrainInput, EvalInput]:
    """The train and eval inputs of a run config (fields `data`, `batch_size`, `seed`)."""
    data = config.data
    if data.recipe not in RECIPES:
        raise ValueError(f'unknown data.recipe {data.recipe!r}; choose one of {sorted(RECIPES)}')
    train_fn, eval_fn, decoders, filter_fn = RECIPES[data.recipe](data)
    builder = load_builder(data.name, data.data_dir)
    train = TrainInput(
        builder,
        data.train_split,
        train_fn,
        config.batch_size,
        config.seed,
        shuffle_buffer=data.shuffle_buffer,
        repeats=data.repeats,
        decoders=decoders,
        filter_fn=filter_fn,
    )
    evaluation = EvalInput(
        builder, data.eval_split, eval_fn, data.eval_batch_size, decoders=decoders
    )
    return train, evaluation


__all__ = [
    'DatasetNotPreparedError',
    'EvalInput',
    'TrainInput',
    'load_builder',
    'local_batch_size',
    'make_inputs',
    'prefetch_to_device',
    'to_global',
]
