"""FLOPs of a ViT: the paper's convention (docs/reference.md §6) and XLA's count of the compiled
forward.

Paper convention: multiply-accumulates (MACs) per image, counting only

    patch conv   num_patches · D · (C · p · p)
    per block    N · D · 3 · s_d    (qkv)         2 · h · N² · hd   (Q·Kᵀ and A·V)
                 N · D · D          (proj)        2 · N · D · hid   (fc1, fc2)
    head         D · num_classes    (the cls token only)

with N the tokens including cls (k under token selection; the patch conv always sees every
patch), s_d = h · hd. Softmax, GELU, LayerNorm, biases and the token scorer are not counted.
It reproduces the x-axis of the official figure (dense DeiT-Ti/S/B 1.25 / 4.6 / 17.6 GMACs).

* Unstructured (SViTE): every weight-matmul term (patch conv, qkv, proj, fc1, fc2, head: exactly
  the prunable layers) is scaled by its layer's initial density from `distributions.erk` on the
  model's prunable shapes; the attention matmuls stay dense.
* Structured (S²ViTE): s_d = kept heads · hd and hid = kept neurons, with kept = int(units ·
  density) per block as the reference initialises them, but proj still D × D (the paper's slim
  models pad the heads back to D). `slim=True` gives the true MACs of the physically smaller model,
  whose proj is s_d × D.

XLA: `cost_analysis()['flops']` of the jitted evaluation forward, per image; XLA counts a MAC as
2 FLOPs and includes the elementwise work. It sees only what shapes remove: token dropping and
slim structured models, never unstructured zeros.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sparse_vit_jax.config import method
from sparse_vit_jax.models import config_kwargs
from sparse_vit_jax.models.vit import VisionTransformer
from sparse_vit_jax.sparsity import distributions
from sparse_vit_jax.sparsity import masks as masks_lib

# Model fields that only configure the token selector.
_TOKEN_FIELDS = ('keep_tokens', 'token_mode', 'token_eval', 'layerwise_tokens')


def _dense_kwargs(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The model without its token selector (the dense reference of a saving)."""
    return {k: v for k, v in model_kwargs.items() if k not in _TOKEN_FIELDS}


def _check_densities(density, head_density, neuron_density) -> None:
    structured = head_density is not None or neuron_density is not None
    if density is not None and structured:
        raise ValueError('give either density (unstructured) or head/neuron densities, not both')
    for name, value in (
        ('density', density),
        ('head_density', head_density),
        ('neuron_density', neuron_density),
    ):
        if value is not None and not 0 < value <= 1:
            raise ValueError(f'{name} must be in (0, 1], got {value}')


def kept_units(units: int, density: float | None) -> int:
    """Units (heads or neurons) a block keeps at a structured density: int(units · density), the
    reference's initial count, which its prune-and-grow preserves for heads."""
    if density is None:
        return units
    kept = int(units * density)
    if kept < 1:
        raise ValueError(f'density {density} keeps no unit of {units}')
    return kept


def erk_densities(
    model_kwargs: Mapping[str, Any], density: float, channels: int = 3, distribution: str = 'erk'
) -> dict[str, float]:
    """{prunable layer name: initial density} for the model's own param shapes."""
    model = VisionTransformer(**_dense_kwargs(model_kwargs))
    images = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, channels), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), images)['params']
    return distributions.densities(distribution, masks_lib.prunable_shapes(params), density)


def macs_by_layer(
    model_kwargs: Mapping[str, Any],
    *,
    density: float | None = None,
    head_density: float | None = None,
    neuron_density: float | None = None,
    keep_tokens: int | None = None,
    channels: int = 3,
    distribution: str = 'erk',
    slim: bool = False,
) -> dict[str, float]:
    """MACs per image by term, keyed by the layer names of the params ('blocks_0/attn/qkv/kernel',
    ...) plus 'blocks_{i}/attn/matmuls' for Q·Kᵀ and A·V. See the module doc for the rules.

    keep_tokens: tokens kept, cls included; default the model's own `keep_tokens`, else all.
    slim: structured proj as s_d × D (the true slim model) instead of the paper's D × D.
    """
    _check_densities(density, head_density, neuron_density)
    model = VisionTransformer(**_dense_kwargs(model_kwargs))
    dim, hd, p = model.embed_dim, model.resolved_head_dim, model.patch_size
    keep = keep_tokens or model_kwargs.get('keep_tokens') or 1 + model.num_patches
    if not 1 <= keep <= 1 + model.num_patches:
        raise ValueError(f'keep_tokens must be between 1 and {1 + model.num_patches}, got {keep}')
    terms = {'patch_embed/kernel': float(model.num_patches * dim * channels * p * p)}
    for i, (heads, hidden) in enumerate(zip(model.heads_per_layer, model.mlp_per_layer)):
        heads, hidden = kept_units(heads, head_density), kept_units(hidden, neuron_density)
        inner = heads * hd
        block = f'blocks_{i}'
        terms[f'{block}/attn/qkv/kernel'] = float(keep * dim * 3 * inner)
        terms[f'{block}/attn/matmuls'] = float(2 * heads * keep**2 * hd)
        terms[f'{block}/attn/proj/kernel'] = float(keep * (inner if slim else dim) * dim)
        terms[f'{block}/mlp/fc1/kernel'] = float(keep * dim * hidden)
        terms[f'{block}/mlp/fc2/kernel'] = float(keep * hidden * dim)
    terms['head/kernel'] = float(dim * model.num_classes)
    if density is not None:
        densities = erk_densities(model_kwargs, density, channels, distribution)
        terms = {name: macs * densities.get(name, 1.0) for name, macs in terms.items()}
    return terms


def paper_macs(
    model_kwargs: Mapping[str, Any],
    *,
    density: float | None = None,
    head_density: float | None = None,
    neuron_density: float | None = None,
    keep_tokens: int | None = None,
    channels: int = 3,
    distribution: str = 'erk',
) -> float:
    """MACs per image in the paper's convention (docs/reference.md §6).

    model_kwargs: VisionTransformer fields, e.g. `models.model_kwargs('deit_small')`.
    density: unstructured (SViTE) overall density; head_density / neuron_density: structured
    (S²ViTE) kept fractions; keep_tokens: SViTE+ tokens kept, cls included.
    """
    return sum(
        macs_by_layer(
            model_kwargs,
            density=density,
            head_density=head_density,
            neuron_density=neuron_density,
            keep_tokens=keep_tokens,
            channels=channels,
            distribution=distribution,
        ).values()
    )


def slim_kwargs(
    model_kwargs: Mapping[str, Any], head_density: float | None, neuron_density: float | None
) -> dict[str, Any]:
    """The physically smaller model a structured run exports: kept heads of the same width and
    kept neurons per block."""
    model = VisionTransformer(**_dense_kwargs(model_kwargs))
    return dict(
        model_kwargs,
        num_heads=tuple(kept_units(h, head_density) for h in model.heads_per_layer),
        mlp_dim=tuple(kept_units(h, neuron_density) for h in model.mlp_per_layer),
        head_dim=model.resolved_head_dim,
    )


def xla_flops(model_kwargs: Mapping[str, Any], channels: int = 3) -> float:
    """FLOPs per image XLA counts for the jitted evaluation forward (batch 1, float32)."""
    model = VisionTransformer(**model_kwargs)
    images = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, channels), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), images)['params']

    def forward(params, images, rng):
        return model.apply({'params': params}, images, rngs={'gumbel': rng})

    key = jax.eval_shape(lambda: jax.random.key(0))
    return compiled_flops(jax.jit(forward).lower(params, images, key).compile())


def compiled_flops(compiled: Any, partitions: int = 1) -> float | None:
    """FLOPs of a compiled executable by XLA's cost analysis (a multiply-add counts 2).

    XLA reports the program of ONE partition: a batch sharded over `partitions` devices is
    counted `partitions` times over. None when the backend gives no count.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (some backends do not implement it)
        return None
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device program
        analysis = analysis[0] if analysis else None
    if not analysis or 'flops' not in analysis:
        return None
    return float(analysis['flops']) * partitions


def report(
    model_kwargs: Mapping[str, Any],
    *,
    density: float | None = None,
    head_density: float | None = None,
    neuron_density: float | None = None,
    keep_tokens: int | None = None,
    channels: int = 3,
    distribution: str = 'erk',
    xla: bool = True,
) -> dict[str, Any]:
    """The numbers `tools/flops.py --json` prints.

    gmacs / dense_gmacs / saving: paper convention (the dense model without token selection);
    slim_gmacs (structured only): the true MACs of the slim model, proj shrunk too;
    xla_gflops: XLA's FLOPs of the model that actually runs (dense shapes with the configured token
    selection for unstructured runs, whose zeros XLA still multiplies; the slim model for
    structured runs); xla_dense_gflops: the dense model's.
    """
    keep = keep_tokens or model_kwargs.get('keep_tokens') or None
    kwargs = dict(model_kwargs)
    if keep:
        kwargs['keep_tokens'] = keep
    common = dict(channels=channels, distribution=distribution)
    macs = paper_macs(
        kwargs,
        density=density,
        head_density=head_density,
        neuron_density=neuron_density,
        **common,
    )
    dense = paper_macs(_dense_kwargs(kwargs), **common)
    result: dict[str, Any] = {
        'gmacs': macs / 1e9,
        'dense_gmacs': dense / 1e9,
        'saving': 1.0 - macs / dense,
        'keep_tokens': keep,
        'density': density,
        'head_density': head_density,
        'neuron_density': neuron_density,
    }
    structured = head_density is not None or neuron_density is not None
    if structured:
        layers = macs_by_layer(
            kwargs,
            head_density=head_density,
            neuron_density=neuron_density,
            slim=True,
            **common,
        )
        result['slim_gmacs'] = sum(layers.values()) / 1e9
    if xla:
        runs = slim_kwargs(kwargs, head_density, neuron_density) if structured else kwargs
        result['xla_gflops'] = xla_flops(runs, channels) / 1e9
        result['xla_dense_gflops'] = xla_flops(_dense_kwargs(kwargs), channels) / 1e9
    return result


def report_from_config(config: Any, *, xla: bool = True) -> dict[str, Any]:
    """`report` for a run config: its model, token selection and method's densities."""
    kwargs = config_kwargs(config.model, config.tokens)
    s = config.sparsity
    densities: dict[str, float] = {}
    if method(s.method).masks == 'weights':
        densities = dict(density=s.density)
    elif method(s.method).structured:
        densities = dict(head_density=s.head_density, neuron_density=s.neuron_density)
    return report(
        kwargs,
        channels=len(config.data.mean),
        distribution=s.distribution,
        xla=xla,
        **densities,
    )
