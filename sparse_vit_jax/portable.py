"""Exports that run outside this project: a timm model for PyTorch, a StableHLO artifact for JAX.

Both write a folder with the model file and ``config.json``, which says what the model takes
(image size, channels, the normalization of the eval transform) and what it returns (class
names); `load` reads either back as a function from images to logits (tools/predict.py).

* ``format='timm'``: ``model.safetensors`` in timm's names and layouts (pruned weights exactly 0)
  and, in config.json, ``architecture`` and ``model_args`` such that
  ``timm.create_model(architecture, **model_args)`` builds the model its ``load_state_dict``
  takes. Dense and unstructured (SViTE) runs; timm's VisionTransformer has no token selector and
  one head count and MLP width for all blocks.
* ``format='stablehlo'``: ``model.stablehlo``, a serialized `jax.export` of the eval forward
  pass with the weights inside and a symbolic batch size, lowered for CPU, CUDA and TPU. It
  needs only jax to run: ``jax.export.deserialize(data).call(images)``. Every model exports,
  slim and token-dropping ones included.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import convert, paths, weights
from sparse_vit_jax.models import create_model
from sparse_vit_jax.sparsity import state as sparsity_state
from sparse_vit_jax.train.restore import RestoredModel, restore_model

FORMATS = ('timm', 'stablehlo')
CONFIG = 'config.json'
TIMM_WEIGHTS = 'model.safetensors'
STABLEHLO = 'model.stablehlo'
PLATFORMS = ('cpu', 'cuda', 'tpu')
# timm builds every DeiT size from the same VisionTransformer; model_args set all sizes.
_TIMM_FAMILY = 'deit_tiny_patch16_224'


class ExportError(ValueError):
    """The run cannot be exported in the asked format, or the output folder is taken."""


def _restore(workdir: str, step: int | None) -> RestoredModel:
    return restore_model(workdir, step=step)


def _out_folder(out: str, name: str) -> epath.Path:
    folder = paths.resolve(out)
    if (folder / name).exists():
        raise ExportError(f'{folder / name} exists already; choose a new --out')
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _describe_input(config: Any, label_names: list[str] | None) -> dict[str, Any]:
    """What a caller needs to feed the model and read its output."""
    data, model = config.data, config.model
    return {
        'image_size': model.image_size,
        'channels': len(data.mean),
        'mean': list(data.mean),
        'std': list(data.std),
        'recipe': data.recipe,
        'crop_pct': data.augment.crop_pct,
        'num_classes': model.num_classes,
        'label_names': label_names,
        'input': 'float32 [batch, image_size, image_size, channels] images, (x / 255 - mean) / std',
    }


def _source(restored: Any, workdir: str) -> dict[str, Any]:
    s = restored.config.sparsity
    return {
        'workdir': workdir,
        'step': restored.step,
        'model': restored.config.model.name,
        'method': s.method,
        'fidelity': s.fidelity,
    }


def _label_names(config: Any) -> list[str] | None:
    from sparse_vit_jax import data as data_lib

    return data_lib.label_names(config.data)


def timm_architecture(model_config: Any) -> tuple[str, dict[str, Any]]:
    """(timm architecture name, model_args) building the model a config's `model` describes."""
    heads, hidden, dim = model_config.num_heads, model_config.mlp_dim, model_config.embed_dim
    if not isinstance(heads, int) or not isinstance(hidden, int):
        raise ExportError(
            'timm models have one head count and MLP width for every block; this model has '
            f'per-block sizes (heads {list(heads)}). Use --format stablehlo'
        )
    head_dim = model_config.get('head_dim') or dim // heads
    if head_dim * heads != dim or int(dim * (hidden / dim)) != hidden:
        raise ExportError(
            f'timm derives head and MLP sizes from embed_dim {dim}; heads {heads} x {head_dim} '
            f'and MLP {hidden} are not expressible. Use --format stablehlo'
        )
    name = model_config.name if model_config.name.startswith('deit_') else _TIMM_FAMILY
    args = dict(
        img_size=model_config.image_size,
        patch_size=model_config.patch_size,
        num_classes=model_config.num_classes,
        embed_dim=dim,
        depth=model_config.depth,
        num_heads=heads,
        mlp_ratio=hidden / dim,
    )
    return name, args


def export_timm(workdir: str, out: str, step: int | None = None) -> dict[str, Any]:
    """Writes `workdir`'s checkpoint (latest, or `step`) as a timm model in `out`."""
    restored = _restore(workdir, step)
    config = restored.config
    traits = config_lib.method(config.sparsity.method)
    if traits.structured:
        raise ExportError(
            f'{workdir} is an S²ViTE run: export it with --format slim (a physically smaller '
            'model) or --format stablehlo; timm models have one head count and MLP width for '
            'every block'
        )
    if traits.tokens or config.tokens.get('keep'):
        raise ExportError(
            f'{workdir} selects tokens (SViTE+), which timm models cannot; use --format stablehlo'
        )
    architecture, model_args = timm_architecture(config.model)
    model_args['in_chans'] = len(config.data.mean)
    params = jax.device_get(restored.params)
    if restored.masks is not None:  # the zeros are already there; make them exact regardless
        params = sparsity_state.apply_weight_masks(params, restored.masks['weights'])
    state = convert.to_timm(params)
    folder = _out_folder(out, TIMM_WEIGHTS)
    weights.save_safetensors(state, str(folder / TIMM_WEIGHTS), metadata={'format': 'pt'})
    total = sum(value.size for value in state.values())
    nonzero = sum(int(np.count_nonzero(value)) for value in state.values())
    description = {
        'format': 'timm',
        'architecture': architecture,
        'model_args': model_args,
        **_describe_input(config, _label_names(config)),
        'source': _source(restored, workdir),
    }
    paths.write_atomic(folder / CONFIG, json.dumps(description, indent=2) + '\n')
    return {
        'out': str(folder),
        'files': [TIMM_WEIGHTS, CONFIG],
        'architecture': architecture,
        'model_args': model_args,
        'num_params': total,
        'nonzero_params': nonzero,
        **description['source'],
    }


def eval_forward(restored: RestoredModel) -> Callable[[jax.Array], jax.Array]:
    """images -> logits as evaluation computes them (the reference token selector's Gumbel noise
    drawn from the key evaluation uses for its first batch)."""
    params, masks, model = restored.params, restored.forward_masks, restored.model
    key = jax.random.fold_in(jax.random.key(restored.config.seed), 0)

    def forward(images):
        return model.apply(
            {'params': params}, images, masks=masks, train=False, rngs={'gumbel': key}
        )

    return forward


def export_stablehlo(
    workdir: str, out: str, step: int | None = None, platforms: tuple[str, ...] = PLATFORMS
) -> dict[str, Any]:
    """Writes the eval forward pass of `workdir`'s checkpoint as a serialized jax.export
    artifact (weights inside, batch size symbolic) in `out`; checks it against the model."""
    restored = _restore(workdir, step)
    config = restored.config
    forward = eval_forward(restored)
    size, channels = config.model.image_size, len(config.data.mean)
    batch = jax.export.symbolic_shape('batch')[0]
    spec = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
    exported = jax.export.export(jax.jit(forward), platforms=tuple(platforms))(spec)
    data = exported.serialize()
    images = np.random.default_rng(0).normal(size=(2, size, size, channels)).astype(np.float32)
    expected = np.asarray(forward(images))
    got = np.asarray(jax.export.deserialize(data).call(images))
    error = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
    folder = _out_folder(out, STABLEHLO)
    paths.write_atomic(folder / STABLEHLO, bytes(data))
    description = {
        'format': 'stablehlo',
        'platforms': list(platforms),
        **_describe_input(config, _label_names(config)),
        'source': _source(restored, workdir),
    }
    paths.write_atomic(folder / CONFIG, json.dumps(description, indent=2) + '\n')
    return {
        'out': str(folder),
        'files': [STABLEHLO, CONFIG],
        'bytes': len(data),
        'platforms': list(platforms),
        'max_relative_error': error,
        **description['source'],
    }


def load(folder: str) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """An exported model as (images -> logits, its config.json)."""
    folder = paths.resolve(folder)
    if not (folder / CONFIG).exists():
        raise ExportError(f'{folder} holds no {CONFIG}; export a model with tools/export.py')
    description = json.loads((folder / CONFIG).read_text())
    if description.get('format') == 'stablehlo':
        exported = jax.export.deserialize(bytearray((folder / STABLEHLO).read_bytes()))
        return (lambda images: np.asarray(exported.call(images))), description
    if description.get('format') == 'timm':
        state = weights.load_weights(str(folder / TIMM_WEIGHTS))
        name, overrides = convert.infer_model(state)
        # The head count shows in no shape; config.json has it.
        model = create_model(
            name, **{**overrides, 'num_heads': description['model_args']['num_heads']}
        )
        params = convert.from_timm(state, model)
        forward = jax.jit(lambda images: model.apply({'params': params}, images))
        return (lambda images: np.asarray(forward(images))), description
    raise ExportError(f'{folder / CONFIG} names no known format ({FORMATS})')
