"""Which parameters are sparsified, their initial masks, and density statistics.

Trees here are plain nested mappings (Flax `params` dicts). A leaf is an array, anything with a
`.shape` (e.g. `jax.ShapeDtypeStruct` from `jax.eval_shape`), or a tuple of ints giving a shape.
Outputs mirror the input's nesting as plain dicts, with None on leaves that are not prunable.
A layer's name is its path joined by '/', e.g. 'blocks_0/attn/qkv/kernel'.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sparse_vit_jax.layer_order import path_name
from sparse_vit_jax.sparsity import distributions, prune_grow

Path = tuple[str, ...]
Tree = Any

# The learnable token selector (SViTE+) is never sparsified; the reference skips names containing
# 'gumbel', which is what it called the selector.
_NEVER_PRUNED = ('token_selector',)


def _shape(leaf: Any) -> tuple[int, ...]:
    if hasattr(leaf, 'shape'):
        return tuple(int(d) for d in leaf.shape)
    return tuple(int(d) for d in leaf)


def _iter_leaves(tree: Tree, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    if isinstance(tree, Mapping):
        for key, child in tree.items():
            yield from _iter_leaves(child, prefix + (str(key),))
    else:
        yield prefix, tree


def _map_leaves(fn: Callable[[Path, Any], Any], tree: Tree, prefix: Path = ()) -> Tree:
    if isinstance(tree, Mapping):
        return {key: _map_leaves(fn, child, prefix + (str(key),)) for key, child in tree.items()}
    return fn(prefix, tree)


def is_prunable(path: Path, leaf: Any) -> bool:
    """True for 2-D and 4-D leaves outside the token selector (docs/reference.md §2.1).

    On DeiT params this is exactly the patch conv, every qkv, attn proj, fc1, fc2 and the head:
    biases and LayerNorm params are 1-D, cls_token and pos_embed are 3-D.
    """
    if leaf is None:
        return False
    if any(word in path_name(path) for word in _NEVER_PRUNED):
        return False
    return len(_shape(leaf)) in (2, 4)


def prunable_shapes(params_or_shapes: Tree) -> dict[str, tuple[int, ...]]:
    """Flat {layer name: shape} of the prunable leaves, in tree order."""
    return {
        path_name(path): _shape(leaf)
        for path, leaf in _iter_leaves(params_or_shapes)
        if is_prunable(path, leaf)
    }


def layer_densities(params_or_shapes: Tree, density: float, distribution: str = 'erk') -> Tree:
    """Per-layer initial densities: a float on prunable leaves, None elsewhere.

    distribution: 'erk' (the reference's fixed_ERK) or 'uniform'.
    """
    flat = distributions.densities(distribution, prunable_shapes(params_or_shapes), density)
    return _map_leaves(
        lambda path, leaf: flat[path_name(path)] if is_prunable(path, leaf) else None,
        params_or_shapes,
    )


def _flat_values(tree: Tree) -> dict[str, Any]:
    """{layer name: leaf} for non-None leaves; a flat {name: value} dict maps to itself."""
    return {path_name(path): leaf for path, leaf in _iter_leaves(tree) if leaf is not None}


def layer_key(key: jax.Array, name: str) -> jax.Array:
    """Per-layer PRNG key: fold in a stable hash (CRC32) of the layer name.

    Stable across processes and independent of which other layers exist, unlike Python's hash
    or an enumeration index.
    """
    return jax.random.fold_in(key, zlib.crc32(name.encode('utf-8')) & 0x7FFFFFFF)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _exact_count_mask(key: jax.Array, shape: tuple[int, ...], count: int) -> jax.Array:
    """Exactly `count` True entries, uniformly at random (the lowest `count` of uniform noise)."""
    numel = int(np.prod(shape))
    order = jnp.argsort(jax.random.uniform(key, (numel,)))
    return jnp.zeros((numel,), dtype=bool).at[order[:count]].set(True).reshape(shape)


@functools.partial(jax.jit, static_argnums=(1,))
def _bernoulli_mask(key: jax.Array, shape: tuple[int, ...], density: float) -> jax.Array:
    """i.i.d. Bernoulli(density) entries as `uniform < density`, like the reference's torch.rand."""
    return jax.random.uniform(key, shape) < density


def random_weight_masks(
    key: jax.Array, params_or_shapes: Tree, densities: Tree, *, exact: bool = False
) -> Tree:
    """Initial unstructured masks: bool on prunable leaves, None elsewhere.

    Reference: i.i.d. Bernoulli per layer, `uniform(key_l) < p_l`, so counts are exact only in
    expectation. With exact=True each layer gets exactly floor(p_l * numel + 0.5) active entries
    placed uniformly at random. Layers with density 1.0 are all True either way. Each layer draws
    from its own key (`layer_key`), so a layer's mask depends only on `key` and its name.

    Args:
      densities: per-layer densities, either the tree from `layer_densities` or a flat
        {layer name: density} dict.
    """

    def make(name: str, leaf: Any, density: float) -> jax.Array:
        shape = _shape(leaf)
        count = _layer_count(name, density, shape)
        if density >= 1.0:
            return jnp.ones(shape, dtype=bool)
        if exact:
            return _exact_count_mask(layer_key(key, name), shape, count)
        return _bernoulli_mask(layer_key(key, name), shape, density)

    return _map_layers(make, params_or_shapes, densities)


def _map_layers(make: Callable[[str, Any, float], jax.Array], tree: Tree, densities: Tree) -> Tree:
    """`make(name, leaf, density)` on every prunable layer of `tree` (None elsewhere), with the
    layer's density from `densities` (a tree or a flat {layer name: density} dict)."""
    flat_density = _flat_values(densities)

    def make_leaf(path: Path, leaf: Any) -> jax.Array | None:
        if not is_prunable(path, leaf):
            return None
        name = path_name(path)
        if name not in flat_density:
            raise ValueError(f'no density given for prunable layer {name!r}')
        return make(name, leaf, float(flat_density[name]))

    return _map_leaves(make_leaf, tree)


def _layer_count(name: str, density: float, shape: tuple[int, ...]) -> int:
    """Active entries of a layer at `density`: floor(density * numel + 0.5), as exact init."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f'density of {name!r} must be in [0, 1], got {density}')
    return int(np.floor(density * int(np.prod(shape)) + 0.5))


@functools.partial(jax.jit, static_argnums=(1,))
def _largest_magnitudes(weight: jax.Array, count: int) -> jax.Array:
    """Exactly `count` True entries at the largest |weight|, ties by ascending flat index."""
    magnitude = jnp.abs(weight.reshape(-1)).astype(jnp.float32)
    return prune_grow.largest(magnitude, count).reshape(weight.shape)


def magnitude_weight_masks(params: Tree, densities: Tree) -> Tree:
    """Initial unstructured masks from trained weights: each layer keeps its largest |w|.

    Per-layer counts are those of exact random init (floor(p_l * numel + 0.5) for the densities
    of `layer_densities`, ERK or uniform), so only *which* weights start active changes: the
    ones that matter most in a pretrained model, instead of a random subset. Ties (e.g. weights
    that are exactly 0) are broken by ascending flat index.
    """

    def make(name: str, leaf: Any, density: float) -> jax.Array:
        count = _layer_count(name, density, _shape(leaf))
        return _largest_magnitudes(jnp.asarray(leaf), count)

    return _map_layers(make, params, densities)


def top_unit_masks(scores: jax.Array, density: float) -> jax.Array:
    """bool[depth, num_units]: per row, the int(num_units * density) units of largest score.

    The count is `random_unit_masks`'s; ties by ascending unit index. For S²ViTE init from
    trained weights, with the scores the method prunes by.
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f'density must be in [0, 1], got {density!r}')
    scores = jnp.asarray(scores, jnp.float32)
    count = int(scores.shape[1] * density)
    return jax.vmap(lambda row: prune_grow.largest(row, count))(scores)


def random_unit_masks(key: jax.Array, depth: int, num_units: int, density: float) -> jax.Array:
    """bool[depth, num_units] with exactly int(num_units * density) True per row.

    Used for heads and MLP neurons (S²ViTE init): each block draws its own random subset, like
    the reference's per-layer `random.sample`. The count truncates as the reference's `int()`
    does, e.g. Small MLP at 0.7: int(1536 * 0.7) = 1075.
    """
    if depth <= 0 or num_units <= 0:
        raise ValueError(f'depth and num_units must be positive, got {depth}, {num_units}')
    if not 0.0 <= density <= 1.0:
        raise ValueError(f'density must be in [0, 1], got {density!r}')
    return _unit_masks(key, depth, num_units, int(num_units * density))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _unit_masks(key: jax.Array, depth: int, num_units: int, count: int) -> jax.Array:
    noise = jax.random.uniform(key, (depth, num_units))
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return ranks < count


def weight_density_stats(masks: Tree) -> dict[str, float]:
    """{layer name: fraction of True entries} over the non-None leaves (host-side floats)."""
    return {
        name: float(jnp.mean(jnp.asarray(mask, dtype=jnp.float32)))
        for name, mask in _flat_values(masks).items()
    }


def overall_weight_density(masks: Tree) -> float:
    """Active entries / entries over all non-None leaves: the paper's `--density` measure."""
    active = 0
    total = 0
    for mask in _flat_values(masks).values():
        active += int(jnp.sum(jnp.asarray(mask, dtype=jnp.int32)))
        total += int(np.prod(jnp.shape(mask)))
    if total == 0:
        raise ValueError('no masks given')
    return active / total
