"""Model registry: ``create_model(name, **overrides)``."""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from sparse_vit_jax.models.vit import VisionTransformer

# DeiT sizes as in the paper (drop-path 0.1 is the DeiT recipe default for all three).
_DEIT = dict(
    num_classes=1000, image_size=224, patch_size=16, drop_path_rate=0.1, init_scheme='timm'
)

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    'deit_tiny_patch16_224': dict(_DEIT, embed_dim=192, depth=12, num_heads=3, mlp_dim=768),
    'deit_small_patch16_224': dict(_DEIT, embed_dim=384, depth=12, num_heads=6, mlp_dim=1536),
    'deit_base_patch16_224': dict(_DEIT, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072),
    # Sized for 28x28 grayscale (Fashion-MNIST): 16 patches of 7x7, 17 tokens with cls.
    'vit_fashion': dict(
        num_classes=10,
        image_size=28,
        patch_size=7,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_dim=128,
        drop_path_rate=0.0,
        init_scheme='xavier',
    ),
    # For unit tests: compiles in about a second on CPU.
    'vit_test': dict(
        num_classes=10,
        image_size=16,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_dim=64,
        drop_path_rate=0.0,
        init_scheme='timm',
    ),
}

# Short names accepted by the configs (`model=deit_small`).
ALIASES = {
    'deit_tiny': 'deit_tiny_patch16_224',
    'deit_small': 'deit_small_patch16_224',
    'deit_base': 'deit_base_patch16_224',
}


def model_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of a registered model, with overrides applied."""
    name = ALIASES.get(name, name)
    if name not in MODEL_CONFIGS:
        raise ValueError(f'unknown model {name!r}; choose one of {sorted(MODEL_CONFIGS)}')
    unknown = set(overrides) - set(VisionTransformer.__dataclass_fields__)
    if unknown:
        raise ValueError(f'unknown model overrides {sorted(unknown)} for {name!r}')
    return {**MODEL_CONFIGS[name], **overrides}


def create_model(name: str, **overrides: Any) -> VisionTransformer:
    """Builds a registered model; any VisionTransformer field may be overridden."""
    return VisionTransformer(**model_kwargs(name, **overrides))


def token_overrides(tokens_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The model fields a config's `tokens` section sets: none unless `keep` > 0 (SViTE+ on).

    `config.tokens` is the one place a run configures token selection (the temperature schedule
    lives there too); `config.model` never carries these fields.
    """
    if not tokens_config or not tokens_config.get('keep'):
        return {}
    return dict(
        keep_tokens=int(tokens_config['keep']),
        token_mode=tokens_config['mode'],
        token_eval=tokens_config['eval_mode'],
        layerwise_tokens=bool(tokens_config['layerwise']),
    )


def config_kwargs(
    model_config: Mapping[str, Any], tokens_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The VisionTransformer fields of a config's `model` section (its name and dtype name left
    out), with the token selector its `tokens` section asks for (see `token_overrides`)."""
    kwargs = dict(model_config, **token_overrides(tokens_config))
    for field in ('num_heads', 'mlp_dim'):  # JSON turns per-layer tuples into lists
        if isinstance(kwargs.get(field), list):
            kwargs[field] = tuple(kwargs[field])
    return {k: v for k, v in kwargs.items() if k not in ('name', 'dtype')}


def input_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(H, W, C) of a run's model input: the configured size, one channel per normalization mean
    (the dataset check at start makes sure the data has them). Takes a ConfigDict or the dict a
    checkpoint's metadata holds."""
    size = config['model']['image_size']
    return (size, size, len(config['data']['mean']))


def create_model_from_config(
    model_config: Mapping[str, Any], tokens_config: Mapping[str, Any] | None = None
) -> VisionTransformer:
    """The model a config's `model` section describes (name, constructor fields, dtype name),
    with the token selector its `tokens` section asks for (see `token_overrides`)."""
    return create_model(
        model_config['name'],
        dtype=jnp.dtype(model_config.get('dtype', 'float32')),
        **config_kwargs(model_config, tokens_config),
    )


__all__ = [
    'config_kwargs',
    'create_model_from_config',
    'ALIASES',
    'MODEL_CONFIGS',
    'VisionTransformer',
    'create_model',
    'model_kwargs',
    'token_overrides',
]
